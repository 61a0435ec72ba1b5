// WorkerClient on cpp-httplib: pooled keep-alive connections and the protocol's JSON/NDJSON.
#include "agent/router/worker_client.h"

#include <httplib.h>

#include <charconv>
#include <mutex>
#include <utility>

#include "agent/worker/worker_protocol.h"

namespace pdpool::agent {
namespace {

using SteadyClock = std::chrono::steady_clock;

// A stale keep-alive connection fails at once; a failure after this long is the worker's.
constexpr auto kStaleConnectionWindow = std::chrono::milliseconds(1000);
// Bodies of error replies are read up to this size.
constexpr size_t kMaxErrorBody = 16 * 1024;

void SetTimeout(httplib::Client& c, std::chrono::milliseconds t) {
  c.set_read_timeout(static_cast<time_t>(t.count() / 1000),
                     static_cast<time_t>((t.count() % 1000) * 1000));
}

std::string ErrorMessageOf(const std::string& body) {
  try {
    Json j = Json::parse(body);
    std::string m = JsonStringAt(j, {"error"});
    if (!m.empty()) return m;
    m = JsonStringAt(j, {"error", "message"});
    if (!m.empty()) return m;
  } catch (const Json::exception&) {
  }
  return body.substr(0, 200);
}

constexpr std::string_view kBusyPrefix = "worker busy: ";

Status StatusFromHttp(int status, const std::string& body, const std::string& what) {
  std::string message = what + ": HTTP " + std::to_string(status) + ": " + ErrorMessageOf(body);
  if (status == 503) return Status::Unavailable(std::string(kBusyPrefix) + message);
  if (status == 401 || status == 403) return Status::Unauthorized(std::move(message));
  if (status >= 400 && status < 500) return Status::InvalidArgument(std::move(message));
  return Status::Unavailable(std::move(message));
}

}  // namespace

bool IsWorkerBusy(const Status& status) {
  return status.code() == StatusCode::kUnavailable && status.message().starts_with(kBusyPrefix);
}

StatusOr<WorkerInfoReply> ParseWorkerInfo(const Json& body) {
  if (!body.is_object()) return Status::Internal("info reply is not a JSON object");
  WorkerInfoReply info;
  info.role = ParseWorkerRole(JsonStringAt(body, {"role"}));
  info.ready = JsonGet<bool>(body, "/ready", false);
  info.draining = JsonGet<bool>(body, "/draining", false);
  const Json* switching = JsonChild(body, protocol::kRoleSwitchingToField);
  info.switching_role = switching != nullptr && switching->is_string();
  info.block_size = JsonGet<int>(body, "/block_size", 16);
  info.kv_blocks_total = JsonGet<int64_t>(body, "/kv_blocks_total", 0);
  info.kv_blocks_free = JsonGet<int64_t>(body, "/kv_blocks_free", 0);
  info.kv_usage_ratio = JsonGet<double>(body, "/kv_usage_ratio", 0.0);
  info.running = JsonGet<int>(body, "/running", 0);
  info.waiting = JsonGet<int>(body, "/waiting", 0);
  info.outstanding_prefill_tokens = JsonGet<int64_t>(body, "/outstanding_prefill_tokens", 0);
  info.max_model_len = JsonGet<int>(body, "/max_model_len", 0);
  if (info.block_size <= 0) info.block_size = 16;
  return info;
}

Json SamplingJson(const RequestSampling& sampling) {
  Json s = {{"temperature", sampling.temperature}, {"top_p", sampling.top_p}};
  if (sampling.seed) s["seed"] = *sampling.seed;
  return s;
}

Status ParseHostPort(std::string_view address, std::string* host, int* port) {
  auto bad = [&](const char* why) {
    return Status::InvalidArgument("worker address '" + std::string(address) + "': " + why +
                                   " (want host:port)");
  };
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("no port");
  std::string_view h = address.substr(0, colon);
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() < 3) return bad("unbalanced brackets");
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string_view::npos) {
    return bad("IPv6 addresses need brackets");
  }
  std::string_view p = address.substr(colon + 1);
  int value = 0;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
  if (ec != std::errc() || ptr != p.data() + p.size() || value < 1 || value > 65535)
    return bad("port must be 1-65535");
  *host = std::string(h);
  *port = value;
  return Status::Ok();
}

struct WorkerClient::Impl {
  struct Idle {
    std::unique_ptr<httplib::Client> client;
    SteadyClock::time_point since;
  };

  std::string host;
  int port = 0;
  std::mutex mu;
  std::vector<Idle> idle;                // LIFO: the warmest connection first
  std::vector<httplib::Client*> active;  // borrowed by calls in progress
};

namespace {

// A connection borrowed from the pool for one call; returned only after a clean exchange.
class Connection {
 public:
  Connection(WorkerClient::Impl* impl, const WorkerClientOptions& options,
             std::atomic<int64_t>* opened, bool fresh)
      : impl_(impl), options_(options) {
    std::vector<WorkerClient::Impl::Idle> stale;  // closed outside the lock
    if (!fresh) {
      std::lock_guard lock(impl_->mu);
      auto now = SteadyClock::now();
      while (!impl_->idle.empty()) {
        auto entry = std::move(impl_->idle.back());
        impl_->idle.pop_back();
        if (now - entry.since <= options_.max_idle_age) {
          client_ = std::move(entry.client);
          reused_ = true;
          break;
        }
        stale.push_back(std::move(entry));
      }
    }
    if (!client_) {
      client_ = std::make_unique<httplib::Client>(impl_->host, impl_->port);
      client_->set_keep_alive(true);
      client_->set_tcp_nodelay(true);
      client_->set_decompress(false);
      client_->set_connection_timeout(
          static_cast<time_t>(options_.connect_timeout.count() / 1000),
          static_cast<time_t>((options_.connect_timeout.count() % 1000) * 1000));
      client_->set_write_timeout(10, 0);
      client_->set_socket_options([opened](socket_t) { opened->fetch_add(1); });
      if (!options_.auth_token.empty()) client_->set_bearer_token_auth(options_.auth_token);
    }
    std::lock_guard lock(impl_->mu);
    impl_->active.push_back(client_.get());
  }
  ~Connection() {
    std::unique_ptr<httplib::Client> closing;  // closed outside the lock
    std::lock_guard lock(impl_->mu);
    std::erase(impl_->active, client_.get());
    if (keep_ && impl_->idle.size() < options_.max_idle_connections)
      impl_->idle.push_back({std::move(client_), SteadyClock::now()});
    else
      closing = std::move(client_);
  }

  httplib::Client& client() { return *client_; }
  bool reused() const { return reused_; }
  // The exchange completed and the connection may serve another.
  void Keep() { keep_ = true; }

 private:
  WorkerClient::Impl* impl_;
  const WorkerClientOptions& options_;
  std::unique_ptr<httplib::Client> client_;
  bool reused_ = false;
  bool keep_ = false;
};

}  // namespace

WorkerClient::WorkerClient(std::string address, WorkerClientOptions options)
    : address_(std::move(address)), options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  if (!ParseHostPort(address_, &impl_->host, &impl_->port).ok()) {
    impl_->host = address_;  // calls fail with a connection error naming it
    impl_->port = 0;
  }
}

WorkerClient::~WorkerClient() = default;

void WorkerClient::AbortCalls() {
  std::lock_guard lock(impl_->mu);
  for (httplib::Client* c : impl_->active) c->stop();
}

namespace {

// One JSON exchange; a reused connection that fails at once is retried on a new one.
StatusOr<Json> Exchange(WorkerClient::Impl* impl, const WorkerClientOptions& options,
                        std::atomic<int64_t>* opened, const std::string& address,
                        const char* method, const char* path, const std::string& body,
                        std::chrono::milliseconds timeout) {
  for (int attempt = 0;; ++attempt) {
    Connection conn(impl, options, opened, /*fresh=*/attempt > 0);
    SetTimeout(conn.client(), timeout);
    auto start = SteadyClock::now();
    httplib::Result res = std::string_view(method) == "GET"
                              ? conn.client().Get(path)
                              : conn.client().Post(path, body, "application/json");
    if (!res) {
      if (attempt == 0 && conn.reused() && SteadyClock::now() - start < kStaleConnectionWindow)
        continue;
      return Status::Unavailable(std::string(method) + " " + address + path + ": " +
                                 httplib::to_string(res.error()));
    }
    conn.Keep();
    if (res->status != 200) return StatusFromHttp(res->status, res->body, address + path);
    try {
      return Json::parse(res->body);
    } catch (const Json::exception& e) {
      return Status::Internal(address + path + ": malformed reply: " + e.what());
    }
  }
}

}  // namespace

StatusOr<WorkerInfoReply> WorkerClient::Info() {
  auto body = Exchange(impl_.get(), options_, &connections_opened_, address_, "GET",
                       protocol::kInfoPath, "", options_.control_timeout);
  if (!body.ok()) return body.status();
  return ParseWorkerInfo(*body);
}

StatusOr<KvReservation> WorkerClient::Reserve(std::string_view request_id, int prompt_tokens,
                                              int max_tokens) {
  Json req = {
      {"request_id", request_id}, {"prompt_tokens", prompt_tokens}, {"max_tokens", max_tokens}};
  auto body = Exchange(impl_.get(), options_, &connections_opened_, address_, "POST",
                       protocol::kReservePath, DumpJson(req), options_.control_timeout);
  if (!body.ok()) return body.status();
  KvReservation r;
  const Json* id = JsonChild(*body, "reservation_id");
  if (id == nullptr || !id->is_number_integer())
    return Status::Internal(address_ + ": reserve reply has no reservation_id");
  r.reservation_id = id->get<int64_t>();
  if (const Json* blocks = JsonChild(*body, "blocks"); blocks != nullptr && blocks->is_array()) {
    r.blocks.reserve(blocks->size());
    for (const Json& b : *blocks) {
      if (b.is_number_integer()) r.blocks.push_back(b.get<int64_t>());
    }
  }
  r.block_size = JsonGet<int>(*body, "/block_size", 0);
  r.kv_address = JsonStringAt(*body, {"kv_address"});
  if (const Json* t = JsonChild(*body, "transports"); t != nullptr && t->is_object()) {
    r.transports = *t;
  }
  return r;
}

Status WorkerClient::Release(int64_t reservation_id) {
  Json req = {{"reservation_id", reservation_id}};
  auto body = Exchange(impl_.get(), options_, &connections_opened_, address_, "POST",
                       protocol::kReleasePath, DumpJson(req), options_.control_timeout);
  return body.ok() ? Status::Ok() : body.status();
}

StatusOr<PrefillReply> WorkerClient::Prefill(std::string_view request_id,
                                             const std::vector<int32_t>& prompt_token_ids,
                                             const RequestSampling& sampling,
                                             const KvReservation& destination) {
  // No "transport": the prefill worker picks one by its pool's setting from what the decode
  // worker offers.
  Json dest = {{"kv_address", destination.kv_address},
               {"reservation_id", destination.reservation_id},
               {"blocks", destination.blocks}};
  if (destination.transports.is_object()) dest["transports"] = destination.transports;
  Json req = {{"request_id", request_id},
              {"prompt_token_ids", prompt_token_ids},
              {"sampling", SamplingJson(sampling)},
              {"destination", std::move(dest)}};
  auto body = Exchange(impl_.get(), options_, &connections_opened_, address_, "POST",
                       protocol::kPrefillPath, DumpJson(req), options_.request_timeout);
  if (!body.ok()) return body.status();
  const Json* first = JsonChild(*body, "first_token");
  if (first == nullptr || !first->is_number_integer())
    return Status::Internal(address_ + ": prefill reply has no first_token");
  PrefillReply r;
  r.first_token = first->get<int32_t>();
  r.prompt_tokens =
      JsonGet<int>(*body, "/prompt_tokens", static_cast<int>(prompt_token_ids.size()));
  return r;
}

WorkerClient::StreamResult WorkerClient::Decode(int64_t reservation_id, int32_t first_token,
                                                const std::vector<int32_t>& prompt_token_ids,
                                                int max_tokens, const RequestSampling& sampling,
                                                bool ignore_eos, const TokenCallback& on_token) {
  Json req = {{"reservation_id", reservation_id},     {"first_token", first_token},
              {"prompt_token_ids", prompt_token_ids}, {"max_tokens", max_tokens},
              {"sampling", SamplingJson(sampling)},   {"ignore_eos", ignore_eos}};
  return Stream(protocol::kDecodePath, DumpJson(req), on_token);
}

WorkerClient::StreamResult WorkerClient::Generate(std::string_view request_id,
                                                  const std::vector<int32_t>& prompt_token_ids,
                                                  int max_tokens, const RequestSampling& sampling,
                                                  bool ignore_eos, const TokenCallback& on_token) {
  Json req = {{"request_id", request_id},
              {"prompt_token_ids", prompt_token_ids},
              {"max_tokens", max_tokens},
              {"sampling", SamplingJson(sampling)},
              {"ignore_eos", ignore_eos}};
  return Stream(protocol::kGeneratePath, DumpJson(req), on_token);
}

WorkerClient::StreamResult WorkerClient::Stream(const char* path, const std::string& body,
                                                const TokenCallback& on_token) {
  for (int attempt = 0;; ++attempt) {
    Connection conn(impl_.get(), options_, &connections_opened_, /*fresh=*/attempt > 0);
    SetTimeout(conn.client(), options_.request_timeout);

    StreamResult result;
    int http_status = 0;
    bool finished = false;
    bool received = false;
    std::string error_body;
    std::string pending;  // an incomplete NDJSON line

    // Handles one complete line; false ends the stream (finish, error or cancel).
    auto on_line = [&](std::string_view line) -> bool {
      if (line.empty()) return true;
      Json j;
      try {
        j = Json::parse(line);
      } catch (const Json::exception&) {
        result.status = Status::Internal(address_ + path + ": malformed stream line");
        return false;
      }
      if (const Json* t = JsonChild(j, "token"); t != nullptr && t->is_number_integer()) {
        ++result.tokens;
        if (!on_token(t->get<int32_t>())) {
          result.cancelled = true;
          result.status = Status::Cancelled("stream cancelled by the router");
          return false;
        }
        return true;
      }
      if (const Json* f = JsonChild(j, "finish_reason"); f != nullptr && f->is_string()) {
        finished = true;
        result.finish_reason = f->get<std::string>();
        return true;  // read to the end so the connection can be reused
      }
      if (JsonChild(j, "error") != nullptr) {
        result.status =
            Status::Unavailable(address_ + path + ": " + ErrorMessageOf(std::string(line)));
        return false;
      }
      return true;  // unknown line: ignore (forward compatible)
    };

    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.response_handler = [&](const httplib::Response& r) {
      http_status = r.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) -> bool {
      received = true;
      if (http_status != 200) {
        if (error_body.size() < kMaxErrorBody) error_body.append(data, len);
        return true;
      }
      if (finished) return true;
      pending.append(data, len);
      size_t start = 0;
      for (size_t nl = pending.find('\n'); nl != std::string::npos;
           nl = pending.find('\n', start)) {
        bool go_on = on_line(std::string_view(pending).substr(start, nl - start));
        start = nl + 1;
        if (!go_on) return false;
      }
      pending.erase(0, start);
      return true;
    };

    auto begin = SteadyClock::now();
    httplib::Response res;
    httplib::Error error = httplib::Error::Success;
    bool ok = conn.client().send(req, res, error);
    if (result.cancelled || !result.status.ok()) return result;  // connection closed by httplib
    if (!ok) {
      if (attempt == 0 && conn.reused() && !received && http_status == 0 &&
          SteadyClock::now() - begin < kStaleConnectionWindow)
        continue;
      result.status = Status::Unavailable(std::string("POST ") + address_ + path + ": " +
                                          httplib::to_string(error));
      return result;
    }
    if (http_status != 200) {
      conn.Keep();
      result.status = StatusFromHttp(http_status, error_body, address_ + path);
      return result;
    }
    if (!pending.empty() && !finished) {
      on_line(pending);  // a last line without its newline
      if (result.cancelled || !result.status.ok()) return result;
    }
    if (!finished) {
      result.status = Status::Unavailable(address_ + path + ": stream ended without a finish line");
      return result;
    }
    conn.Keep();
    return result;
  }
}

}  // namespace pdpool::agent
