// RouterServer on cpp-httplib: routing, the per-request flow (parse → tokenize → generate →
// respond/stream), metrics and draining (see router_server.h).
#include "agent/router/router_server.h"

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "agent/model/tokenizer.h"
#include "agent/router/generation_flow.h"
#include "agent/router/openai_api.h"
#include "agent/router/output_text.h"
#include "common/http_server.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

using Seconds = std::chrono::duration<double>;

constexpr const char* kJson = "application/json";

// Set when a completion handler has counted its request itself, before the response went
// out (so a client that reads its response and then scrapes /metrics sees it counted). The
// logger, which runs after the response is written on the same thread, counts the rest.
thread_local bool t_request_counted = false;

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  if (error.status == 503) res.set_header("Retry-After", "1");
  res.set_content(ErrorBody(error), kJson);
}

// How a failed flow looks to the client.
ApiError FlowError(const Status& status) {
  ApiError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      e.status = 400;
      break;
    case StatusCode::kUnavailable:
      e.status = 503;
      e.type = "server_error";
      e.code = "no_worker_available";
      break;
    case StatusCode::kDeadlineExceeded:
      e.status = 504;
      e.type = "server_error";
      break;
    case StatusCode::kCancelled:
      e.status = 503;
      e.type = "server_error";
      e.message = "the router is shutting down";
      break;
    default:
      e.status = 502;
      e.type = "server_error";
      e.code = "worker_error";
  }
  return e;
}

}  // namespace

struct RouterServer::Impl {
  RouterServerOptions options;
  WorkerPool* pool;
  RouterMetrics* metrics;
  const Clock* clock;
  ByteTokenizer tokenizer;
  httplib::Server server;
  std::thread thread;
  int port = 0;
  int64_t started_unix = 0;
  std::string id_prefix;  // per process, so ids from router replicas do not collide
  std::atomic<uint64_t> next_id{1};

  std::atomic<bool> draining{false};
  std::atomic<bool> abort{false};  // cut the streams still running after the drain timeout
  std::mutex inflight_mu;
  std::condition_variable inflight_cv;
  int64_t inflight = 0;
  int64_t max_inflight = 1;  // set by Start()
  bool shut_down = false;

  // Counts one client request in flight for its lifetime (the streaming ones live until the
  // last byte is written).
  class InflightGuard {
   public:
    explicit InflightGuard(Impl* impl) : impl_(impl) {
      impl_->metrics->InflightAdd(1);
      std::lock_guard lock(impl_->inflight_mu);
      ++impl_->inflight;
    }
    ~InflightGuard() {
      impl_->metrics->InflightAdd(-1);
      std::lock_guard lock(impl_->inflight_mu);
      if (--impl_->inflight == 0) impl_->inflight_cv.notify_all();
    }
    InflightGuard(const InflightGuard&) = delete;
    InflightGuard& operator=(const InflightGuard&) = delete;

   private:
    Impl* impl_;
  };

  // What one request needs after the handler returns (streaming).
  struct RequestState {
    RequestState(Impl* impl, GenerationRequest gen, const CompletionRequest& request,
                 ResponseHeader header, TimePoint arrival)
        : impl(impl),
          guard(impl),
          flow(impl->pool, impl->metrics, std::move(gen), &impl->abort),
          text(&impl->tokenizer, request.stop, request.ignore_eos),
          encoder(header, request.include_usage),
          header(std::move(header)),
          arrival(arrival),
          prompt_tokens(0) {}

    Impl* impl;
    InflightGuard guard;
    GenerationFlow flow;
    OutputText text;
    ChunkEncoder encoder;
    ResponseHeader header;
    TimePoint arrival;
    int prompt_tokens;
    bool include_usage = false;
    TimePoint first_token{};
    TimePoint last_token{};
  };

  int64_t CurrentInflight() {
    std::lock_guard lock(inflight_mu);
    return inflight;
  }

  std::string NextId(ApiKind kind) {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%s%s%010llx", kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-",
                  id_prefix.c_str(),
                  static_cast<unsigned long long>(next_id.fetch_add(1, std::memory_order_relaxed)));
    return buf;
  }

  void RecordDone(const RequestState& st, int tokens) {
    metrics->ObserveE2e(Seconds(clock->Now() - st.arrival).count());
    metrics->AddPromptTokens(st.prompt_tokens);
    metrics->AddGenerationTokens(tokens);
    if (tokens >= 1) metrics->ObserveTtft(Seconds(st.first_token - st.arrival).count());
    if (tokens >= 2)
      metrics->ObserveTpot(Seconds(st.last_token - st.first_token).count() / (tokens - 1));
  }

  void HandleModels(httplib::Response& res) {
    res.set_content(DumpJson(BuildModelList(options.served_model_name, started_unix)), kJson);
  }

  bool Authorized(const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty()) return true;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key) return true;
    ApiError e = ErrorForStatus(401);
    e.message = "Incorrect or missing API key: send Authorization: Bearer <key>";
    SendError(res, e);
    return false;
  }

  // Returns true when the response is streamed (counted by StreamResponse).
  bool HandleCompletion(const httplib::Request& req, httplib::Response& res, ApiKind kind);
  void CountRequestNow(int status) {
    metrics->CountRequest(status);
    t_request_counted = true;
  }
  void StreamResponse(const std::shared_ptr<RequestState>& st, httplib::DataSink& sink);
};

bool RouterServer::Impl::HandleCompletion(const httplib::Request& req, httplib::Response& res,
                                          ApiKind kind) {
  const TimePoint arrival = clock->Now();
  if (draining.load()) {
    ApiError e = ErrorForStatus(503);
    e.message = "the router is shutting down; retry on another replica";
    SendError(res, e);
    return false;
  }
  if (!Authorized(req, res)) return false;
  if (int64_t now_inflight = CurrentInflight(); now_inflight >= max_inflight) {
    ApiError e = ErrorForStatus(503);
    e.message = "the router is at capacity (" + std::to_string(now_inflight) +
                " requests in flight); retry later";
    SendError(res, e);
    return false;
  }

  Json body;
  try {
    body = Json::parse(req.body);
  } catch (const Json::exception& e) {
    SendError(res, InvalidRequest(std::string("the request body is not valid JSON: ") + e.what()));
    return false;
  }
  CompletionRequest request;
  std::optional<ApiError> error = kind == ApiKind::kChat ? ParseChatRequest(body, &request)
                                                         : ParseCompletionRequest(body, &request);
  if (!error) error = CheckModel(request, options.served_model_name);
  if (error) {
    SendError(res, *error);
    return false;
  }

  GenerationRequest gen;
  if (request.prompt_is_tokens) {
    gen.prompt_token_ids = std::move(request.prompt_token_ids);
  } else {
    gen.prompt_token_ids.reserve(request.prompt_text.size() + 1);
    gen.prompt_token_ids.push_back(tokenizer.bos_id());
    std::vector<int32_t> ids = tokenizer.Encode(request.prompt_text);
    gen.prompt_token_ids.insert(gen.prompt_token_ids.end(), ids.begin(), ids.end());
  }
  const int prompt_tokens = static_cast<int>(gen.prompt_token_ids.size());
  const int max_model_len = options.max_model_len > 0 ? options.max_model_len : pool->MaxModelLen();
  if (auto e = ResolveMaxTokens(request, prompt_tokens, max_model_len, &gen.max_tokens)) {
    SendError(res, *e);
    return false;
  }
  gen.sampling = request.sampling;
  gen.ignore_eos = request.ignore_eos;

  ResponseHeader header;
  header.kind = kind;
  header.id = NextId(kind);
  header.created =
      std::chrono::duration_cast<std::chrono::seconds>(clock->WallNow().time_since_epoch()).count();
  header.model = options.served_model_name;
  gen.request_id = header.id;

  auto st = std::make_shared<RequestState>(this, std::move(gen), request, header, arrival);
  st->prompt_tokens = prompt_tokens;
  st->include_usage = request.include_usage;
  if (Status s = st->flow.Start(); !s.ok()) {
    SendError(res, FlowError(s));
    return false;
  }

  if (request.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream",
                                     [this, st](size_t, httplib::DataSink& sink) {
                                       StreamResponse(st, sink);
                                       return true;
                                     });
    return true;
  }

  std::string text;
  auto outcome = st->flow.Stream([&](int32_t token) {
    TimePoint now = clock->Now();
    if (st->text.tokens() == 0) st->first_token = now;
    st->last_token = now;
    text += st->text.Add(token);
    return !st->text.stopped();
  });
  RecordDone(*st, outcome.tokens);
  if (!outcome.status.ok() && !st->text.stopped()) {
    SendError(res, FlowError(outcome.status));
    return false;
  }
  text += st->text.Flush();
  std::string finish = st->text.stopped() ? "stop" : outcome.finish_reason;
  TokenUsage usage{prompt_tokens, outcome.tokens};
  res.set_content(DumpJson(BuildResponse(st->header, text, finish, usage)), kJson);
  return false;
}

void RouterServer::Impl::StreamResponse(const std::shared_ptr<RequestState>& st,
                                        httplib::DataSink& sink) {
  bool client_gone = false;
  auto write = [&](const std::string& s) {
    if (client_gone) return false;
    if (!sink.write(s.data(), s.size())) client_gone = true;
    return !client_gone;
  };
  const bool chat = st->header.kind == ApiKind::kChat;
  auto outcome = st->flow.Stream([&](int32_t token) {
    const bool first = st->text.tokens() == 0;
    std::string delta = st->text.Add(token);
    if (first) {
      // The first token goes out at once, even when its text is held back: that is TTFT.
      if (chat) {
        write(st->encoder.RoleEvent());
        if (!delta.empty()) write(st->encoder.TextEvent(delta));
      } else {
        write(st->encoder.TextEvent(delta));
      }
      st->first_token = clock->Now();
    } else if (!delta.empty()) {
      write(st->encoder.TextEvent(delta));
    }
    st->last_token = clock->Now();
    return !client_gone && !st->text.stopped();
  });
  RecordDone(*st, outcome.tokens);
  CountRequestNow(200);
  if (client_gone) {
    LogDebug("client went away", {{"request_id", st->header.id}, {"tokens", outcome.tokens}});
    sink.done();
    return;
  }
  if (!outcome.status.ok() && !st->text.stopped()) {
    // The status line is long gone: the failure travels in the stream.
    write(ChunkEncoder::ErrorEvent(FlowError(outcome.status)));
    write(std::string(kSseDone));
    sink.done();
    return;
  }
  if (chat && outcome.tokens == 0) write(st->encoder.RoleEvent());
  if (std::string rest = st->text.Flush(); !rest.empty()) write(st->encoder.TextEvent(rest));
  write(st->encoder.FinishEvent(st->text.stopped() ? "stop" : outcome.finish_reason));
  if (st->include_usage) write(st->encoder.UsageEvent({st->prompt_tokens, outcome.tokens}));
  write(std::string(kSseDone));
  sink.done();
}

RouterServer::RouterServer(RouterServerOptions options, WorkerPool* pool, RouterMetrics* metrics,
                           const Clock* clock)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->pool = pool;
  impl_->metrics = metrics;
  impl_->clock = clock;
  impl_->started_unix =
      std::chrono::duration_cast<std::chrono::seconds>(clock->WallNow().time_since_epoch()).count();
  char prefix[16];
  std::snprintf(prefix, sizeof(prefix), "%06x",
                static_cast<unsigned>(std::random_device{}() & 0xffffff));
  impl_->id_prefix = prefix;
}

RouterServer::~RouterServer() { Shutdown(); }

Status RouterServer::Start() {
  Impl* impl = impl_.get();
  auto& s = impl->server;
  const int threads = std::max(1, impl->options.threads);
  impl->max_inflight = impl->options.max_inflight > 0
                           ? impl->options.max_inflight
                           : std::max(1, threads - std::min(64, threads / 4));
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.set_tcp_nodelay(true);
  s.set_payload_max_length(impl->options.max_body_bytes);
  s.set_keep_alive_max_count(1000);
  s.set_write_timeout(30, 0);

  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  s.Get("/readyz", [impl](const httplib::Request&, httplib::Response& res) {
    bool ok = !impl->draining.load() && impl->pool->Ready();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "not ready\n", "text/plain");
  });
  s.Get("/metrics", [impl](const httplib::Request&, httplib::Response& res) {
    impl->metrics->UpdateWorkers(impl->pool->Describe());
    res.set_content(impl->metrics->Serialize(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [impl](const httplib::Request& req, httplib::Response& res) {
    if (impl->Authorized(req, res)) impl->HandleModels(res);
  });
  for (auto [path, kind] : {std::pair{"/v1/completions", ApiKind::kCompletion},
                            std::pair{"/v1/chat/completions", ApiKind::kChat}}) {
    s.Post(path, [impl, kind](const httplib::Request& req, httplib::Response& res) {
      if (!impl->HandleCompletion(req, res, kind))
        impl->CountRequestNow(res.status == -1 ? 200 : res.status);
    });
  }
  // Known paths with the wrong method: 405 naming the right one.
  auto method_not_allowed = [](const char* allow) {
    return [allow](const httplib::Request& req, httplib::Response& res) {
      ApiError e = ErrorForStatus(405);
      e.message = "method " + req.method + " is not allowed on " + req.path + "; use " + allow;
      res.set_header("Allow", allow);
      SendError(res, e);
    };
  };
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    s.Get(path, method_not_allowed("POST"));
    s.Put(path, method_not_allowed("POST"));
    s.Delete(path, method_not_allowed("POST"));
    s.Patch(path, method_not_allowed("POST"));
  }
  s.Post("/v1/models", method_not_allowed("GET"));
  s.Put("/v1/models", method_not_allowed("GET"));
  s.Delete("/v1/models", method_not_allowed("GET"));

  // Statuses no handler wrote a body for (unknown path 404, 413 from the body limit, ...).
  s.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e = ErrorForStatus(res.status);
        if (res.status == 404) e.message = "unknown path " + req.path;
        if (res.status == 503) res.set_header("Retry-After", "1");
        res.set_content(ErrorBody(e), kJson);
        return httplib::Server::HandlerResponse::Handled;
      }));
  s.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        LogError("request handler threw", {{"path", req.path}, {"error", what}});
        ApiError e = ErrorForStatus(500);
        e.message = "internal error";
        SendError(res, e);
      });
  s.set_logger([impl](const httplib::Request& req, const httplib::Response& res) {
    if (!t_request_counted && req.path.starts_with("/v1/")) impl->metrics->CountRequest(res.status);
    t_request_counted = false;
  });

  const std::string& host = impl->options.host;
  auto bound = BindHttpServer(s, host, impl->options.port, "router");
  if (!bound.ok()) return bound.status();
  impl->port = *bound;
  impl->thread = std::thread([impl] { impl->server.listen_after_bind(); });
  LogInfo("router listening", {{"address", host + ":" + std::to_string(impl->port)},
                               {"model", impl->options.served_model_name},
                               {"threads", threads}});
  return Status::Ok();
}

int RouterServer::port() const { return impl_->port; }

bool RouterServer::ready() const { return !impl_->draining.load() && impl_->pool->Ready(); }

int64_t RouterServer::inflight() const {
  std::lock_guard lock(impl_->inflight_mu);
  return impl_->inflight;
}

void RouterServer::Shutdown() {
  Impl* impl = impl_.get();
  {
    std::lock_guard lock(impl->inflight_mu);
    if (impl->shut_down) return;
    impl->shut_down = true;
  }
  impl->draining = true;
  if (!impl->thread.joinable()) return;
  std::unique_lock lock(impl->inflight_mu);
  LogInfo("router draining", {{"inflight", impl->inflight}});
  bool drained = impl->inflight_cv.wait_for(lock, impl->options.drain_timeout,
                                            [impl] { return impl->inflight == 0; });
  if (!drained) {
    LogWarn("drain timeout; cancelling the requests left", {{"inflight", impl->inflight}});
    impl->abort = true;
    lock.unlock();
    impl->pool->AbortCalls();  // streams blocked on a silent worker fail now
    lock.lock();
    impl->inflight_cv.wait_for(lock, std::chrono::seconds(2),
                               [impl] { return impl->inflight == 0; });
  }
  lock.unlock();
  impl->server.stop();
  impl->thread.join();
  LogInfo("router stopped", {});
}

}  // namespace pdpool::agent
