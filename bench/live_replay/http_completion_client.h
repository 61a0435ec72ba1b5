// HttpCompletionClient: CompletionClient over HTTP (cpp-httplib) to a router's OpenAI API, one
// fresh connection per request (no keep-alive: nothing to go stale, and a connect on the same
// rack costs less than a pool's bookkeeping at these rates). Also the router address and the
// /v1/models lookup the replay starts with. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bench/live_replay/completion_client.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::bench::live_replay {

struct RouterAddress {
  std::string origin;     // "http://127.41.3.2:8080"
  std::string base_path;  // "" or a path prefix without the trailing slash ("/pool-a")
};

// "http[s]://host[:port][/prefix]"; errors name --router.
StatusOr<RouterAddress> ParseRouterUrl(const std::string& url);

// GET {router}/v1/models: the served model ids. Errors say what failed (connection, HTTP
// status, body) and name the URL.
StatusOr<std::vector<std::string>> ListModels(const RouterAddress& router, double timeout_s);

struct HttpCompletionClientOptions {
  double connect_timeout_s = 5;
  // Longest the router may stay silent: before the response starts, or between stream chunks.
  double read_timeout_s = 120;
};

class HttpCompletionClient final : public CompletionClient {
 public:
  // `clock` stamps the token times; it must outlive the client.
  HttpCompletionClient(RouterAddress router, HttpCompletionClientOptions options,
                       const Clock* clock);
  ~HttpCompletionClient() override;

  CompletionResult Send(const std::string& body) override;
  void CancelAll() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::bench::live_replay
