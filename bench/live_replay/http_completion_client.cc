// HttpCompletionClient: streamed completions over cpp-httplib (see http_completion_client.h).
#include "bench/live_replay/http_completion_client.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>

#include "bench/live_replay/completion_stream.h"
#include "common/json.h"

namespace pdpool::bench::live_replay {
namespace {

constexpr size_t kMaxReason = 100;
constexpr size_t kMaxErrorBody = 4096;

std::chrono::microseconds Micros(double seconds) {
  return std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

void SetTimeouts(httplib::Client& client, double connect_s, double read_s) {
  client.set_connection_timeout(Micros(connect_s));
  client.set_read_timeout(Micros(read_s));
  client.set_write_timeout(Micros(read_s));
}

// One line, at most kMaxReason bytes: it goes into a CSV cell and the live view.
std::string ShortReason(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (text.size() > kMaxReason) text = text.substr(0, kMaxReason - 3) + "...";
  return text;
}

std::string TransportError(httplib::Error error) {
  switch (error) {
    case httplib::Error::Connection:
      return "connection failed";
    case httplib::Error::ConnectionTimeout:
      return "connect timed out";
    case httplib::Error::Read:
      return "read failed or timed out";
    case httplib::Error::Write:
      return "write failed";
    case httplib::Error::Canceled:
      return "interrupted";
    default:
      return httplib::to_string(error);
  }
}

// The OpenAI-style error body's message, else the start of the body.
std::string ErrorBodyMessage(const std::string& body) {
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) {
    if (const Json* e = JsonChild(j, "error"); e != nullptr) {
      const std::string message = JsonStringAt(*e, {"message"});
      if (!message.empty()) return message;
    }
  }
  return body.substr(0, kMaxReason);
}

}  // namespace

StatusOr<RouterAddress> ParseRouterUrl(const std::string& url) {
  size_t scheme_end = url.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") {
    return Status::InvalidArgument("--router must be an http:// or https:// URL, got \"" + url +
                                   "\"");
  }
  const size_t host_start = scheme_end + 3;
  const size_t path_start = url.find('/', host_start);
  RouterAddress a;
  a.origin = url.substr(0, path_start);
  if (a.origin.size() == host_start || a.origin[host_start] == ':') {
    return Status::InvalidArgument("--router has no host: \"" + url + "\"");
  }
  if (path_start != std::string::npos) a.base_path = url.substr(path_start);
  while (!a.base_path.empty() && a.base_path.back() == '/') a.base_path.pop_back();
  return a;
}

StatusOr<std::vector<std::string>> ListModels(const RouterAddress& router, double timeout_s) {
  const std::string url = router.origin + router.base_path + "/v1/models";
  httplib::Client client(router.origin);
  SetTimeouts(client, timeout_s, timeout_s);
  auto r = client.Get(router.base_path + "/v1/models");
  if (!r) return Status::Unavailable("GET " + url + ": " + TransportError(r.error()));
  if (r->status != 200) {
    return Status::Unavailable("GET " + url + ": HTTP " + std::to_string(r->status) + ": " +
                               ErrorBodyMessage(r->body));
  }
  const Json body = Json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  const Json* data = body.is_discarded() ? nullptr : JsonChild(body, "data");
  std::vector<std::string> ids;
  if (data != nullptr && data->is_array()) {
    for (const Json& model : *data) {
      if (std::string id = JsonStringAt(model, {"id"}); !id.empty()) ids.push_back(id);
    }
  }
  if (ids.empty()) {
    return Status::Unavailable("GET " + url +
                               ": no model id in the answer: " + r->body.substr(0, kMaxReason));
  }
  return ids;
}

struct HttpCompletionClient::Impl {
  RouterAddress router;
  HttpCompletionClientOptions options;
  const Clock* clock = nullptr;
  std::atomic<bool> cancelled{false};
  std::mutex mu;
  std::set<httplib::Client*> active;  // guarded by mu: the Sends in progress
};

HttpCompletionClient::HttpCompletionClient(RouterAddress router,
                                           HttpCompletionClientOptions options, const Clock* clock)
    : impl_(std::make_unique<Impl>()) {
  impl_->router = std::move(router);
  impl_->options = options;
  impl_->clock = clock;
}

HttpCompletionClient::~HttpCompletionClient() = default;

void HttpCompletionClient::CancelAll() {
  std::lock_guard lock(impl_->mu);
  impl_->cancelled = true;
  for (httplib::Client* c : impl_->active) c->stop();
}

CompletionResult HttpCompletionClient::Send(const std::string& body) {
  Impl& impl = *impl_;
  CompletionResult result;
  httplib::Client client(impl.router.origin);
  client.set_keep_alive(false);
  client.set_tcp_nodelay(true);
  SetTimeouts(client, impl.options.connect_timeout_s, impl.options.read_timeout_s);
  {
    std::lock_guard lock(impl.mu);
    if (impl.cancelled) {
      result.error = "interrupted";
      result.end = impl.clock->Now();
      return result;
    }
    impl.active.insert(&client);
  }

  int http_status = 0;
  std::string error_body;
  CompletionStream stream;
  httplib::Request req;
  req.method = "POST";
  req.path = impl.router.base_path + "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  // stop() cannot interrupt a connection that is still opening: the flag covers that moment.
  req.response_handler = [&](const httplib::Response& r) {
    http_status = r.status;
    return !impl.cancelled;
  };
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    if (http_status != 200) {
      if (error_body.size() < kMaxErrorBody) error_body.append(data, len);
    } else {
      stream.Feed(std::string_view(data, len), impl.clock->Now());
    }
    return !impl.cancelled;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  const bool sent = client.send(req, res, error);
  result.end = impl.clock->Now();
  {
    std::lock_guard lock(impl.mu);
    impl.active.erase(&client);
  }
  stream.Finish(result.end);
  result.tokens = stream.Tokens();
  result.first_token = stream.first_token();
  result.last_token = stream.last_token();

  if (impl.cancelled && !stream.done()) {
    result.error = "interrupted";
  } else if (!sent) {
    result.error = TransportError(error);
  } else if (http_status != 200) {
    result.error =
        ShortReason("HTTP " + std::to_string(http_status) + ": " + ErrorBodyMessage(error_body));
  } else if (!stream.error().empty()) {
    result.error = ShortReason("stream error: " + stream.error());
  } else if (!stream.done()) {
    result.error = "stream ended before [DONE]";
  } else {
    result.ok = true;
  }
  return result;
}

}  // namespace pdpool::bench::live_replay
