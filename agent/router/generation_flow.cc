// GenerationFlow: reserve → prefill → decode, or generate (see generation_flow.h).
#include "agent/router/generation_flow.h"

#include <utility>

#include "common/log.h"

namespace pdpool::agent {

GenerationFlow::GenerationFlow(WorkerPool* pool, RouterMetrics* metrics, GenerationRequest request,
                               const std::atomic<bool>* abort)
    : pool_(pool), metrics_(metrics), request_(std::move(request)), abort_(abort) {}

GenerationFlow::~GenerationFlow() { ReleaseReservation(); }

void GenerationFlow::ReleaseReservation() {
  if (!reservation_ || !decode_) return;
  Status s = decode_->client().Release(reservation_->reservation_id);
  if (!s.ok()) {
    // The worker frees unclaimed reservations when they expire; this only frees them sooner.
    LogWarn("release failed", {{"worker", decode_->address()},
                               {"request_id", request_.request_id},
                               {"reservation_id", reservation_->reservation_id},
                               {"error", s.ToString()}});
  }
  reservation_.reset();
  decode_load_.Reset();
}

Status GenerationFlow::Start() {
  switch (pool_->CurrentMode()) {
    case WorkerPool::Mode::kDisaggregated:
      disaggregated_ = true;
      return StartDisaggregated();
    case WorkerPool::Mode::kAggregated:
      disaggregated_ = false;
      return Status::Ok();  // the generate call streams its first token
    case WorkerPool::Mode::kNone:
      break;
  }
  return Status::Unavailable("no worker available");
}

Status GenerationFlow::Reserve(std::vector<const RouterWorker*>* skip) {
  const int prompt_tokens = static_cast<int>(request_.prompt_token_ids.size());
  Status last = Status::Unavailable("no decode worker available");
  for (;;) {
    auto decode = pool_->Pick(WorkerRole::kDecode, *skip);
    if (!decode) return last;
    skip->push_back(decode.get());
    ScopedLoad load(decode, &decode->reserved_tokens(), prompt_tokens + request_.max_tokens);
    auto r = decode->client().Reserve(request_.request_id, prompt_tokens, request_.max_tokens);
    if (r.ok()) {
      pool_->ReportSuccess(decode.get());
      decode_ = std::move(decode);
      decode_load_ = std::move(load);
      reservation_ = std::move(*r);
      return Status::Ok();
    }
    if (r.status().code() == StatusCode::kInvalidArgument) return r.status();
    if (IsWorkerBusy(r.status())) {
      last =
          Status::Unavailable("no decode worker has room for the request: " + r.status().message());
    } else {
      pool_->ReportFailure(decode.get(), r.status());
      metrics_->CountWorkerError(WorkerRole::kDecode, "reserve");
      LogWarn("reserve failed", {{"worker", decode->address()},
                                 {"request_id", request_.request_id},
                                 {"error", r.status().ToString()}});
      last = Status::Unavailable("reserve failed: " + r.status().message());
    }
  }
}

Status GenerationFlow::StartDisaggregated() {
  const int prompt_tokens = static_cast<int>(request_.prompt_token_ids.size());
  std::vector<const RouterWorker*> skip_decode;
  std::vector<const RouterWorker*> tried_prefill;
  Status last_prefill_error;
  Status last_busy;
  for (prefill_attempts_ = 0; prefill_attempts_ < kMaxPrefillAttempts;) {
    auto prefill = pool_->Pick(WorkerRole::kPrefill, tried_prefill);
    if (!prefill) break;
    if (Status s = Reserve(&skip_decode); !s.ok()) return s;
    // A decode worker that took a reservation may take the retry's reservation too.
    std::erase(skip_decode, decode_.get());

    ++prefill_attempts_;
    if (prefill_attempts_ > 1) metrics_->CountPrefillRetry();
    prefill_ = prefill;
    ScopedLoad load(prefill, &prefill->prefill_tokens(), prompt_tokens);
    auto r = prefill->client().Prefill(request_.request_id, request_.prompt_token_ids,
                                       request_.sampling, *reservation_);
    load.Reset();
    if (r.ok()) {
      pool_->ReportSuccess(prefill.get());
      first_token_ = r->first_token;
      return Status::Ok();
    }
    ReleaseReservation();
    if (r.status().code() == StatusCode::kInvalidArgument) return r.status();
    tried_prefill.push_back(prefill.get());
    if (IsWorkerBusy(r.status())) {
      // Up but not taking prefill work now (queue full, draining, switching role): another
      // worker, without counting it against the worker's health or the attempts.
      --prefill_attempts_;
      last_busy = r.status();
      continue;
    }
    pool_->ReportFailure(prefill.get(), r.status());
    metrics_->CountWorkerError(WorkerRole::kPrefill, "prefill");
    LogWarn("prefill failed", {{"worker", prefill->address()},
                               {"request_id", request_.request_id},
                               {"attempt", prefill_attempts_},
                               {"error", r.status().ToString()}});
    last_prefill_error = r.status();
  }
  if (last_prefill_error.ok()) {
    return Status::Unavailable(last_busy.ok() ? "no prefill worker available"
                                              : "no prefill worker has room for the request: " +
                                                    last_busy.message());
  }
  return Status::Internal("prefill failed after " + std::to_string(prefill_attempts_) +
                          " attempt(s): " + last_prefill_error.message());
}

GenerationFlow::Outcome GenerationFlow::Stream(const TokenSink& on_token) {
  return disaggregated_ ? StreamDisaggregated(on_token) : StreamAggregated(on_token);
}

GenerationFlow::Outcome GenerationFlow::StreamDisaggregated(const TokenSink& on_token) {
  Outcome out;
  if (!reservation_) {
    out.status = Status::Internal("Stream() without a successful Start()");
    return out;
  }
  out.tokens = 1;
  if (!on_token(first_token_) || aborted()) {
    ReleaseReservation();
    out.status = Status::Cancelled("stopped after the first token");
    return out;
  }
  if (request_.max_tokens <= 1) {
    ReleaseReservation();
    out.finish_reason = "length";
    return out;
  }
  const int64_t reservation_id = reservation_->reservation_id;
  reservation_.reset();  // from here the decode worker owns it (closing the stream frees it)
  bool overrun = false;
  auto result = decode_->client().Decode(
      reservation_id, first_token_, request_.prompt_token_ids, request_.max_tokens,
      request_.sampling, request_.ignore_eos, [&](int32_t token) {
        if (aborted()) return false;
        if (out.tokens >= request_.max_tokens) {  // the worker should have stopped: stop it
          overrun = true;
          return false;
        }
        ++out.tokens;
        return on_token(token);
      });
  decode_load_.Reset();
  if (result.status.ok() || overrun) {
    pool_->ReportSuccess(decode_.get());
    out.finish_reason = overrun ? "length" : result.finish_reason;
    return out;
  }
  if (!result.cancelled) {
    pool_->ReportFailure(decode_.get(), result.status);
    metrics_->CountWorkerError(WorkerRole::kDecode, "decode");
    LogWarn("decode failed", {{"worker", decode_->address()},
                              {"request_id", request_.request_id},
                              {"tokens", out.tokens},
                              {"error", result.status.ToString()}});
  }
  out.status = result.status;
  return out;
}

GenerationFlow::Outcome GenerationFlow::StreamAggregated(const TokenSink& on_token) {
  Outcome out;
  const int64_t load_tokens =
      static_cast<int64_t>(request_.prompt_token_ids.size()) + request_.max_tokens;
  std::vector<const RouterWorker*> tried;
  Status last = Status::Unavailable("no worker available");
  for (int attempt = 0; attempt < kMaxPrefillAttempts; ++attempt) {
    auto worker = pool_->Pick(WorkerRole::kBoth, tried);
    if (!worker) break;
    tried.push_back(worker.get());
    if (attempt > 0) metrics_->CountPrefillRetry();
    ScopedLoad load(worker, &worker->reserved_tokens(), load_tokens);
    bool overrun = false;
    auto result = worker->client().Generate(request_.request_id, request_.prompt_token_ids,
                                            request_.max_tokens, request_.sampling,
                                            request_.ignore_eos, [&](int32_t token) {
                                              if (aborted()) return false;
                                              if (out.tokens >= request_.max_tokens) {
                                                overrun = true;
                                                return false;
                                              }
                                              ++out.tokens;
                                              return on_token(token);
                                            });
    if (result.status.ok() || overrun) {
      pool_->ReportSuccess(worker.get());
      out.finish_reason = overrun ? "length" : result.finish_reason;
      return out;
    }
    if (result.cancelled) {
      out.status = result.status;
      return out;
    }
    if (result.status.code() != StatusCode::kInvalidArgument && !IsWorkerBusy(result.status)) {
      pool_->ReportFailure(worker.get(), result.status);
      metrics_->CountWorkerError(WorkerRole::kBoth, "generate");
    }
    LogWarn("generate failed", {{"worker", worker->address()},
                                {"request_id", request_.request_id},
                                {"tokens", out.tokens},
                                {"error", result.status.ToString()}});
    last = result.status;
    // Tokens already sent cannot be taken back; a rejected request fails everywhere.
    if (out.tokens > 0 || result.status.code() == StatusCode::kInvalidArgument) break;
  }
  out.failed_before_first_token = out.tokens == 0;
  out.status = last;
  return out;
}

}  // namespace pdpool::agent
