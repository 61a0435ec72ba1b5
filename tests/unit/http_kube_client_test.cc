// Tests for HttpKubeClient against a tiny plain-HTTP API server on 127.0.0.1 (port 0): the
// requests it sends (paths, query, headers, bodies), how it reads answers (pagination, errors
// as Status codes with the server's message) and watch streams (chunked JSON lines, stop,
// ERROR events, cancel).
//
// cpp-httplib's Request/Response layouts depend on the options libcpp-httplib was built with;
// the test target gets them from `pkg-config cpp-httplib --cflags` (PkgConfig::HTTPLIB).
#include "common/kube/http_kube_client.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace pdpool::kube {
namespace {

using std::chrono::seconds;

// Deadline for things that should happen almost at once; only a hang reaches it.
constexpr auto kWait = seconds(10);

struct SeenRequest {
  std::string method;
  std::string path;    // without the query
  std::string target;  // as sent: path and query, still encoded
  httplib::Params params;
  httplib::Headers headers;
  std::string body;

  std::string Param(const std::string& key) const {
    auto it = params.find(key);
    return it == params.end() ? "<absent>" : it->second;
  }
  bool HasParam(const std::string& key) const { return params.count(key) > 0; }
  std::string Header(const std::string& key) const {
    auto it = headers.find(key);
    return it == headers.end() ? "<absent>" : it->second;
  }
};

// A chunked response body the test scripts: chunks written in order, then either the end of
// the stream or, while `hold` is set, an open stream until Release().
struct Stream {
  std::vector<std::string> chunks;
  bool hold = false;
};

// The tiny API server. Every request is recorded; the responder decides the answer.
class TinyApiServer {
 public:
  using Responder = std::function<void(const SeenRequest&, httplib::Response&)>;

  TinyApiServer() : state_(std::make_shared<State>()) {
    auto handler = [this](const httplib::Request& req, httplib::Response& res) {
      SeenRequest seen{req.method, req.path, req.target, req.params, req.headers, req.body};
      Responder responder;
      {
        std::lock_guard lock(mu_);
        requests_.push_back(seen);
        responder = responder_;
      }
      cv_.notify_all();
      if (responder) {
        responder(seen, res);
      } else {
        RespondJson(res, 200, Json::object());
      }
    };
    server_.Get(".*", handler);
    server_.Post(".*", handler);
    server_.Put(".*", handler);
    server_.Patch(".*", handler);
    server_.Delete(".*", handler);
    // Like the Go API server; otherwise each answer waits on the client's delayed ACK.
    server_.set_tcp_nodelay(true);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the accept loop runs.
    auto deadline = std::chrono::steady_clock::now() + kWait;
    while (!server_.is_running() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
  }

  ~TinyApiServer() {
    ReleaseStreams();
    server_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  void SetResponder(Responder r) {
    std::lock_guard lock(mu_);
    responder_ = std::move(r);
  }
  // Every request gets `status` with `body`.
  void AlwaysRespond(int status, Json body) {
    SetResponder([status, body](const SeenRequest&, httplib::Response& res) {
      RespondJson(res, status, body);
    });
  }
  // Every request gets a 200 chunked stream.
  void AlwaysStream(Stream stream) {
    auto state = state_;
    SetResponder([state, stream](const SeenRequest&, httplib::Response& res) {
      res.status = 200;
      res.set_chunked_content_provider("application/json",
                                       [state, stream](size_t, httplib::DataSink& sink) {
                                         for (const auto& chunk : stream.chunks) {
                                           if (!sink.write(chunk.data(), chunk.size()))
                                             return false;
                                         }
                                         if (stream.hold) {
                                           std::unique_lock lock(state->mu);
                                           ++state->held;
                                           state->cv.notify_all();
                                           state->cv.wait(lock, [&] { return state->released; });
                                         }
                                         sink.done();
                                         return true;
                                       });
    });
  }
  // Ends every held stream (and any held later).
  void ReleaseStreams() {
    std::lock_guard lock(state_->mu);
    state_->released = true;
    state_->cv.notify_all();
  }
  bool WaitForHeldStream() {
    std::unique_lock lock(state_->mu);
    return state_->cv.wait_for(lock, kWait, [&] { return state_->held > 0; });
  }

  static void RespondJson(httplib::Response& res, int status, const Json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  }

  std::vector<SeenRequest> Requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  SeenRequest Last() {
    std::lock_guard lock(mu_);
    return requests_.empty() ? SeenRequest{} : requests_.back();
  }

 private:
  // Shared with stream providers, which run on the server's worker threads.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    int held = 0;
    bool released = false;
  };

  httplib::Server server_;
  std::shared_ptr<State> state_;
  std::thread thread_;
  int port_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SeenRequest> requests_;
  Responder responder_;
};

// metav1.Status, as the API server answers errors.
Json StatusBody(int code, const std::string& reason, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", Json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", reason},
          {"code", code}};
}

Json Object(const std::string& name, const std::string& ns = "ns") {
  Json md = {{"name", name}};
  if (!ns.empty()) md["namespace"] = ns;
  return {{"metadata", md}};
}

std::string Line(const std::string& type, const Json& object) {
  return Json{{"type", type}, {"object", object}}.dump() + "\n";
}

class HttpKubeClientTest : public ::testing::Test {
 protected:
  std::unique_ptr<KubeClient> NewClient(KubeConfig config) {
    auto client = NewHttpKubeClient(config);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }
  KubeConfig Config() {
    KubeConfig c;
    c.server = server_.url();
    c.token = "t";
    return c;
  }

  // Declared first: destroyed after the client, whose idle connections close first.
  TinyApiServer server_;
  std::unique_ptr<KubeClient> client_ = NewClient(Config());
};

// Runs a watch on its own thread and collects the events.
class WatchRun {
 public:
  WatchRun(KubeClient* client, const ResourceType& type, std::string ns, WatchOptions options,
           std::function<bool(const WatchEvent&, size_t index)> on_event = nullptr,
           CancelToken* cancel = nullptr)
      : cancel_(cancel ? cancel : &own_cancel_),
        result_(std::async(std::launch::async, [=, this, &type] {
          return client->Watch(
              type, ns, options,
              [this, on_event](const WatchEvent& ev) {
                size_t index;
                {
                  std::lock_guard lock(mu_);
                  events_.push_back(ev);
                  index = events_.size() - 1;
                  cv_.notify_all();
                }
                return on_event ? on_event(ev, index) : true;
              },
              cancel_);
        })) {}
  // A watch still running (a failed test) is cancelled so the test can end.
  ~WatchRun() { cancel_->Cancel(); }

  // The watch's result, or nullopt if it has not returned by the deadline.
  std::optional<Status> Result() {
    if (result_.wait_for(kWait) != std::future_status::ready) return std::nullopt;
    if (!done_) {
      final_ = result_.get();
      done_ = true;
    }
    return final_;
  }
  bool WaitForEvents(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return events_.size() >= n; });
  }
  std::vector<WatchEvent> Events() {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  CancelToken own_cancel_;
  CancelToken* cancel_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
  bool done_ = false;
  Status final_;
  std::future<Status> result_;
};

TEST_F(HttpKubeClientTest, SendsTheBearerTokenOnEveryRequest) {
  ASSERT_TRUE(client_->Get(kPods, "ns", "p").ok());
  ASSERT_TRUE(client_->List(kPods, "ns").ok());
  ASSERT_TRUE(client_->Delete(kPods, "ns", "p").ok());
  auto requests = server_.Requests();
  ASSERT_EQ(requests.size(), 3u);
  for (const auto& r : requests) {
    EXPECT_EQ(r.Header("Authorization"), "Bearer t") << r.method << " " << r.path;
    EXPECT_EQ(r.Header("Accept"), "application/json");
  }
}

TEST_F(HttpKubeClientTest, ReadsARotatedTokenFileOnEachRequest) {
  auto dir = std::filesystem::temp_directory_path() /
             ("pdpool-token-" + std::to_string(::getpid()) + "-" + std::to_string(server_.port()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "token").string();
  std::ofstream(path) << "first\n";
  KubeConfig config = Config();
  config.token = "";
  config.token_file = path;
  auto client = NewClient(config);
  ASSERT_TRUE(client->Get(kPods, "ns", "p").ok());
  EXPECT_EQ(server_.Last().Header("Authorization"), "Bearer first");
  std::ofstream(path, std::ios::trunc) << "second";
  ASSERT_TRUE(client->Get(kPods, "ns", "p").ok());
  EXPECT_EQ(server_.Last().Header("Authorization"), "Bearer second");
  std::filesystem::remove_all(dir);
}

TEST_F(HttpKubeClientTest, NoTokenMeansNoAuthorizationHeader) {
  KubeConfig config = Config();
  config.token = "";
  auto client = NewClient(config);
  ASSERT_TRUE(client->Get(kPods, "ns", "p").ok());
  EXPECT_EQ(server_.Last().Header("Authorization"), "<absent>");
}

TEST_F(HttpKubeClientTest, PathsForCoreGroupedNamespacedAndClusterScopedTypes) {
  const ResourceType kClusterRoles{"rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                                   false};
  struct Case {
    std::function<Status()> call;
    std::string method, path;
  };
  Json dep = Object("d");
  Json pool = Object("pool");
  std::vector<Case> cases = {
      {[&] { return client_->Get(kPods, "ns", "p").status(); }, "GET",
       "/api/v1/namespaces/ns/pods/p"},
      {[&] { return client_->Get(kReplicaSets, "ns", "r").status(); }, "GET",
       "/apis/apps/v1/namespaces/ns/replicasets/r"},
      {[&] { return client_->Get(kNodes, "", "n1").status(); }, "GET", "/api/v1/nodes/n1"},
      {[&] { return client_->Get(kClusterRoles, "", "admin").status(); }, "GET",
       "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"},
      {[&] { return client_->Get(kLeases, "ns", "l").status(); }, "GET",
       "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"},
      {[&] { return client_->Get(kInferencePools, "ns", "pool").status(); }, "GET",
       "/apis/pdpool.dev/v1alpha1/namespaces/ns/inferencepools/pool"},
      {[&] { return client_->List(kReplicaSets, "").status(); }, "GET",
       "/apis/apps/v1/replicasets"},
      {[&] { return client_->List(kPods, "ns").status(); }, "GET", "/api/v1/namespaces/ns/pods"},
      {[&] { return client_->List(kNodes, "").status(); }, "GET", "/api/v1/nodes"},
      {[&] { return client_->Create(kServices, "ns", Object("s")).status(); }, "POST",
       "/api/v1/namespaces/ns/services"},
      {[&] { return client_->Create(kNamespaces, "", Object("team", "")).status(); }, "POST",
       "/api/v1/namespaces"},
      {[&] { return client_->Update(kDeployments, dep).status(); }, "PUT",
       "/apis/apps/v1/namespaces/ns/deployments/d"},
      {[&] { return client_->UpdateStatus(kInferencePools, pool).status(); }, "PUT",
       "/apis/pdpool.dev/v1alpha1/namespaces/ns/inferencepools/pool/status"},
      {[&] {
         PatchOptions o;
         o.subresource = "status";
         return client_->Patch(kInferencePools, "ns", "pool", PatchType::kMerge, Json::object(), o)
             .status();
       },
       "PATCH", "/apis/pdpool.dev/v1alpha1/namespaces/ns/inferencepools/pool/status"},
      {[&] { return client_->Delete(kPods, "ns", "p"); }, "DELETE", "/api/v1/namespaces/ns/pods/p"},
      {[&] { return client_->Delete(kNodes, "", "n1"); }, "DELETE", "/api/v1/nodes/n1"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.method + " " + c.path);
    Status s = c.call();
    ASSERT_TRUE(s.ok()) << s.ToString();
    SeenRequest r = server_.Last();
    EXPECT_EQ(r.method, c.method);
    EXPECT_EQ(r.path, c.path);
  }
}

TEST_F(HttpKubeClientTest, ReturnsTheServersObjectAndSendsObjectsAsJson) {
  Json stored = {{"apiVersion", "v1"},
                 {"kind", "Service"},
                 {"metadata", {{"name", "s"}, {"namespace", "ns"}, {"resourceVersion", "42"}}},
                 {"spec", {{"clusterIP", "10.0.0.7"}}}};
  server_.AlwaysRespond(201, stored);
  Json sent = Object("s");
  sent["spec"] = {{"ports", Json::array({{{"port", 80}}})}};
  auto created = client_->Create(kServices, "ns", sent);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(*created, stored);
  SeenRequest r = server_.Last();
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  EXPECT_EQ(Json::parse(r.body), sent);
}

TEST_F(HttpKubeClientTest, ListFollowsContinueTokensAndFillsInKindAndApiVersion) {
  // A real token is opaque base64: '+', '/' and '=' must survive the query string.
  const std::string token2 = "eyJ2Ijoi+bWV0/YS5r==";
  server_.SetResponder([&](const SeenRequest& req, httplib::Response& res) {
    const std::string cont = req.HasParam("continue") ? req.Param("continue") : "";
    Json page;
    if (cont.empty()) {
      page = {{"metadata", {{"resourceVersion", "10"}, {"continue", "tok1"}}},
              {"items", {Object("a"), Object("b")}}};
    } else if (cont == "tok1") {
      page = {{"metadata", {{"resourceVersion", "10"}, {"continue", token2}}},
              {"items", {Object("c"), Object("d")}}};
    } else if (cont == token2) {
      page = {{"metadata", {{"resourceVersion", "10"}}}, {"items", {Object("e")}}};
    } else {
      TinyApiServer::RespondJson(res, 410, StatusBody(410, "Expired", "bad continue " + cont));
      return;
    }
    page["kind"] = "PodList";
    page["apiVersion"] = "v1";
    TinyApiServer::RespondJson(res, 200, page);
  });

  auto list = client_->List(kPods, "ns");
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  std::vector<std::string> names;
  for (const auto& item : (*list)["items"]) {
    names.push_back(item["metadata"]["name"]);
    EXPECT_EQ(item.value("kind", ""), "Pod");
    EXPECT_EQ(item.value("apiVersion", ""), "v1");
  }
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(JsonGet<std::string>(*list, "/metadata/resourceVersion", ""), "10");
  EXPECT_EQ(JsonGet<std::string>(*list, "/metadata/continue", ""), "")
      << "a complete list must not look like a partial one";

  auto requests = server_.Requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_FALSE(requests[0].HasParam("continue"));
  EXPECT_EQ(requests[1].Param("continue"), "tok1");
  EXPECT_EQ(requests[2].Param("continue"), token2);
  for (const auto& r : requests) EXPECT_TRUE(r.HasParam("limit")) << "pages must be bounded";
}

TEST_F(HttpKubeClientTest, ListWithALimitReturnsOnePageAndItsContinueToken) {
  server_.AlwaysRespond(200, {{"metadata", {{"resourceVersion", "10"}, {"continue", "tok1"}}},
                              {"items", {Object("a"), Object("b")}}});
  ListOptions o;
  o.limit = 2;
  auto list = client_->List(kPods, "ns", o);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ((*list)["items"].size(), 2u);
  EXPECT_EQ(JsonGet<std::string>(*list, "/metadata/continue", ""), "tok1");
  ASSERT_EQ(server_.Requests().size(), 1u);
  EXPECT_EQ(server_.Last().Param("limit"), "2");
}

TEST_F(HttpKubeClientTest, SelectorsAreUrlEncoded) {
  ListOptions o;
  o.label_selector = "app in (web, api),tier!=db,!canary";
  o.field_selector = "spec.nodeName=node-1,status.phase!=Failed";
  ASSERT_TRUE(client_->List(kPods, "ns", o).ok());
  SeenRequest r = server_.Last();
  EXPECT_EQ(r.Param("labelSelector"), o.label_selector);
  EXPECT_EQ(r.Param("fieldSelector"), o.field_selector);
  EXPECT_EQ(r.target.find(' '), std::string::npos) << r.target;
  EXPECT_EQ(r.target.find("(web"), std::string::npos) << r.target;
  EXPECT_EQ(r.target.find("!=db"), std::string::npos) << r.target;
}

struct ErrorCase {
  int http;
  std::string reason;
  StatusCode code;
};

TEST_F(HttpKubeClientTest, ErrorResponsesMapToStatusCodesWithTheServersMessage) {
  const std::vector<ErrorCase> cases = {
      {404, "NotFound", StatusCode::kNotFound},
      {409, "AlreadyExists", StatusCode::kAlreadyExists},
      {409, "Conflict", StatusCode::kConflict},
      {410, "Expired", StatusCode::kGone},
      {422, "Invalid", StatusCode::kInvalidArgument},
      {400, "BadRequest", StatusCode::kInvalidArgument},
      {401, "Unauthorized", StatusCode::kUnauthorized},
      {403, "Forbidden", StatusCode::kUnauthorized},
      {429, "TooManyRequests", StatusCode::kUnavailable},
      {500, "InternalError", StatusCode::kUnavailable},
      {503, "ServiceUnavailable", StatusCode::kUnavailable},
      {504, "Timeout", StatusCode::kDeadlineExceeded},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::to_string(c.http) + " " + c.reason);
    const std::string message = "message for " + c.reason + " from the server";
    server_.AlwaysRespond(c.http, StatusBody(c.http, c.reason, message));
    Status get = client_->Get(kPods, "ns", "p").status();
    EXPECT_EQ(get.code(), c.code) << get.ToString();
    EXPECT_NE(get.message().find(message), std::string::npos) << get.ToString();
    // The same mapping for writes and deletes.
    EXPECT_EQ(client_->Create(kPods, "ns", Object("p")).status().code(), c.code);
    EXPECT_EQ(client_->Update(kPods, Object("p")).status().code(), c.code);
    EXPECT_EQ(client_->Delete(kPods, "ns", "p").code(), c.code);
  }
}

TEST_F(HttpKubeClientTest, ErrorWithoutAStatusBodyKeepsTheBodyText) {
  server_.SetResponder([](const SeenRequest&, httplib::Response& res) {
    res.status = 502;
    res.set_content("upstream connect error", "text/plain");
  });
  Status s = client_->Get(kPods, "ns", "p").status();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("upstream connect error"), std::string::npos) << s.ToString();
}

TEST_F(HttpKubeClientTest, ConnectionRefusedIsUnavailable) {
  // A port that was free a moment ago and that nothing listens on.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  KubeConfig config = Config();
  config.server = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  auto client = NewClient(config);
  Status s = client->Get(kPods, "ns", "p").status();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  CancelToken cancel;
  Status w = client->Watch(
      kPods, "ns", {}, [](const WatchEvent&) { return true; }, &cancel);
  EXPECT_EQ(w.code(), StatusCode::kUnavailable) << w.ToString();
}

TEST_F(HttpKubeClientTest, ServerAddressMustBeHttpOrHttps) {
  for (const std::string server : {"", "ftp://example.com/"}) {
    KubeConfig config;
    config.server = server;
    auto client = NewHttpKubeClient(config);
    EXPECT_FALSE(client.ok()) << "server \"" << server << "\" was accepted";
    if (!client.ok()) {
      EXPECT_EQ(client.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST_F(HttpKubeClientTest, PatchContentTypesFieldManagerAndForce) {
  struct Case {
    PatchType type;
    bool force;
    std::string content_type;
    bool expect_force;
  };
  const std::vector<Case> cases = {
      {PatchType::kMerge, false, "application/merge-patch+json", false},
      {PatchType::kJson, false, "application/json-patch+json", false},
      {PatchType::kStrategic, false, "application/strategic-merge-patch+json", false},
      {PatchType::kApply, false, "application/apply-patch+yaml", false},
      {PatchType::kApply, true, "application/apply-patch+yaml", true},
      // The server refuses force on anything but apply.
      {PatchType::kMerge, true, "application/merge-patch+json", false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.content_type + (c.force ? " force" : ""));
    Json patch = c.type == PatchType::kJson
                     ? Json::array({{{"op", "replace"}, {"path", "/spec/replicas"}, {"value", 3}}})
                     : Json{{"spec", {{"replicas", 3}}}};
    PatchOptions o;
    o.field_manager = "pdpool-test";
    o.force = c.force;
    ASSERT_TRUE(client_->Patch(kDeployments, "ns", "d", c.type, patch, o).ok());
    SeenRequest r = server_.Last();
    EXPECT_EQ(r.method, "PATCH");
    EXPECT_EQ(r.path, "/apis/apps/v1/namespaces/ns/deployments/d");
    EXPECT_EQ(r.Header("Content-Type"), c.content_type);
    EXPECT_EQ(r.Param("fieldManager"), "pdpool-test");
    if (c.expect_force) {
      EXPECT_EQ(r.Param("force"), "true");
    } else {
      EXPECT_FALSE(r.HasParam("force"));
    }
    EXPECT_EQ(Json::parse(r.body), patch);
  }
}

TEST_F(HttpKubeClientTest, DeleteSendsPropagationPolicyPreconditionsAndGracePeriod) {
  DeleteOptions o;
  o.propagation_policy = "Foreground";
  o.precondition_uid = "uid-123";
  o.grace_period_seconds = 0;
  ASSERT_TRUE(client_->Delete(kReplicaSets, "ns", "r", o).ok());
  SeenRequest r = server_.Last();
  EXPECT_EQ(r.method, "DELETE");
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  Json body = Json::parse(r.body);
  EXPECT_EQ(body.value("kind", ""), "DeleteOptions");
  EXPECT_EQ(body.value("apiVersion", ""), "v1");
  EXPECT_EQ(body.value("propagationPolicy", ""), "Foreground");
  EXPECT_EQ(JsonGet<std::string>(body, "/preconditions/uid", ""), "uid-123");
  EXPECT_EQ(JsonGet<int64_t>(body, "/gracePeriodSeconds", -1), 0);

  ASSERT_TRUE(client_->Delete(kReplicaSets, "ns", "r").ok());
  Json plain = Json::parse(server_.Last().body);
  EXPECT_FALSE(plain.contains("propagationPolicy"));
  EXPECT_FALSE(plain.contains("preconditions"));
  EXPECT_FALSE(plain.contains("gracePeriodSeconds"));
}

TEST_F(HttpKubeClientTest, WatchParsesAChunkedStreamOfJsonLines) {
  const std::string added = Line("ADDED", Object("a"));
  const std::string modified =
      Line("MODIFIED", Json{{"metadata", {{"name", "a"}, {"resourceVersion", "5"}}}});
  const std::string bookmark =
      Line("BOOKMARK", Json{{"kind", "Pod"}, {"metadata", {{"resourceVersion", "7"}}}});
  const std::string deleted = Line("DELETED", Object("a"));
  // Lines split across chunks and several lines in one chunk.
  Stream stream;
  stream.chunks = {added.substr(0, 10), added.substr(10) + modified.substr(0, 5),
                   modified.substr(5) + bookmark + deleted};
  server_.AlwaysStream(stream);

  WatchOptions o;
  o.resource_version = "3";
  o.label_selector = "app=web";
  o.timeout_seconds = 60;
  WatchRun run(client_.get(), kPods, "ns", o);
  auto result = run.Result();
  ASSERT_TRUE(result.has_value()) << "the watch did not end with the stream";
  EXPECT_TRUE(result->ok()) << result->ToString();
  auto events = run.Events();
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].type, "ADDED");
  EXPECT_EQ(events[0].object, Object("a"));
  EXPECT_EQ(events[1].type, "MODIFIED");
  EXPECT_EQ(JsonGet<std::string>(events[1].object, "/metadata/resourceVersion", ""), "5");
  EXPECT_EQ(events[2].type, "BOOKMARK");
  EXPECT_EQ(JsonGet<std::string>(events[2].object, "/metadata/resourceVersion", ""), "7");
  EXPECT_EQ(events[3].type, "DELETED");

  SeenRequest r = server_.Last();
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.path, "/api/v1/namespaces/ns/pods");
  EXPECT_EQ(r.Param("watch"), "true");
  EXPECT_EQ(r.Param("resourceVersion"), "3");
  EXPECT_EQ(r.Param("labelSelector"), "app=web");
  EXPECT_EQ(r.Param("allowWatchBookmarks"), "true");
  EXPECT_EQ(r.Param("timeoutSeconds"), "60");
  EXPECT_EQ(r.Header("Authorization"), "Bearer t");
}

TEST_F(HttpKubeClientTest, WatchStopsWhenTheCallbackReturnsFalse) {
  Stream stream;
  stream.chunks = {Line("ADDED", Object("a")) + Line("ADDED", Object("b")) +
                   Line("ADDED", Object("c"))};
  stream.hold = true;  // only the callback can end this watch
  server_.AlwaysStream(stream);
  WatchRun run(client_.get(), kPods, "ns", {},
               [](const WatchEvent&, size_t index) { return index < 1; });
  auto result = run.Result();
  ASSERT_TRUE(result.has_value()) << "the watch ignored the callback's false";
  EXPECT_TRUE(result->ok()) << result->ToString();
  EXPECT_EQ(run.Events().size(), 2u);
}

TEST_F(HttpKubeClientTest, WatchErrorEventWithCode410IsGone) {
  Stream stream;
  stream.chunks = {Line("ADDED", Object("a")) +
                   Line("ERROR", StatusBody(410, "Expired", "too old resource version: 1 (99)"))};
  stream.hold = true;
  server_.AlwaysStream(stream);
  WatchOptions o;
  o.resource_version = "1";
  WatchRun run(client_.get(), kPods, "ns", o);
  auto result = run.Result();
  ASSERT_TRUE(result.has_value()) << "the watch kept reading after an ERROR event";
  EXPECT_TRUE(result->IsGone()) << result->ToString();
  EXPECT_NE(result->message().find("too old resource version"), std::string::npos);
  auto events = run.Events();
  ASSERT_EQ(events.size(), 1u) << "ERROR events are not handed to the callback";
  EXPECT_EQ(events[0].type, "ADDED");
}

TEST_F(HttpKubeClientTest, WatchRefusedWith410IsGone) {
  server_.AlwaysRespond(410, StatusBody(410, "Expired", "too old resource version: 1 (99)"));
  WatchRun run(client_.get(), kPods, "ns", {});
  auto result = run.Result();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->IsGone()) << result->ToString();
  EXPECT_NE(result->message().find("too old resource version"), std::string::npos);
  EXPECT_TRUE(run.Events().empty());
}

TEST_F(HttpKubeClientTest, WatchReturnsCancelledPromptlyWhileTheServerHoldsTheStream) {
  Stream stream;
  stream.chunks = {Line("ADDED", Object("a"))};
  stream.hold = true;
  server_.AlwaysStream(stream);
  CancelToken cancel;
  WatchRun run(client_.get(), kPods, "ns", {}, nullptr, &cancel);
  ASSERT_TRUE(run.WaitForEvents(1));
  ASSERT_TRUE(server_.WaitForHeldStream());
  cancel.Cancel();
  auto result = run.Result();
  ASSERT_TRUE(result.has_value()) << "cancel did not end a watch the server held open";
  EXPECT_EQ(result->code(), StatusCode::kCancelled) << result->ToString();
}

TEST_F(HttpKubeClientTest, WatchWithAnAlreadyCancelledTokenReturnsCancelled) {
  // An informer may be cancelled between its loop's check and the Watch call.
  Stream stream;
  stream.hold = true;
  server_.AlwaysStream(stream);
  CancelToken cancel;
  cancel.Cancel();
  WatchRun run(client_.get(), kPods, "ns", {}, nullptr, &cancel);
  auto result = run.Result();
  if (!result.has_value()) server_.ReleaseStreams();  // let the stuck watch end
  ASSERT_TRUE(result.has_value()) << "a watch started with a cancelled token blocked";
  EXPECT_EQ(result->code(), StatusCode::kCancelled) << result->ToString();
}

}  // namespace
}  // namespace pdpool::kube
