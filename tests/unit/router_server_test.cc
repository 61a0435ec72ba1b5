// Tests of the router end to end against fake workers: httplib servers on port 0 that speak
// the worker protocol (reserve, prefill, decode and generate NDJSON streams, info, release),
// insist on the pool's Bearer token and record what they were asked. Covers the
// disaggregated and aggregated flows, streaming and not, stop strings and EOS, prefill
// failure → release + retry elsewhere, busy decode workers, client disconnects, draining,
// the HTTP errors (404/405/400/413/503) and the metrics the router exports.
#include "agent/router/router_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/model/tokenizer.h"
#include "agent/router/router_metrics.h"
#include "agent/router/worker_client.h"
#include "agent/router/worker_pool.h"
#include "agent/worker/worker_protocol.h"
#include "common/clock.h"
#include "common/json.h"

namespace pdpool::agent {
namespace {

using std::chrono::milliseconds;

constexpr auto kWait = std::chrono::seconds(10);
constexpr const char* kToken = "pool-secret";
constexpr const char* kScript = "Hello, world! The quick brown fox jumps over the lazy dog. ";
constexpr int32_t kEos = ByteTokenizer::kEosId;
// What a decode worker on a GPU offers in its reservation reply (worker_protocol.h).
const Json kTransports = {
    {"tcp", Json::object()},
    {"nccl",
     {{"device_uuid", "GPU-d"}, {"node", "n1"}, {"nvlink_domain", "c1"}, {"block_bytes", 4096}}}};

// Polls `pred` until it holds or kWait passes.
bool WaitUntil(const std::function<bool()>& pred) {
  auto deadline = std::chrono::steady_clock::now() + kWait;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return pred();
}

std::vector<int32_t> Tokens(std::string_view s) { return ByteTokenizer().Encode(s); }

// A worker of the pool as far as the router can tell.
class FakeWorker {
 public:
  explicit FakeWorker(WorkerRole role, std::vector<int32_t> script = Tokens(kScript))
      : role_(role), script_(std::move(script)) {
    auto authorized = [this](const httplib::Request& req, httplib::Response& res) {
      if (req.get_header_value("Authorization") == std::string("Bearer ") + kToken) return true;
      ++unauthorized;
      res.status = 401;
      res.set_content(R"({"error":"missing or wrong pool token"})", "application/json");
      return false;
    };
    server_.Get(protocol::kInfoPath,
                [=, this](const httplib::Request& req, httplib::Response& res) {
                  if (!authorized(req, res)) return;
                  ++info;
                  Json j = {{"role", WorkerRoleName(role_)},
                            {"backend", "fake"},
                            {"model", "test-tiny"},
                            {"ready", true},
                            {"draining", false},
                            {"block_size", 16},
                            {"kv_blocks_total", 1000},
                            {"kv_blocks_free", free_blocks.load()},
                            {"kv_usage_ratio", 1.0 - free_blocks.load() / 1000.0},
                            {"running", 0},
                            {"waiting", 0},
                            {"outstanding_prefill_tokens", outstanding.load()},
                            {"max_model_len", max_model_len.load()},
                            {"kv_address", kv_address()}};
                  res.set_content(j.dump(), "application/json");
                });
    server_.Post(protocol::kReservePath,
                 [=, this](const httplib::Request& req, httplib::Response& res) {
                   if (!authorized(req, res)) return;
                   ++reserve;
                   if (reserve_busy) {
                     res.status = 503;
                     res.set_content(R"({"error":"no free KV blocks"})", "application/json");
                     return;
                   }
                   Json body = Json::parse(req.body);
                   std::lock_guard lock(mu_);
                   int64_t id = next_reservation_++;
                   live_.push_back(id);
                   reserve_bodies_.push_back(body);
                   Json reply = {{"reservation_id", id},      {"blocks", {id * 10, id * 10 + 1}},
                                 {"block_size", 16},          {"kv_address", kv_address()},
                                 {"transports", kTransports}, {"expires_ms", 30000}};
                   res.set_content(reply.dump(), "application/json");
                 });
    server_.Post(protocol::kReleasePath,
                 [=, this](const httplib::Request& req, httplib::Response& res) {
                   if (!authorized(req, res)) return;
                   ++release;
                   int64_t id = Json::parse(req.body).at("reservation_id").get<int64_t>();
                   std::lock_guard lock(mu_);
                   released_.push_back(id);
                   std::erase(live_, id);
                   res.set_content("{}", "application/json");
                 });
    server_.Post(protocol::kPrefillPath,
                 [=, this](const httplib::Request& req, httplib::Response& res) {
                   if (!authorized(req, res)) return;
                   ++prefill;
                   Json body = Json::parse(req.body);
                   {
                     std::lock_guard lock(mu_);
                     prefill_bodies_.push_back(body);
                   }
                   int f = fail_prefill.load();
                   if (f != 0) {
                     if (f > 0) --fail_prefill;
                     res.status = 500;
                     res.set_content(R"({"error":"kv transfer broke"})", "application/json");
                     return;
                   }
                   Json reply = {{"first_token", script_.at(0)},
                                 {"prompt_tokens", body.at("prompt_token_ids").size()},
                                 {"kv_bytes", 4096},
                                 {"kv_transfer_seconds", 0.001}};
                   res.set_content(reply.dump(), "application/json");
                 });
    server_.Post(
        protocol::kDecodePath, [=, this](const httplib::Request& req, httplib::Response& res) {
          if (!authorized(req, res)) return;
          ++decode;
          Json body = Json::parse(req.body);
          int64_t id = body.at("reservation_id").get<int64_t>();
          {
            std::lock_guard lock(mu_);
            decode_bodies_.push_back(body);
            if (std::find(live_.begin(), live_.end(), id) == live_.end()) {
              res.status = 404;
              res.set_content(R"({"error":"unknown reservation"})", "application/json");
              return;
            }
            std::erase(live_, id);
          }
          Stream(res, 1, body.at("max_tokens").get<int>(), body.value("ignore_eos", false));
        });
    server_.Post(
        protocol::kGeneratePath, [=, this](const httplib::Request& req, httplib::Response& res) {
          if (!authorized(req, res)) return;
          ++generate;
          Json body = Json::parse(req.body);
          {
            std::lock_guard lock(mu_);
            generate_bodies_.push_back(body);
          }
          Stream(res, 0, body.at("max_tokens").get<int>(), body.value("ignore_eos", false));
        });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeWorker() {
    server_.stop();
    thread_.join();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string kv_address() const { return "127.0.0.1:" + std::to_string(port_ + 10000); }
  WorkerSpec spec() const { return {address(), role_}; }

  std::vector<Json> prefill_bodies() const {
    std::lock_guard l(mu_);
    return prefill_bodies_;
  }
  std::vector<Json> decode_bodies() const {
    std::lock_guard l(mu_);
    return decode_bodies_;
  }
  std::vector<Json> generate_bodies() const {
    std::lock_guard l(mu_);
    return generate_bodies_;
  }
  std::vector<int64_t> released() const {
    std::lock_guard l(mu_);
    return released_;
  }

  // Knobs.
  std::atomic<int> fail_prefill{0};  // prefills to fail with 500; -1: all
  std::atomic<bool> reserve_busy{false};
  std::atomic<int64_t> outstanding{0};
  std::atomic<int64_t> free_blocks{1000};
  std::atomic<int> max_model_len{2048};
  std::atomic<int> step_delay_ms{0};  // per generated token: the fake's "decode step"

  // Observations.
  std::atomic<int> info{0}, reserve{0}, release{0}, prefill{0}, decode{0}, generate{0};
  std::atomic<int> unauthorized{0};
  std::atomic<int> cancelled_streams{0};
  std::atomic<int> finished_streams{0};

 private:
  // Streams script tokens [from, max_tokens) as NDJSON; EOS ends it unless ignored.
  void Stream(httplib::Response& res, int from, int max_tokens, bool ignore_eos) {
    res.set_chunked_content_provider("application/x-ndjson", [this, from, max_tokens, ignore_eos](
                                                                 size_t, httplib::DataSink& sink) {
      std::string reason = "length";
      for (int i = from; i < max_tokens; ++i) {
        if (int d = step_delay_ms.load(); d > 0) std::this_thread::sleep_for(milliseconds(d));
        int32_t t = script_[static_cast<size_t>(i) % script_.size()];
        std::string line = "{\"token\":" + std::to_string(t) + "}\n";
        if (!sink.write(line.data(), line.size())) {
          ++cancelled_streams;
          return false;
        }
        if (t == kEos && !ignore_eos) {
          reason = "stop";
          break;
        }
      }
      std::string last = "{\"finish_reason\":\"" + reason + "\"}\n";
      if (!sink.write(last.data(), last.size())) {
        ++cancelled_streams;
        return false;
      }
      ++finished_streams;
      sink.done();
      return true;
    });
  }

  WorkerRole role_;
  std::vector<int32_t> script_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mu_;
  int64_t next_reservation_ = 1;
  std::vector<int64_t> live_;
  std::vector<int64_t> released_;
  std::vector<Json> reserve_bodies_, prefill_bodies_, decode_bodies_, generate_bodies_;
};

// A router over the given workers, served on a free port.
class Router {
 public:
  explicit Router(std::vector<WorkerSpec> specs, RouterServerOptions options = {},
                  std::string token = kToken)
      : metrics_("test-pool"), pool_(&RealClock::Instance(), PoolOptions(token)) {
    options.host = "127.0.0.1";
    options.port = 0;
    if (options.served_model_name.empty()) options.served_model_name = "tiny";
    options.threads = 16;
    server_ = std::make_unique<RouterServer>(options, &pool_, &metrics_, &RealClock::Instance());
    pool_.SetWorkers(specs);
    pool_.StartPolling();
    Status s = server_->Start();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  ~Router() {
    server_->Shutdown();
    pool_.StopPolling();
  }

  static WorkerPoolOptions PoolOptions(const std::string& token) {
    WorkerPoolOptions o;
    o.poll_interval = milliseconds(10);
    o.client.auth_token = token;
    o.client.request_timeout = milliseconds(10'000);
    return o;
  }

  bool WaitReady() {
    return WaitUntil([&] { return server_->ready(); });
  }
  httplib::Client Client() const {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(10, 0);
    return c;
  }
  httplib::Result Post(const std::string& path, const Json& body) const {
    return Client().Post(path.c_str(), body.dump(), "application/json");
  }
  httplib::Result Get(const std::string& path) const { return Client().Get(path.c_str()); }

  RouterServer& server() { return *server_; }
  WorkerPool& pool() { return pool_; }

 private:
  RouterMetrics metrics_;
  WorkerPool pool_;
  std::unique_ptr<RouterServer> server_;
};

// The JSON of each SSE data event; "[DONE]" as a string.
std::vector<Json> SseData(const std::string& stream) {
  std::vector<Json> out;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t end = stream.find("\n\n", pos);
    if (end == std::string::npos) {
      ADD_FAILURE() << "unterminated event: " << stream.substr(pos);
      break;
    }
    std::string event = stream.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? Json("[DONE]") : Json::parse(data));
    pos = end + 2;
  }
  return out;
}

// Text of a streamed completion or chat response.
std::string StreamedText(const std::vector<Json>& events) {
  std::string text;
  for (const Json& e : events) {
    if (!e.is_object() || !e.contains("choices") || e["choices"].empty()) continue;
    const Json& c = e["choices"][0];
    if (c.contains("text")) text += c["text"].get<std::string>();
    if (c.contains("delta") && c["delta"].contains("content"))
      text += c["delta"]["content"].get<std::string>();
  }
  return text;
}

// The value of the first sample of `name` whose labels include every `k="v"` in `labels`.
double MetricValue(const std::string& text, const std::string& name,
                   const std::vector<std::string>& labels = {}) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    char next = line[name.size()];
    if (next != '{' && next != ' ') continue;
    bool all = true;
    for (const auto& l : labels) all = all && line.find(l) != std::string::npos;
    if (!all) continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

Json Completion(const std::string& prompt, int max_tokens) {
  return {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

std::string Prefix(std::string_view s, size_t n) { return std::string(s.substr(0, n)); }

TEST(RouterWorkerClientTest, SendsTheTokenAndReusesConnections) {
  FakeWorker w(WorkerRole::kDecode);
  WorkerClientOptions o;
  o.auth_token = kToken;
  WorkerClient client(w.address(), o);
  for (int i = 0; i < 5; ++i) {
    auto info = client.Info();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->role, WorkerRole::kDecode);
    EXPECT_EQ(info->max_model_len, 2048);
  }
  EXPECT_EQ(w.info, 5);
  EXPECT_EQ(w.unauthorized, 0);
  EXPECT_EQ(client.connections_opened(), 1);

  o.auth_token = "wrong";
  WorkerClient wrong(w.address(), o);
  auto info = wrong.Info();
  EXPECT_EQ(info.status().code(), StatusCode::kUnauthorized);
  EXPECT_EQ(w.unauthorized, 1);
}

TEST(RouterWorkerClientTest, ReserveBusyAndDecodeStream) {
  FakeWorker w(WorkerRole::kDecode, Tokens("abc"));
  WorkerClientOptions o;
  o.auth_token = kToken;
  WorkerClient client(w.address(), o);
  w.reserve_busy = true;
  auto busy = client.Reserve("r1", 3, 4);
  EXPECT_TRUE(IsWorkerBusy(busy.status())) << busy.status().ToString();
  w.reserve_busy = false;
  auto r = client.Reserve("r1", 3, 4);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kv_address, w.kv_address());
  std::vector<int32_t> got;
  auto result = client.Decode(r->reservation_id, 'a', {}, 4, {}, false, [&](int32_t t) {
    got.push_back(t);
    return true;
  });
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  EXPECT_EQ(result.finish_reason, "length");
  EXPECT_EQ(got, (std::vector<int32_t>{'b', 'c', 'a'}));
  // The reservation was claimed: decoding it again is the worker's 4xx.
  auto again =
      client.Decode(r->reservation_id, 'a', {}, 4, {}, false, [](int32_t) { return true; });
  EXPECT_EQ(again.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client.connections_opened(), 1);
}

TEST(RouterServerTest, DisaggregatedCompletion) {
  FakeWorker p1(WorkerRole::kPrefill), p2(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  Router router({p1.spec(), p2.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 5);
  req["seed"] = 11;
  auto res = router.Post("/v1/completions", req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "tiny");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0]["text"], "Hello");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 3);  // BOS + 2 bytes
  EXPECT_EQ(body["usage"]["completion_tokens"], 5);
  EXPECT_EQ(body["usage"]["total_tokens"], 8);

  // The handoff as the protocol describes it.
  EXPECT_EQ(d.reserve, 1);
  EXPECT_EQ(d.decode, 1);
  EXPECT_EQ(d.release, 0);
  ASSERT_EQ(p1.prefill + p2.prefill, 1);
  Json pre = (p1.prefill == 1 ? p1 : p2).prefill_bodies().at(0);
  EXPECT_EQ(pre["prompt_token_ids"], Json({256, 'h', 'i'}));
  // The decode worker's transports pass through unchanged; the prefill worker picks one.
  EXPECT_FALSE(pre["destination"].contains("transport"));
  EXPECT_EQ(pre["destination"]["transports"], kTransports);
  EXPECT_EQ(pre["destination"]["kv_address"], d.kv_address());
  EXPECT_EQ(pre["sampling"]["temperature"], 0.0);
  EXPECT_EQ(pre["sampling"]["seed"], 11);
  Json dec = d.decode_bodies().at(0);
  EXPECT_EQ(dec["reservation_id"], pre["destination"]["reservation_id"]);
  EXPECT_EQ(dec["first_token"], 'H');
  EXPECT_EQ(dec["max_tokens"], 5);
  EXPECT_EQ(p1.unauthorized + p2.unauthorized + d.unauthorized, 0);
}

TEST(RouterServerTest, StreamedCompletionMatchesTheNonStreamedOne) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 12);
  auto plain = router.Post("/v1/completions", req);
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  auto res = router.Post("/v1/completions", req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  auto events = SseData(res->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(StreamedText(events), Json::parse(plain->body)["choices"][0]["text"]);
  EXPECT_EQ(StreamedText(events), Prefix(kScript, 12));
  const Json& usage_chunk = events[events.size() - 2];
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"]["completion_tokens"], 12);
  const Json& finish_chunk = events[events.size() - 3];
  EXPECT_EQ(finish_chunk["choices"][0]["finish_reason"], "length");
  for (size_t i = 0; i + 3 < events.size(); ++i) {
    EXPECT_EQ(events[i]["object"], "text_completion");
    EXPECT_TRUE(events[i]["choices"][0]["finish_reason"].is_null());
  }
}

TEST(RouterServerTest, ChatCompletionAndStream) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = {{"model", "tiny"},
              {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
              {"max_completion_tokens", 5}};
  auto res = router.Post("/v1/chat/completions", req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hello");
  std::vector<int32_t> want = {256};
  for (int32_t t : Tokens("<|user|>\nHi\n<|assistant|>\n")) want.push_back(t);
  EXPECT_EQ(p.prefill_bodies().at(0)["prompt_token_ids"], Json(want));
  EXPECT_EQ(body["usage"]["prompt_tokens"], static_cast<int>(want.size()));

  req["stream"] = true;
  auto streamed = router.Post("/v1/chat/completions", req);
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200);
  auto events = SseData(streamed->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(StreamedText(events), "Hello");
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(RouterServerTest, AggregatedWorkerGenerates) {
  FakeWorker b(WorkerRole::kBoth);
  Router router({b.spec()});
  ASSERT_TRUE(router.WaitReady());
  auto res = router.Post("/v1/completions", Completion("hi", 7));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(Json::parse(res->body)["choices"][0]["text"], Prefix(kScript, 7));
  EXPECT_EQ(b.generate, 1);
  EXPECT_EQ(b.reserve + b.prefill + b.decode, 0);
  EXPECT_EQ(b.generate_bodies().at(0)["prompt_token_ids"], Json({256, 'h', 'i'}));
  EXPECT_EQ(b.generate_bodies().at(0)["max_tokens"], 7);

  Json req = Completion("hi", 7);
  req["stream"] = true;
  auto streamed = router.Post("/v1/completions", req);
  ASSERT_TRUE(streamed);
  EXPECT_EQ(StreamedText(SseData(streamed->body)), Prefix(kScript, 7));
}

TEST(RouterServerTest, StopStringTrimsAndCancelsTheDecode) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  d.step_delay_ms = 2;
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 200);
  req["stop"] = {"world", "zzz"};
  req["ignore_eos"] = true;
  auto res = router.Post("/v1/completions", req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["text"], "Hello, ");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], 12);  // through the "d" of "world"
  EXPECT_TRUE(WaitUntil([&] { return d.cancelled_streams.load() == 1; }));
  EXPECT_EQ(d.finished_streams, 0);

  req["stream"] = true;
  auto streamed = router.Post("/v1/completions", req);
  ASSERT_TRUE(streamed);
  auto events = SseData(streamed->body);
  EXPECT_EQ(StreamedText(events), "Hello, ");
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "stop");
}

TEST(RouterServerTest, EosFinishesWithStop) {
  std::vector<int32_t> script = Tokens("Hi");
  script.push_back(kEos);
  FakeWorker p(WorkerRole::kPrefill, script), d(WorkerRole::kDecode, script);
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  auto res = router.Post("/v1/completions", Completion("x", 50));
  ASSERT_TRUE(res);
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["text"], "Hi");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
}

TEST(RouterServerTest, FirstTokenEosOrMaxTokensOneSkipDecodeAndRelease) {
  FakeWorker p(WorkerRole::kPrefill, {kEos}), d(WorkerRole::kDecode, {kEos});
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  auto res = router.Post("/v1/completions", Completion("x", 50));
  ASSERT_TRUE(res);
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["text"], "");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], 1);
  EXPECT_EQ(d.decode, 0);
  EXPECT_EQ(d.release, 1);

  Json one = Completion("x", 1);
  one["ignore_eos"] = true;
  res = router.Post("/v1/completions", one);
  ASSERT_TRUE(res);
  EXPECT_EQ(Json::parse(res->body)["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(d.decode, 0);
  EXPECT_EQ(d.release, 2);
}

TEST(RouterServerTest, PrefillFailureReleasesAndRetriesOnAnotherWorker) {
  FakeWorker bad(WorkerRole::kPrefill), good(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  bad.fail_prefill = -1;
  good.outstanding = 1000;  // so the failing worker is the first choice
  Router router({bad.spec(), good.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  ASSERT_TRUE(WaitUntil([&] { return good.info.load() > 0 && bad.info.load() > 0; }));
  auto res = router.Post("/v1/completions", Completion("hi", 4));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(Json::parse(res->body)["choices"][0]["text"], "Hell");
  EXPECT_EQ(bad.prefill, 1);
  EXPECT_EQ(good.prefill, 1);
  EXPECT_EQ(d.reserve, 2);
  ASSERT_EQ(d.released().size(), 1u);
  EXPECT_EQ(d.released()[0], bad.prefill_bodies()[0]["destination"]["reservation_id"]);
  EXPECT_EQ(good.prefill_bodies()[0]["destination"]["reservation_id"],
            d.decode_bodies()[0]["reservation_id"]);
  auto metrics = router.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(MetricValue(metrics->body, "pdpool_router_prefill_retries_total"), 1);
  EXPECT_EQ(MetricValue(metrics->body, "pdpool_router_worker_errors_total",
                        {"role=\"prefill\"", "phase=\"prefill\""}),
            1);

  // The failing worker is out of rotation for a while: the next request goes straight on.
  res = router.Post("/v1/completions", Completion("hi", 4));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(bad.prefill, 1);
  EXPECT_EQ(good.prefill, 2);
}

TEST(RouterServerTest, PrefillFailingEverywhereIs502) {
  FakeWorker p1(WorkerRole::kPrefill), p2(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  p1.fail_prefill = -1;
  p2.fail_prefill = -1;
  Router router({p1.spec(), p2.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  auto res = router.Post("/v1/completions", Completion("hi", 4));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 502) << res->body;
  Json err = Json::parse(res->body);
  EXPECT_EQ(err["error"]["type"], "server_error");
  EXPECT_NE(err["error"]["message"].get<std::string>().find("kv transfer broke"),
            std::string::npos);
  EXPECT_EQ(p1.prefill + p2.prefill, 2);
  EXPECT_EQ(d.release, 2);  // every reservation handed back
  EXPECT_EQ(d.decode, 0);
}

TEST(RouterServerTest, BusyDecodeWorkerIsSkippedNotPunished) {
  FakeWorker p(WorkerRole::kPrefill), busy(WorkerRole::kDecode), other(WorkerRole::kDecode);
  busy.reserve_busy = true;
  other.free_blocks = 100;  // fuller, so the busy one is the first choice
  Router router({p.spec(), busy.spec(), other.spec()});
  ASSERT_TRUE(router.WaitReady());
  ASSERT_TRUE(WaitUntil([&] { return other.info.load() > 0 && busy.info.load() > 0; }));
  for (int i = 1; i <= 2; ++i) {
    auto res = router.Post("/v1/completions", Completion("hi", 3));
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(busy.reserve, i);  // still tried first: a 503 is not a failure
    EXPECT_EQ(other.decode, i);
  }
  other.reserve_busy = true;
  auto res = router.Post("/v1/completions", Completion("hi", 3));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
}

TEST(RouterServerTest, AtCapacityRefusesAtOnceAndStillAnswersProbes) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  d.step_delay_ms = 20;
  RouterServerOptions o;
  o.max_inflight = 1;
  Router router({p.spec(), d.spec()}, o);
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 40);
  req["stream"] = true;
  auto streamed =
      std::async(std::launch::async, [&] { return router.Post("/v1/completions", req); });
  ASSERT_TRUE(WaitUntil([&] { return router.server().inflight() == 1; }));
  auto refused = router.Post("/v1/completions", Completion("hi", 3));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
  EXPECT_NE(Json::parse(refused->body)["error"]["message"].get<std::string>().find("capacity"),
            std::string::npos)
      << refused->body;
  EXPECT_EQ(router.Get("/healthz")->status, 200);
  EXPECT_EQ(router.Get("/readyz")->status, 200);
  auto res = streamed.get();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  ASSERT_TRUE(WaitUntil([&] { return router.server().inflight() == 0; }));
  auto again = router.Post("/v1/completions", Completion("hi", 3));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
}

TEST(RouterServerTest, NoWorkerIs503WithRetryAfter) {
  Router router({});
  auto res = router.Post("/v1/completions", Completion("hi", 3));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
  Json err = Json::parse(res->body);
  EXPECT_FALSE(err["error"]["message"].get<std::string>().empty());
  auto ready = router.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_EQ(router.Get("/healthz")->status, 200);
}

TEST(RouterServerTest, ClientErrorsHaveOpenAiBodies) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  d.max_model_len = 32;
  RouterServerOptions o;
  o.max_body_bytes = 2048;
  Router router({p.spec(), d.spec()}, o);
  ASSERT_TRUE(router.WaitReady());
  ASSERT_TRUE(WaitUntil([&] { return router.pool().MaxModelLen() == 32; }));

  auto expect_error = [](const httplib::Result& res, int status, const std::string& param,
                         const std::string& code = "") {
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, status) << res->body;
    Json err = Json::parse(res->body);
    EXPECT_FALSE(err["error"]["message"].get<std::string>().empty()) << res->body;
    EXPECT_TRUE(err["error"].contains("type")) << res->body;
    if (!param.empty()) {
      EXPECT_EQ(err["error"]["param"], param) << res->body;
    }
    if (!code.empty()) {
      EXPECT_EQ(err["error"]["code"], code) << res->body;
    }
  };
  Json wrong_model = Completion("hi", 3);
  wrong_model["model"] = "gpt-4";
  expect_error(router.Post("/v1/completions", wrong_model), 404, "model", "model_not_found");
  expect_error(router.Post("/v1/completions", Completion("hi", 0)), 400, "max_tokens");
  expect_error(router.Post("/v1/completions", Completion(std::string(40, 'x'), 3)), 400, "prompt",
               "context_length_exceeded");
  expect_error(router.Post("/v1/completions", Completion("hi", 30)), 400, "max_tokens");
  expect_error(router.Client().Post("/v1/completions", "{\"prompt\": ", "application/json"), 400,
               "");
  expect_error(router.Client().Post("/v1/completions", std::string(4096, ' '), "application/json"),
               413, "");
  expect_error(router.Get("/v1/nothing"), 404, "");
  auto wrong_method = router.Get("/v1/completions");
  expect_error(wrong_method, 405, "");
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");
  EXPECT_EQ(p.prefill, 0);  // nothing reached a worker
}

TEST(RouterServerTest, ModelsList) {
  Router router({});
  auto res = router.Get("/v1/models");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  Json body = Json::parse(res->body);
  EXPECT_EQ(body["object"], "list");
  EXPECT_EQ(body["data"][0]["id"], "tiny");
  EXPECT_EQ(body["data"][0]["object"], "model");
}

TEST(RouterServerTest, ApiKeyWhenConfigured) {
  FakeWorker b(WorkerRole::kBoth);
  RouterServerOptions o;
  o.api_key = "client-key";
  Router router({b.spec()}, o);
  ASSERT_TRUE(router.WaitReady());
  auto res = router.Post("/v1/completions", Completion("hi", 2));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(Json::parse(res->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(b.generate, 0);
  httplib::Client client = router.Client();
  client.set_bearer_token_auth("client-key");
  res = client.Post("/v1/completions", Completion("hi", 2).dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(router.Get("/healthz")->status, 200);  // probes need no key
}

TEST(RouterServerTest, MetricsMove) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  ASSERT_EQ(router.Post("/v1/completions", Completion("hi", 5))->status, 200);
  Json stream = Completion("hi", 4);
  stream["stream"] = true;
  ASSERT_EQ(router.Post("/v1/completions", stream)->status, 200);
  ASSERT_EQ(router.Post("/v1/completions", Completion("hi", 0))->status, 400);
  // A stream stays in flight until its handler has finished, which can be just after the
  // client has read the last event.
  ASSERT_TRUE(WaitUntil([&] { return router.server().inflight() == 0; }));
  auto res = router.Get("/metrics");
  ASSERT_TRUE(res);
  const std::string& m = res->body;
  EXPECT_EQ(MetricValue(m, "pdpool_router_requests_total", {"code=\"200\"", "pool=\"test-pool\""}),
            2);
  EXPECT_EQ(MetricValue(m, "pdpool_router_requests_total", {"code=\"400\""}), 1);
  EXPECT_EQ(MetricValue(m, "pdpool_router_ttft_seconds_count"), 2);
  EXPECT_EQ(MetricValue(m, "pdpool_router_tpot_seconds_count"), 2);
  EXPECT_EQ(MetricValue(m, "pdpool_router_e2e_seconds_count"), 2);
  EXPECT_EQ(MetricValue(m, "pdpool_router_ttft_seconds_bucket", {"le=\"60\""}), 2);
  EXPECT_EQ(MetricValue(m, "pdpool_router_prompt_tokens_total"), 6);
  EXPECT_EQ(MetricValue(m, "pdpool_router_generation_tokens_total"), 9);
  EXPECT_EQ(MetricValue(m, "pdpool_router_inflight_requests"), 0);
  EXPECT_EQ(MetricValue(m, "pdpool_router_workers", {"role=\"prefill\"", "state=\"ready\""}), 1);
  EXPECT_EQ(MetricValue(m, "pdpool_router_workers", {"role=\"decode\"", "state=\"ready\""}), 1);
}

TEST(RouterServerTest, ClientDisconnectCancelsTheDecode) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  d.step_delay_ms = 2;
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 1000);
  req["stream"] = true;
  req["ignore_eos"] = true;
  httplib::Request http;
  http.method = "POST";
  http.path = "/v1/completions";
  http.body = req.dump();
  http.set_header("Content-Type", "application/json");
  std::string got;
  http.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    got.append(data, len);
    return got.find("\n\n") == std::string::npos;  // hang up after the first event
  };
  httplib::Client client = router.Client();
  httplib::Response res;
  httplib::Error error;
  client.send(http, res, error);
  EXPECT_NE(got.find("data: "), std::string::npos);
  EXPECT_TRUE(WaitUntil([&] { return d.cancelled_streams.load() == 1; }));
  EXPECT_TRUE(WaitUntil([&] { return router.server().inflight() == 0; }));
  EXPECT_EQ(d.finished_streams, 0);
}

TEST(RouterServerTest, ShutdownLetsInflightStreamsFinishAndRefusesNewOnes) {
  FakeWorker p(WorkerRole::kPrefill), d(WorkerRole::kDecode);
  d.step_delay_ms = 5;
  Router router({p.spec(), d.spec()});
  ASSERT_TRUE(router.WaitReady());
  Json req = Completion("hi", 40);
  req["stream"] = true;
  auto streamed =
      std::async(std::launch::async, [&] { return router.Post("/v1/completions", req); });
  ASSERT_TRUE(WaitUntil([&] { return d.decode.load() == 1; }));
  auto shutdown = std::async(std::launch::async, [&] { router.server().Shutdown(); });
  ASSERT_TRUE(WaitUntil([&] { return !router.server().ready(); }));
  auto refused = router.Post("/v1/completions", Completion("hi", 3));
  if (refused) {
    EXPECT_EQ(refused->status, 503);  // or the listener is already closed
  }
  auto res = streamed.get();
  shutdown.get();
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  auto events = SseData(res->body);
  EXPECT_EQ(StreamedText(events), Prefix(kScript, 40));
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(d.finished_streams, 1);
}

}  // namespace
}  // namespace pdpool::agent
