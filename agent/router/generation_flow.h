// GenerationFlow: one request's way through the pool's workers, independent of the client
// side (HTTP, SSE):
//   disaggregated: reserve KV blocks on the chosen decode worker; prefill on the chosen
//     prefill worker with that reservation as the destination; the prefill reply carries the
//     first token; then the decode worker streams the rest. A failed prefill (connection
//     error, 5xx, timeout) releases the reservation, reserves again and retries on another
//     prefill worker (kMaxPrefillAttempts in all); a worker answering 503 (busy, draining,
//     switching role) to reserve or prefill is skipped for another, which is no attempt and
//     no mark against its health.
//   aggregated: generate on a `both` worker; retried on another one while no token has come.
// Start() does everything up to the first token, so failures there become an HTTP status
// before any byte of the response is sent; Stream() delivers the tokens.
// Thread-compatible: one request thread drives it; `abort` may be set from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/router/openai_api.h"
#include "agent/router/router_metrics.h"
#include "agent/router/worker_client.h"
#include "agent/router/worker_pool.h"
#include "common/status.h"

namespace pdpool::agent {

struct GenerationRequest {
  std::string request_id;
  std::vector<int32_t> prompt_token_ids;
  int max_tokens = 16;  // generated tokens in all, the first one included
  RequestSampling sampling;
  bool ignore_eos = false;
};

inline constexpr int kMaxPrefillAttempts = 3;

class GenerationFlow {
 public:
  // `pool` and `metrics` must outlive the flow; `abort` (may be null) cancels a running stream
  // at its next token.
  GenerationFlow(WorkerPool* pool, RouterMetrics* metrics, GenerationRequest request,
                 const std::atomic<bool>* abort = nullptr);
  ~GenerationFlow();  // releases a reservation that decode never claimed
  GenerationFlow(const GenerationFlow&) = delete;
  GenerationFlow& operator=(const GenerationFlow&) = delete;

  // Up to the first token. Errors: Unavailable (no usable worker, no KV room: 503),
  // InvalidArgument (a worker rejected the request: 400), anything else (502).
  Status Start();

  // Receives each token in order; returning false stops generation (the worker's sequence is
  // cancelled).
  using TokenSink = std::function<bool(int32_t token)>;
  struct Outcome {
    Status status;              // ok: finished; Cancelled: the sink stopped it
    std::string finish_reason;  // "length" | "stop" when ok
    int tokens = 0;             // tokens given to the sink
    // Aggregated mode can fail before its first token, after Start() succeeded.
    bool failed_before_first_token = false;
  };
  Outcome Stream(const TokenSink& on_token);

  bool disaggregated() const { return disaggregated_; }
  // Decode and prefill workers of the last attempt (tests, logs); may be null.
  const RouterWorker* decode_worker() const { return decode_.get(); }
  const RouterWorker* prefill_worker() const { return prefill_.get(); }
  int prefill_attempts() const { return prefill_attempts_; }

 private:
  Status StartDisaggregated();
  // Reserves on the best decode worker that has room, skipping those in `skip`.
  Status Reserve(std::vector<const RouterWorker*>* skip);
  void ReleaseReservation();
  Outcome StreamDisaggregated(const TokenSink& on_token);
  Outcome StreamAggregated(const TokenSink& on_token);
  bool aborted() const { return abort_ != nullptr && abort_->load(std::memory_order_relaxed); }

  WorkerPool* pool_;
  RouterMetrics* metrics_;
  GenerationRequest request_;
  const std::atomic<bool>* abort_;

  bool disaggregated_ = false;
  std::shared_ptr<RouterWorker> decode_;
  std::shared_ptr<RouterWorker> prefill_;
  ScopedLoad decode_load_;
  std::optional<KvReservation> reservation_;  // held until decode claims it
  int32_t first_token_ = 0;
  int prefill_attempts_ = 0;
};

}  // namespace pdpool::agent
