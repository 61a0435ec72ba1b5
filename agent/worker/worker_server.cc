// WorkerServer: see worker_server.h.
#include "agent/worker/worker_server.h"

#include <httplib.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "agent/engine/event_queue.h"
#include "agent/transport/cuda_ipc_kv_transport.h"
#include "agent/transport/kv_transport_select.h"
#include "agent/transport/nccl_kv_transport.h"
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

// What a call asks of the worker, for admission.
enum class Work {
  kPrefill,   // new prefill work
  kReserve,   // new decode work: a KV reservation
  kClaim,     // the decode of a reservation made earlier
  kRelease,   // frees a reservation
  kGenerate,  // a whole request (role both)
};

bool IsNewWork(Work w) {
  return w == Work::kPrefill || w == Work::kReserve || w == Work::kGenerate;
}

bool RoleDoes(WorkerRole role, Work w) {
  switch (w) {
    case Work::kPrefill:
      return role != WorkerRole::kDecode;
    case Work::kReserve:
    case Work::kClaim:
    case Work::kRelease:
      return role != WorkerRole::kPrefill;
    case Work::kGenerate:
      return role == WorkerRole::kBoth;
  }
  return false;
}

// "a decode worker does not <this>"
const char* RefusalOf(Work w) {
  switch (w) {
    case Work::kPrefill:
      return "prefill (not a prefill worker)";
    case Work::kReserve:
      return "reserve KV (not a decode worker)";
    case Work::kClaim:
      return "decode (not a decode worker)";
    case Work::kRelease:
      return "hold reservations";
    case Work::kGenerate:
      return "serve whole requests (not a `both` worker)";
  }
  return "do that";
}

// The work a prefill or decode worker does, as the 503 of a switch names it.
const char* WorkName(WorkerRole role) {
  return role == WorkerRole::kPrefill ? "prefill" : "decode";
}

}  // namespace

struct WorkerServer::Impl : public KvSink {
  WorkerServerOptions options;
  const pdpool::Clock* clock;
  WorkerMetrics metrics;
  GpuMonitor gpu_monitor;  // NVML, loaded at the first scrape
  httplib::Server server;
  std::thread server_thread;
  int port = 0;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Engine> engine;  // null until the weights are loaded
  std::string weights_loaded_at;   // RFC 3339, set with the engine
  bool draining = false;
  int inflight = 0;
  // Role switch: the target while the old role drains; how many switches are done; a call
  // that joins a switch in progress waits for switch_generation to move and reads last_switch.
  std::optional<WorkerRole> switching_to;
  int role_switches = 0;
  uint64_t switch_generation = 0;
  RoleSwitchResult last_switch;

  // Written under mu (by SwitchRole only); read without it by handlers, which re-check under
  // mu in Admit.
  std::atomic<WorkerRole> role;

  std::unique_ptr<TcpKvSender> sender;
  std::atomic<int> sends_in_progress{0};
  // GPU transports (when options.cuda_ipc / options.nccl are set). Their receivers serve
  // connections of the tcp receiver's port, so they are declared before it (destroyed after).
  std::unique_ptr<CudaIpcKvSender> ipc_sender;
  std::unique_ptr<CudaIpcKvReceiver> ipc_receiver;
  std::unique_ptr<NcclKvSender> nccl_sender;
  std::unique_ptr<NcclKvReceiver> nccl_receiver;
  std::unique_ptr<TcpKvReceiver> receiver;
  // This worker's KV cache as transports see it; set with the engine (under mu).
  KvEndpoint kv_endpoint;
  std::mutex transfers_mu;
  struct Transfer {
    Clock::time_point started;
    int32_t tokens = 0;
    int64_t bytes = 0;
  };
  std::unordered_map<uint64_t, Transfer> transfers;

  Impl(WorkerServerOptions o, const pdpool::Clock* c)
      : options(std::move(o)),
        clock(c),
        metrics(WorkerRoleName(options.role)),
        role(options.role) {}

  std::shared_ptr<Engine> GetEngine() const {
    std::lock_guard lock(mu);
    return engine;
  }

  KvEndpoint GetKvEndpoint() const {
    std::lock_guard lock(mu);
    return kv_endpoint;
  }

  // What the GPU transports need to know of this worker's KV cache; exports the cuda-ipc
  // handle once.
  KvEndpoint DescribeKv(const Engine& e) const {
    KvEndpoint ep;
    ep.node = options.node_name;
    ep.nvlink_domain = options.nvlink_domain;
    const DeviceKvRegion* region = e.backend().device_kv();
    if (region == nullptr) return ep;
    ep.device_uuid = region->device_uuid;
    ep.block_bytes = region->block_bytes;
    ep.num_blocks = region->num_blocks;
    ep.nccl = options.nccl != nullptr && options.nccl->Available();
    if (options.cuda_ipc) {
      auto handle = options.cuda_ipc->Export(*region);
      if (handle.ok()) {
        ep.cuda_ipc = true;
        ep.ipc_handle = *handle;
      } else {
        LogWarn("cuda-ipc unavailable: cannot export the KV cache",
                {{"error", handle.status().ToString()}});
      }
    }
    return ep;
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
  // Work of the wrong role is a 400 (a misconfigured caller), except on a worker that switches
  // or switched role: there it is a 503, so a router that has not polled the new role yet
  // tries another worker.
  std::shared_ptr<Engine> Admit(const httplib::Request& req, httplib::Response& res, Work work,
                                Json* body) {
    if (!Authorized(req, res)) return nullptr;
    std::shared_ptr<Engine> e;
    WorkerRole now;
    std::optional<WorkerRole> to;
    bool switched, shutting_down;
    {
      std::lock_guard lock(mu);
      e = engine;
      now = role.load();
      to = switching_to;
      switched = role_switches > 0;
      shutting_down = draining;
    }
    bool allowed = RoleDoes(now, work);
    // Reservations taken before a switch stay claimable (and releasable) after it.
    if (!allowed && (work == Work::kClaim || work == Work::kRelease) && e &&
        e->Stats().reservations > 0) {
      allowed = true;
    }
    // Release is idempotent: a router's late release after a switch just frees nothing.
    if (!allowed && work == Work::kRelease && (switched || to)) allowed = true;
    if (!allowed) {
      if (now != WorkerRole::kBoth && (switched || to)) {
        res.set_header("Retry-After", "1");
        ReplyError(res, 503,
                   std::string("this worker ") +
                       (to ? std::string("is switching role from ") + WorkerRoleName(now) + " to " +
                                 WorkerRoleName(*to)
                           : std::string("switched role to ") + WorkerRoleName(now)) +
                       ": it does not " + RefusalOf(work) + "; send it to another worker");
      } else {
        ReplyError(res, 400,
                   std::string("a ") + WorkerRoleName(now) + " worker does not " + RefusalOf(work));
      }
      return nullptr;
    }
    if (IsNewWork(work) && to) {
      res.set_header("Retry-After", "1");
      ReplyError(res, 503,
                 std::string("worker is switching role from ") + WorkerRoleName(now) + " to " +
                     WorkerRoleName(*to) + ": it takes no new " + WorkName(now) +
                     " work; send it to another worker");
      return nullptr;
    }
    if (shutting_down && IsNewWork(work)) {
      res.set_header("Retry-After", "1");
      ReplyError(res, 503, "worker is draining (shutting down)");
      return nullptr;
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
  const DeviceKvRegion* DeviceRegion() override {
    auto e = GetEngine();
    return e ? e->backend().device_kv() : nullptr;
  }
  StatusOr<std::vector<int32_t>> ReservedBlocks(uint64_t reservation) override {
    auto e = GetEngine();
    if (!e) return Status::Unavailable("worker is not ready");
    return e->ReservationBlocks(reservation);
  }
  void CountBytes(uint64_t reservation, int64_t bytes) override {
    std::lock_guard lock(transfers_mu);
    transfers[reservation].bytes += bytes;
  }

  // ---- handlers ----
  void HandleInfo(const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    auto e = GetEngine();
    Json info = {{"model", options.served_model_name}, {"ready", e != nullptr}};
    {
      std::lock_guard lock(mu);
      info[protocol::kRoleField] = WorkerRoleName(role.load());
      info["draining"] = draining;
      info[protocol::kRoleSwitchingToField] =
          switching_to ? Json(WorkerRoleName(*switching_to)) : Json(nullptr);
      info[protocol::kRoleSwitchesField] = role_switches;
      if (!weights_loaded_at.empty()) info[protocol::kWeightsLoadedAtField] = weights_loaded_at;
    }
    info[protocol::kPidField] = static_cast<int64_t>(::getpid());
    if (receiver)
      info["kv_address"] = options.advertise_host + ":" + std::to_string(receiver->port());
    {
      std::lock_guard lock(transfers_mu);
      info["kv_receives_in_progress"] = transfers.size();
    }
    info["kv_sends_in_progress"] = sends_in_progress.load();
    info["kv_transport"] = options.kv_transport;
    info["kv_transports"] = KvTransportsJson(GetKvEndpoint());
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
    // Counted, so a role switch that begins between admission and the reservation waits for
    // the reservation too.
    InflightGuard guard(this);
    Json body;
    auto e = Admit(req, res, Work::kReserve, &body);
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
               {"transports", KvTransportsJson(GetKvEndpoint())},
               {"expires_ms", options.reservation_ttl.count()}});
  }

  void HandleRelease(const httplib::Request& req, httplib::Response& res) {
    Json body;
    auto e = Admit(req, res, Work::kRelease, &body);
    if (!e) return;
    const bool released = e->ReleaseReservation(JsonGet<uint64_t>(body, "/reservation_id", 0));
    Reply(res, 200, Json{{"released", released}});
  }

  void HandlePrefill(const httplib::Request& req, httplib::Response& res) {
    InflightGuard guard(this);
    Json body;
    auto e = Admit(req, res, Work::kPrefill, &body);
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
    destination.address = JsonGet<std::string>(*dest, "/kv_address", "");
    destination.reservation_id = JsonGet<uint64_t>(*dest, "/reservation_id", 0);
    if (const Json* ids = JsonChild(*dest, "blocks"); ids != nullptr && ids->is_array()) {
      for (const Json& b : *ids) {
        if (b.is_number_integer()) destination.blocks.push_back(b.get<int32_t>());
      }
    }
    destination.peer = ParseKvTransports(JsonChild(*dest, "transports"));
    if (destination.address.empty()) {
      ReplyError(res, 400, "destination.kv_address is required");
      return;
    }
    // The pool's transport (or the caller's), as this pair can do it; decided before any
    // compute so a pair that cannot do it costs nothing.
    const std::string setting = JsonGet<std::string>(*dest, "/transport", options.kv_transport);
    auto chosen = SelectKvTransport(setting, GetKvEndpoint(), destination.peer);
    if (!chosen.ok()) {
      metrics.CountRequest("prefill", "rejected");
      const bool bad_request = chosen.status().code() == StatusCode::kInvalidArgument;
      if (!bad_request) {
        LogWarn("KV transport unavailable for this pair",
                {{"to", destination.address}, {"error", chosen.status().message()}});
      }
      ReplyError(res, bad_request ? 400 : 500,
                 "destination.transport: " + chosen.status().message());
      return;
    }
    destination.transport = *chosen;
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
    StatusOr<KvTransferStats> sent = Status::Internal("no KV transport");
    if (destination.transport == kKvTransportTcp) {
      sent = sender->Send(destination, num_tokens, e->config().block_size,
                          [&](int32_t index, int32_t tokens, std::string* out) -> Status {
                            if (index >= static_cast<int32_t>(blocks.size())) {
                              return Status::Internal("block index out of range");
                            }
                            return e->ExportBlock(blocks[index], tokens, out);
                          });
    } else {
      // Device to device from this worker's KV region; selection checked both sides have one.
      KvDeviceSender* gpu = destination.transport == kKvTransportCudaIpc
                                ? static_cast<KvDeviceSender*>(ipc_sender.get())
                                : static_cast<KvDeviceSender*>(nccl_sender.get());
      const DeviceKvRegion* region = e->backend().device_kv();
      if (gpu != nullptr && region != nullptr) {
        sent = gpu->Send(destination, *region, blocks, num_tokens);
      }
    }
    e->ReleaseBlocks(blocks);
    --sends_in_progress;
    if (!sent.ok()) {
      metrics.ObserveKvTransfer("send", 0, 0, false);
      metrics.CountRequest("prefill", "error");
      LogWarn("KV push failed", {{"to", destination.address},
                                 {"transport", destination.transport},
                                 {"reservation", destination.reservation_id},
                                 {"error", sent.status().ToString()}});
      ReplyError(res, 502,
                 "KV push to " + destination.address + " (" + destination.transport +
                     ") failed: " + sent.status().message());
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
               {"kv_transport", destination.transport},
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
    auto e = Admit(req, res, Work::kClaim, &body);
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
    auto e = Admit(req, res, Work::kGenerate, &body);
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

  // ---- role switch and drain ----

  // Nothing in flight: no handler, no sequence, no reservation. mu held.
  bool IdleLocked() const {
    if (inflight > 0) return false;
    if (!engine) return true;
    const EngineStats s = engine->Stats();
    return s.running == 0 && s.waiting == 0 && s.reservations == 0;
  }

  StatusOr<RoleSwitchResult> SwitchRole(WorkerRole to, const std::string& trigger) {
    std::unique_lock lock(mu);
    const WorkerRole from = role.load();
    if (from == WorkerRole::kBoth) {
      return Status::InvalidArgument(
          "this worker serves role both (aggregated prefill and decode): it has no prefill or "
          "decode role to switch; restart it with --role prefill or decode");
    }
    if (to == WorkerRole::kBoth) {
      return Status::InvalidArgument(
          "role must be \"prefill\" or \"decode\": a disaggregated worker cannot switch to "
          "both");
    }
    if (draining) return Status::Unavailable("worker is draining (shutting down)");
    if (switching_to) {
      if (*switching_to != to) {
        return Status::Conflict(std::string("a switch from ") + WorkerRoleName(from) + " to " +
                                WorkerRoleName(*switching_to) +
                                " is in progress; ask again when it is done");
      }
      // The same switch: wait for it and share its result.
      const uint64_t generation = switch_generation;
      cv.wait(lock, [&] { return switch_generation != generation; });
      return last_switch;
    }
    RoleSwitchResult result;
    result.previous = from;
    result.role = to;
    if (from == to) return result;

    const auto started = Clock::now();
    switching_to = to;
    result.changed = true;
    result.drained_requests = inflight + (engine ? engine->Stats().reservations : 0);
    LogInfo("role switch: draining",
            {{"from", WorkerRoleName(from)},
             {"to", WorkerRoleName(to)},
             {"trigger", trigger},
             {"in_flight", result.drained_requests},
             {"grace_seconds", options.role_switch_drain_timeout.count() / 1000.0}});
    const auto deadline = started + options.role_switch_drain_timeout;
    // In-flight handlers notify; engine progress is polled. A SIGTERM drain cuts it short:
    // the worker is going away, and its own drain waits for the same work.
    while (!IdleLocked() && Clock::now() < deadline && !draining) {
      cv.wait_for(lock, std::chrono::milliseconds(20));
    }
    result.drain_complete = IdleLocked();
    role.store(to);
    metrics.SetRole(WorkerRoleName(to));
    switching_to.reset();
    ++role_switches;
    result.switch_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    last_switch = result;
    ++switch_generation;
    cv.notify_all();
    LogInfo("role switched", {{"from", WorkerRoleName(from)},
                              {"to", WorkerRoleName(to)},
                              {"trigger", trigger},
                              {"drained_requests", result.drained_requests},
                              {"drain_complete", result.drain_complete ? "true" : "false"},
                              {"switch_seconds", result.switch_seconds}});
    if (!result.drain_complete) {
      const EngineStats st = engine ? engine->Stats() : EngineStats{};
      LogWarn("role switched before the old role's work finished; it goes on meanwhile",
              {{"inflight", inflight}, {"running", st.running}, {"reservations", st.reservations}});
    }
    return result;
  }

  void HandleRole(const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    const Json body = Json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      ReplyError(res, 400, "request body is not a JSON object");
      return;
    }
    const Json* field = JsonChild(body, protocol::kRoleField);
    const std::string name =
        field != nullptr && field->is_string() ? field->get<std::string>() : "";
    const std::optional<WorkerRole> to = ParseWorkerRole(name);
    if (!to || *to == WorkerRole::kBoth) {
      ReplyError(
          res, 400,
          std::string("role must be \"prefill\" or \"decode\"") +
              (field == nullptr ? " (the field is missing)" : " (got " + Dump(*field) + ")"));
      return;
    }
    auto r = SwitchRole(*to, "api");
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kUnavailable) res.set_header("Retry-After", "1");
      ReplyError(res, HttpCode(r.status()), r.status().message());
      return;
    }
    Reply(res, 200,
          Json{{protocol::kRoleField, WorkerRoleName(r->role)},
               {protocol::kPreviousRoleField, WorkerRoleName(r->previous)},
               {protocol::kRoleChangedField, r->changed},
               {protocol::kDrainedRequestsField, r->drained_requests},
               {protocol::kDrainCompleteField, r->drain_complete},
               {protocol::kSwitchSecondsField, r->switch_seconds}});
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
  // Every worker can push and take KV: a role switch in place needs no new port.
  m.sender = std::make_unique<TcpKvSender>(kv);
  m.receiver = std::make_unique<TcpKvReceiver>(kv, &m);
  // The GPU transports' control channels share the tcp receiver's port (their own magic).
  if (m.options.cuda_ipc) {
    CudaIpcKvOptions ipc;
    ipc.token = m.options.auth_token;
    ipc.io_timeout = m.options.kv_io_timeout;
    m.ipc_sender = std::make_unique<CudaIpcKvSender>(ipc, m.options.cuda_ipc.get());
    m.ipc_receiver = std::make_unique<CudaIpcKvReceiver>(ipc, &m);
    m.receiver->AddProtocol(kCudaIpcKvMagic, [&m](int fd) { m.ipc_receiver->ServeConnection(fd); });
  }
  if (m.options.nccl) {
    NcclKvOptions nccl;
    nccl.token = m.options.auth_token;
    nccl.io_timeout = m.options.kv_io_timeout;
    m.nccl_sender = std::make_unique<NcclKvSender>(nccl, m.options.nccl.get());
    m.nccl_receiver = std::make_unique<NcclKvReceiver>(nccl, m.options.nccl.get(), &m);
    m.receiver->AddProtocol(kNcclKvMagic, [&m](int fd) { m.nccl_receiver->ServeConnection(fd); });
  }
  Status s = m.receiver->Start(m.options.kv_host.empty() ? m.options.host : m.options.kv_host,
                               m.options.kv_port);
  if (!s.ok()) return s;

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
    impl_->metrics.SetGpuReadings(impl_->gpu_monitor.Sample());
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
  srv.Post(protocol::kRolePath,
           [this](const httplib::Request& q, httplib::Response& r) { impl_->HandleRole(q, r); });

  auto bound = BindHttpServer(srv, m.options.host, m.options.port, "worker");
  if (!bound.ok()) return bound.status();
  m.port = *bound;
  m.server_thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return Status::Ok();
}

void WorkerServer::SetEngine(std::unique_ptr<Engine> engine) {
  Impl& m = *impl_;
  engine->SetStepObserver([&m](const StepReport& r) { m.metrics.ObserveStep(r); });
  KvEndpoint endpoint = m.DescribeKv(*engine);
  engine->Start();
  std::lock_guard lock(m.mu);
  m.kv_endpoint = std::move(endpoint);
  m.engine = std::move(engine);
  m.weights_loaded_at = FormatRfc3339Micro(m.clock->WallNow());
}

bool WorkerServer::Drain(std::chrono::milliseconds grace) {
  Impl& m = *impl_;
  std::unique_lock lock(m.mu);
  m.draining = true;
  const auto deadline = Clock::now() + grace;
  auto idle = [&] { return m.IdleLocked(); };
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

StatusOr<RoleSwitchResult> WorkerServer::SwitchRole(WorkerRole to, const std::string& trigger) {
  return impl_->SwitchRole(to, trigger);
}

WorkerRole WorkerServer::role() const { return impl_->role.load(); }

int WorkerServer::port() const { return impl_->port; }
int WorkerServer::kv_port() const { return impl_->receiver ? impl_->receiver->port() : 0; }
bool WorkerServer::ready() const {
  std::lock_guard lock(impl_->mu);
  return impl_->engine != nullptr && !impl_->draining;
}

}  // namespace pdpool::agent
