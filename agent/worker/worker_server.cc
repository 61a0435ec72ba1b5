// WorkerServer: see worker_server.h.
#include "agent/worker/worker_server.h"

#include <httplib.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "agent/engine/event_queue.h"
#include "agent/transport/tcp_kv_transport.h"
#include "agent/worker/worker_protocol.h"
#include "common/admin_server.h"
#include "common/http_server.h"
#include "common/json.h"
#include "common/log.h"

namespace pdpool::agent {

namespace {

using Clock = std::chrono::steady_clock;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void Reply(httplib::Response& res, int code, const Json& body) {
  res.status = code;
  res.set_content(Dump(body), "application/json");
}

void ReplyError(httplib::Response& res, int code, const std::string& message) {
  Reply(res, code, Json{{"error", message}});
}

int HttpCode(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kUnauthorized:
      return 401;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kConflict:
      return 409;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

bool TokenMatches(std::string_view got, std::string_view want) {
  if (want.empty() || got.size() != want.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < got.size(); ++i) diff |= got[i] ^ want[i];
  return diff == 0;
}

SamplingParams ParseSampling(const Json& body) {
  SamplingParams p;
  const Json* s = JsonChild(body, "sampling");
  if (s == nullptr || !s->is_object()) return p;
  p.temperature = JsonGet<double>(*s, "/temperature", 1.0);
  p.top_p = JsonGet<double>(*s, "/top_p", 1.0);
  p.seed = JsonGet<uint64_t>(*s, "/seed", 0);
  return p;
}

// Token ids from a JSON array, each in [0, vocab).
StatusOr<std::vector<int32_t>> ParseTokens(const Json& body, const char* field, int vocab,
                                           bool required) {
  const Json* a = JsonChild(body, field);
  if (a == nullptr) {
    if (required) return Status::InvalidArgument(std::string(field) + " is required");
    return std::vector<int32_t>{};
  }
  if (!a->is_array()) return Status::InvalidArgument(std::string(field) + " must be an array");
  std::vector<int32_t> out;
  out.reserve(a->size());
  for (const Json& t : *a) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab) {
      return Status::InvalidArgument(std::string(field) + " holds " + Dump(t) +
                                     ": token ids must be integers in [0, " +
                                     std::to_string(vocab) + ")");
    }
    out.push_back(t.get<int32_t>());
  }
  if (required && out.empty()) return Status::InvalidArgument(std::string(field) + " is empty");
  return out;
}

}  // namespace

struct WorkerServer::Impl : public KvSink {
  WorkerServerOptions options;
  const pdpool::Clock* clock;
  WorkerMetrics metrics;
  httplib::Server server;
  std::thread server_thread;
  int port = 0;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Engine> engine;  // null until the weights are loaded
  bool draining = false;
  int inflight = 0;

  std::unique_ptr<TcpKvSender> sender;
  std::atomic<int> sends_in_progress{0};
  std::unique_ptr<TcpKvReceiver> receiver;
  std::mutex transfers_mu;
  struct Transfer {
    Clock::time_point started;
    int32_t tokens = 0;
    int64_t bytes = 0;
  };
  std::unordered_map<uint64_t, Transfer> transfers;

  Impl(WorkerServerOptions o, const pdpool::Clock* c)
      : options(std::move(o)), clock(c), metrics(WorkerRoleName(options.role)) {}

  bool Prefills() const { return options.role != WorkerRole::kDecode; }
  bool Decodes() const { return options.role != WorkerRole::kPrefill; }

  std::shared_ptr<Engine> GetEngine() const {
    std::lock_guard lock(mu);
    return engine;
  }

  // RAII count of requests in flight, for Drain.
  struct InflightGuard {
    Impl* impl;
    explicit InflightGuard(Impl* i) : impl(i) {
      std::lock_guard lock(impl->mu);
      ++impl->inflight;
    }
    ~InflightGuard() {
      std::lock_guard lock(impl->mu);
      --impl->inflight;
      impl->cv.notify_all();
    }
  };

  bool Authorized(const httplib::Request& req, httplib::Response& res) {
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (header.size() > kBearer.size() && header.compare(0, kBearer.size(), kBearer) == 0 &&
        TokenMatches(std::string_view(header).substr(kBearer.size()), options.auth_token)) {
      return true;
    }
    res.set_header("WWW-Authenticate", "Bearer");
    ReplyError(res, 401, "missing or wrong pool token (Authorization: Bearer <token>)");
    return false;
  }

  // Common preamble: token, role, readiness, draining, JSON body. Null engine: replied already.
  std::shared_ptr<Engine> Admit(const httplib::Request& req, httplib::Response& res, bool allowed,
                                const char* what, Json* body, bool admit_new_work = true) {
    if (!Authorized(req, res)) return nullptr;
    if (!allowed) {
      ReplyError(res, 400,
                 std::string("a ") + WorkerRoleName(options.role) + " worker does not " + what);
      return nullptr;
    }
    std::shared_ptr<Engine> e;
    {
      std::lock_guard lock(mu);
      if (draining && admit_new_work) {
        res.set_header("Retry-After", "1");
        ReplyError(res, 503, "worker is draining (shutting down)");
        return nullptr;
      }
      e = engine;
    }
    if (!e) {
      res.set_header("Retry-After", "1");
      ReplyError(res, 503, "worker is not ready (loading weights)");
      return nullptr;
    }
    *body = Json::parse(req.body, nullptr, false);
    if (body->is_discarded() || !body->is_object()) {
      ReplyError(res, 400, "request body is not a JSON object");
      return nullptr;
    }
    return e;
  }

  // ---- KvSink (decode side of a transfer) ----

  Status Begin(uint64_t reservation, int32_t num_tokens, int32_t num_blocks) override {
    auto e = GetEngine();
    if (!e) return Status::Unavailable("worker is not ready");
    Status s = e->BeginImport(reservation, num_tokens, num_blocks,
                              std::chrono::duration_cast<Duration>(options.kv_io_timeout * 2));
    if (s.ok()) {
      std::lock_guard lock(transfers_mu);
      transfers[reservation] = Transfer{Clock::now(), num_tokens, 0};
    }
    return s;
  }
  Status WriteBlock(uint64_t reservation, int32_t index, int32_t tokens,
                    std::string_view payload) override {
    auto e = GetEngine();
    if (!e) return Status::Unavailable("worker is not ready");
    {
      std::lock_guard lock(transfers_mu);
      transfers[reservation].bytes += static_cast<int64_t>(payload.size());
    }
    return e->ImportBlock(reservation, index, tokens, payload);
  }
  Status Commit(uint64_t reservation) override {
    auto e = GetEngine();
    if (!e) return Status::Unavailable("worker is not ready");
    Status s = e->FinishImport(reservation);
    Transfer t;
    {
      std::lock_guard lock(transfers_mu);
      t = transfers[reservation];
      transfers.erase(reservation);
    }
    if (s.ok()) {
      const int64_t bytes = t.bytes > 0 ? t.bytes : e->backend().ModeledKvBytes(t.tokens);
      metrics.ObserveKvTransfer(
          "receive", bytes, std::chrono::duration<double>(Clock::now() - t.started).count(), true);
    }
    return s;
  }
  void Abort(uint64_t reservation, const Status& why) override {
    {
      std::lock_guard lock(transfers_mu);
      transfers.erase(reservation);
    }
    metrics.ObserveKvTransfer("receive", 0, 0, false);
    if (auto e = GetEngine()) e->AbortImport(reservation);
    LogWarn("KV receive failed", {{"reservation", reservation}, {"error", why.ToString()}});
  }

  // ---- handlers ----
  void HandleInfo(const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    auto e = GetEngine();
    Json info = {{"role", WorkerRoleName(options.role)},
                 {"model", options.served_model_name},
                 {"ready", e != nullptr},
                 {"draining", IsDraining()}};
    if (receiver)
      info["kv_address"] = options.advertise_host + ":" + std::to_string(receiver->port());
    {
      std::lock_guard lock(transfers_mu);
      info["kv_receives_in_progress"] = transfers.size();
    }
    info["kv_sends_in_progress"] = sends_in_progress.load();
    if (e) {
      const EngineStats s = e->Stats();
      info["backend"] = std::string(e->backend().name());
      info["block_size"] = e->config().block_size;
      info["max_model_len"] = e->config().max_model_len;
      info["vocab_size"] = e->backend().model().vocab_size;
      info["kv_blocks_total"] = s.kv_blocks_total;
      info["kv_blocks_free"] = s.kv_blocks_free;
      info["kv_usage_ratio"] = s.kv_usage_ratio;
      info["running"] = s.running;
      info["waiting"] = s.waiting;
      info["reservations"] = s.reservations;
      info["outstanding_prefill_tokens"] = s.outstanding_prefill_tokens;
    }
    Reply(res, 200, info);
  }

  bool IsDraining() const {
    std::lock_guard lock(mu);
    return draining;
  }

  void HandleReserve(const httplib::Request& req, httplib::Response& res) {
    Json body;
    auto e = Admit(req, res, Decodes(), "reserve KV (not a decode worker)", &body);
    if (!e) return;
    const int64_t tokens = JsonGet<int64_t>(body, "/prompt_tokens", 0);
    if (tokens < 1 || tokens > e->config().max_model_len) {
      ReplyError(res, 400, "prompt_tokens must be 1.." + std::to_string(e->config().max_model_len));
      return;
    }
    auto r = e->Reserve(static_cast<int32_t>(tokens),
                        std::chrono::duration_cast<Duration>(options.reservation_ttl));
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kUnavailable) res.set_header("Retry-After", "1");
      ReplyError(res, HttpCode(r.status()), r.status().message());
      return;
    }
    Reply(res, 200,
          Json{{"reservation_id", r->id},
               {"blocks", r->blocks},
               {"block_size", e->config().block_size},
               {"kv_address", options.advertise_host + ":" + std::to_string(receiver->port())},
               {"expires_ms", options.reservation_ttl.count()}});
  }

  void HandleRelease(const httplib::Request& req, httplib::Response& res) {
    Json body;
    auto e = Admit(req, res, Decodes(), "hold reservations", &body, /*admit_new_work=*/false);
    if (!e) return;
    const bool released = e->ReleaseReservation(JsonGet<uint64_t>(body, "/reservation_id", 0));
    Reply(res, 200, Json{{"released", released}});
  }

  void HandlePrefill(const httplib::Request& req, httplib::Response& res) {
    InflightGuard guard(this);
    Json body;
    auto e = Admit(req, res, Prefills(), "prefill (not a prefill worker)", &body);
    if (!e) return;
    auto prompt = ParseTokens(body, "prompt_token_ids", e->backend().model().vocab_size, true);
    if (!prompt.ok()) {
      metrics.CountRequest("prefill", "rejected");
      ReplyError(res, 400, prompt.status().message());
      return;
    }
    const Json* dest = JsonChild(body, "destination");
    if (dest == nullptr || !dest->is_object()) {
      ReplyError(res, 400, "destination is required: the decode worker's reservation");
      return;
    }
    KvDestination destination;
    destination.transport = JsonGet<std::string>(*dest, "/transport", "tcp");
    destination.address = JsonGet<std::string>(*dest, "/kv_address", "");
    destination.reservation_id = JsonGet<uint64_t>(*dest, "/reservation_id", 0);
    if (destination.transport != "tcp") {
      ReplyError(res, 400,
                 "KV transport \"" + destination.transport +
                     "\" is not available in this build (tcp is; cuda-ipc and nccl "
                     "come with the cuda backend)");
      return;
    }
    if (destination.address.empty()) {
      ReplyError(res, 400, "destination.kv_address is required");
      return;
    }
    const int32_t num_tokens = static_cast<int32_t>(prompt->size());

    // 1. Compute the prompt's KV and the first token.
    const uint64_t id = e->NextSequenceId();
    auto queue = std::make_shared<EventQueue>();
    SequenceRequest sr;
    sr.id = id;
    sr.prompt = std::move(*prompt);
    sr.max_new_tokens = 1;
    sr.sampling = ParseSampling(body);
    sr.prefill_only = true;
    Status s = e->Submit(std::move(sr), [queue](const SequenceEvent& ev) { queue->Push(ev); });
    if (!s.ok()) {
      metrics.CountRequest("prefill", "rejected");
      if (s.code() == StatusCode::kUnavailable) res.set_header("Retry-After", "1");
      ReplyError(res, HttpCode(s), s.message());
      return;
    }
    int32_t first_token = -1;
    const auto deadline = Clock::now() + options.request_timeout;
    for (;;) {
      SequenceEvent ev;
      if (!queue->Pop(&ev, std::chrono::milliseconds(200))) {
        if (Clock::now() > deadline) {
          e->Abort(id);
          metrics.CountRequest("prefill", "error");
          ReplyError(res, 504, "prefill timed out");
          return;
        }
        continue;
      }
      if (ev.token >= 0) first_token = ev.token;
      if (ev.finish == FinishReason::kNone) continue;
      if (ev.finish == FinishReason::kError || ev.finish == FinishReason::kAborted) {
        metrics.CountRequest("prefill", "error");
        ReplyError(res, 500, "prefill failed: " + (ev.error.empty() ? "aborted" : ev.error));
        return;
      }
      break;
    }
    // 2. Push the KV into the decode worker's reservation.
    std::vector<int32_t> blocks = e->TakeRetainedBlocks(id);
    const auto started = Clock::now();
    ++sends_in_progress;
    auto sent = sender->Send(destination, num_tokens, e->config().block_size,
                             [&](int32_t index, int32_t tokens, std::string* out) -> Status {
                               if (index >= static_cast<int32_t>(blocks.size())) {
                                 return Status::Internal("block index out of range");
                               }
                               return e->ExportBlock(blocks[index], tokens, out);
                             });
    e->ReleaseBlocks(blocks);
    --sends_in_progress;
    if (!sent.ok()) {
      metrics.ObserveKvTransfer("send", 0, 0, false);
      metrics.CountRequest("prefill", "error");
      LogWarn("KV push failed", {{"to", destination.address},
                                 {"reservation", destination.reservation_id},
                                 {"error", sent.status().ToString()}});
      ReplyError(res, 502,
                 "KV push to " + destination.address + " failed: " + sent.status().message());
      return;
    }
    // A sim backend moves no real bytes; the transfer takes as long as the modeled link says.
    int64_t bytes = sent->bytes;
    if (bytes == 0) {
      bytes = e->backend().ModeledKvBytes(num_tokens);
      std::this_thread::sleep_until(started + e->backend().ModeledKvTransferTime(bytes));
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    metrics.ObserveKvTransfer("send", bytes, seconds, true);
    metrics.CountRequest("prefill", "ok");
    Reply(res, 200,
          Json{{"first_token", first_token},
               {"prompt_tokens", num_tokens},
               {"kv_bytes", bytes},
               {"kv_transfer_seconds", seconds}});
  }

  // Streams a sequence's events as NDJSON until it finishes; closing the connection aborts it.
  void Stream(httplib::Response& res, std::shared_ptr<Engine> e, uint64_t id,
              std::shared_ptr<EventQueue> queue, const char* kind) {
    struct State {
      bool finished = false;
      Clock::time_point deadline;
    };
    auto state = std::make_shared<State>();
    state->deadline = Clock::now() + options.request_timeout;
    {
      std::lock_guard lock(mu);
      ++inflight;
    }
    std::string kind_name = kind;
    res.set_chunked_content_provider(
        "application/x-ndjson",
        [this, e, id, queue, state, kind_name](size_t, httplib::DataSink& sink) -> bool {
          SequenceEvent ev;
          if (!queue->Pop(&ev, std::chrono::milliseconds(500))) {
            if (!sink.is_writable()) return false;
            if (Clock::now() > state->deadline) {
              e->Abort(id);
              const std::string line = "{\"error\":\"request timed out\"}\n";
              sink.write(line.data(), line.size());
              state->finished = true;
              metrics.CountRequest(kind_name, "error");
              sink.done();
            }
            return true;
          }
          std::string out;
          bool done = false;
          // Everything already queued goes out in one write.
          do {
            if (ev.token >= 0) out += "{\"token\":" + std::to_string(ev.token) + "}\n";
            if (ev.finish != FinishReason::kNone) {
              if (ev.finish == FinishReason::kError || ev.finish == FinishReason::kAborted) {
                out += Dump(Json{{"error", ev.error.empty() ? "aborted" : ev.error}}) + "\n";
                metrics.CountRequest(kind_name, "error");
              } else {
                out += Dump(Json{{"finish_reason", FinishReasonName(ev.finish)}}) + "\n";
                metrics.CountRequest(kind_name, "ok");
              }
              done = true;
              break;
            }
          } while (queue->Pop(&ev, std::chrono::milliseconds(0)));
          if (!sink.write(out.data(), out.size())) return false;
          if (done) {
            state->finished = true;
            sink.done();
          }
          return true;
        },
        [this, e, id, state, kind_name](bool) {
          if (!state->finished) {
            e->Abort(id);  // client went away: free the sequence's blocks
            metrics.CountRequest(kind_name, "aborted");
          }
          std::lock_guard lock(mu);
          --inflight;
          cv.notify_all();
        });
  }

  void HandleDecode(const httplib::Request& req, httplib::Response& res) {
    Json body;
    // Decode claims a reservation made before a drain began: not new work.
    auto e = Admit(req, res, Decodes(), "decode (not a decode worker)", &body, false);
    if (!e) return;
    auto prompt = ParseTokens(body, "prompt_token_ids", e->backend().model().vocab_size, false);
    if (!prompt.ok()) {
      ReplyError(res, 400, prompt.status().message());
      return;
    }
    SequenceRequest sr;
    sr.id = e->NextSequenceId();
    sr.prompt = std::move(*prompt);
    sr.reservation_id = JsonGet<uint64_t>(body, "/reservation_id", 0);
    sr.first_token = JsonGet<int32_t>(body, "/first_token", -1);
    sr.max_new_tokens = JsonGet<int32_t>(body, "/max_tokens", 16);
    sr.sampling = ParseSampling(body);
    sr.ignore_eos = JsonGet<bool>(body, "/ignore_eos", false);
    if (sr.first_token < 0 || sr.first_token >= e->backend().model().vocab_size) {
      ReplyError(res, 400, "first_token must be a token id in [0, vocab)");
      return;
    }
    const uint64_t id = sr.id;
    auto queue = std::make_shared<EventQueue>();
    Status s = e->Submit(std::move(sr), [queue](const SequenceEvent& ev) { queue->Push(ev); });
    if (!s.ok()) {
      metrics.CountRequest("decode", "rejected");
      ReplyError(res, HttpCode(s), s.message());
      return;
    }
    Stream(res, e, id, queue, "decode");
  }

  void HandleGenerate(const httplib::Request& req, httplib::Response& res) {
    Json body;
    auto e = Admit(req, res, options.role == WorkerRole::kBoth,
                   "serve whole requests (not a `both` worker)", &body);
    if (!e) return;
    auto prompt = ParseTokens(body, "prompt_token_ids", e->backend().model().vocab_size, true);
    if (!prompt.ok()) {
      metrics.CountRequest("generate", "rejected");
      ReplyError(res, 400, prompt.status().message());
      return;
    }
    SequenceRequest sr;
    sr.id = e->NextSequenceId();
    sr.prompt = std::move(*prompt);
    sr.max_new_tokens = JsonGet<int32_t>(body, "/max_tokens", 16);
    sr.sampling = ParseSampling(body);
    sr.ignore_eos = JsonGet<bool>(body, "/ignore_eos", false);
    const uint64_t id = sr.id;
    auto queue = std::make_shared<EventQueue>();
    Status s = e->Submit(std::move(sr), [queue](const SequenceEvent& ev) { queue->Push(ev); });
    if (!s.ok()) {
      metrics.CountRequest("generate", "rejected");
      if (s.code() == StatusCode::kUnavailable) res.set_header("Retry-After", "1");
      ReplyError(res, HttpCode(s), s.message());
      return;
    }
    Stream(res, e, id, queue, "generate");
  }
};

WorkerServer::WorkerServer(WorkerServerOptions options, const pdpool::Clock* clock)
    : impl_(std::make_unique<Impl>(std::move(options), clock)) {}

WorkerServer::~WorkerServer() { Stop(); }

Status WorkerServer::Start() {
  Impl& m = *impl_;
  if (m.options.auth_token.empty()) {
    return Status::InvalidArgument("the pool token is empty (--auth-token-file)");
  }
  TcpKvOptions kv;
  kv.token = m.options.auth_token;
  kv.io_timeout = m.options.kv_io_timeout;
  kv.fault_delay_per_block = m.options.fault_kv_block_delay;
  if (m.Prefills()) m.sender = std::make_unique<TcpKvSender>(kv);
  if (m.Decodes()) {
    m.receiver = std::make_unique<TcpKvReceiver>(kv, &m);
    Status s = m.receiver->Start(m.options.kv_host.empty() ? m.options.host : m.options.kv_host,
                                 m.options.kv_port);
    if (!s.ok()) return s;
  }

  httplib::Server& srv = m.server;
  const int threads = m.options.http_threads;
  srv.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  srv.set_keep_alive_max_count(1'000'000);
  srv.set_payload_max_length(64u << 20);
  srv.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  srv.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    if (ready()) {
      res.set_content("ok\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content(impl_->IsDraining() ? "draining\n" : "loading\n", "text/plain");
    }
  });
  srv.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (auto e = impl_->GetEngine()) impl_->metrics.SetEngineStats(e->Stats(), ready());
    res.set_content(SerializeMetrics(*impl_->metrics.registry()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  srv.Get(protocol::kInfoPath,
          [this](const httplib::Request& q, httplib::Response& r) { impl_->HandleInfo(q, r); });
  srv.Post(protocol::kReservePath,
           [this](const httplib::Request& q, httplib::Response& r) { impl_->HandleReserve(q, r); });
  srv.Post(protocol::kReleasePath,
           [this](const httplib::Request& q, httplib::Response& r) { impl_->HandleRelease(q, r); });
  srv.Post(protocol::kPrefillPath,
           [this](const httplib::Request& q, httplib::Response& r) { impl_->HandlePrefill(q, r); });
  srv.Post(protocol::kDecodePath,
           [this](const httplib::Request& q, httplib::Response& r) { impl_->HandleDecode(q, r); });
  srv.Post(protocol::kGeneratePath, [this](const httplib::Request& q, httplib::Response& r) {
    impl_->HandleGenerate(q, r);
  });

  auto bound = BindHttpServer(srv, m.options.host, m.options.port, "worker");
  if (!bound.ok()) return bound.status();
  m.port = *bound;
  m.server_thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return Status::Ok();
}

void WorkerServer::SetEngine(std::unique_ptr<Engine> engine) {
  Impl& m = *impl_;
  engine->SetStepObserver([&m](const StepReport& r) { m.metrics.ObserveStep(r); });
  engine->Start();
  std::lock_guard lock(m.mu);
  m.engine = std::move(engine);
}

bool WorkerServer::Drain(std::chrono::milliseconds grace) {
  Impl& m = *impl_;
  std::unique_lock lock(m.mu);
  m.draining = true;
  const auto deadline = Clock::now() + grace;
  auto idle = [&] {
    if (m.inflight > 0) return false;
    if (!m.engine) return true;
    const EngineStats s = m.engine->Stats();
    return s.running == 0 && s.waiting == 0 && s.reservations == 0;
  };
  // In-flight handlers notify; engine progress is polled.
  while (!idle() && Clock::now() < deadline) {
    m.cv.wait_for(lock, std::chrono::milliseconds(20));
  }
  const bool drained = idle();
  LogInfo("worker drained", {{"complete", drained ? "true" : "false"}, {"inflight", m.inflight}});
  return drained;
}

void WorkerServer::Stop() {
  Impl& m = *impl_;
  if (m.server.is_running()) m.server.stop();
  if (m.server_thread.joinable()) m.server_thread.join();
  if (m.receiver) m.receiver->Stop();
  std::shared_ptr<Engine> e;
  {
    std::lock_guard lock(m.mu);
    e = m.engine;
  }
  if (e) e->Stop();
}

int WorkerServer::port() const { return impl_->port; }
int WorkerServer::kv_port() const { return impl_->receiver ? impl_->receiver->port() : 0; }
bool WorkerServer::ready() const {
  std::lock_guard lock(impl_->mu);
  return impl_->engine != nullptr && !impl_->draining;
}

}  // namespace pdpool::agent
