// AgentEnv: what agent tests need to run real worker and router processes on loopback: the
// pool token file, free ports, readiness waits, authenticated JSON calls, NDJSON streams and
// /metrics scrapes. Processes stop when the test ends. Not thread-safe; one per test.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/support/child_process.h"

namespace pdpool::testing {

struct HttpResult {
  int status = 0;  // 0: no response (connection failed)
  std::string body;
  Json json;  // parsed body when it is JSON
};

struct Process {
  ChildProcess* child = nullptr;
  int port = 0;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

class AgentEnv {
 public:
  AgentEnv();
  ~AgentEnv();

  const std::string& token() const { return token_; }
  const std::string& token_file() const { return token_file_; }
  std::string BuildPath(const std::string& name) const { return build_dir_ + "/" + name; }
  std::string SourcePath(const std::string& name) const { return source_dir_ + "/" + name; }

  // `pdpool-agent worker --role <role> --backend cpu --model test-tiny --weights dummy:1 ...`
  // plus `extra` (later flags win), on a free port; waits for /readyz.
  Process StartWorker(const std::string& role, std::vector<std::string> extra = {});
  Process StartRouter(std::vector<std::string> args);
  Process Start(const std::string& name, std::vector<std::string> args);
  bool WaitReady(int port, std::chrono::seconds timeout = std::chrono::seconds(60));

  HttpResult Get(int port, const std::string& path, bool with_token = true);
  HttpResult Post(int port, const std::string& path, const Json& body, bool with_token = true);
  // POST and read an NDJSON stream to its end: the parsed lines.
  std::vector<Json> PostStream(int port, const std::string& path, const Json& body);
  // The worker holds no KV: every block free, no reservation, nothing running.
  bool KvIdle(const Process& worker);
  // Value of one series in a /metrics text ("name{labels}"), or -1 when absent.
  static double MetricValue(const std::string& text, const std::string& series);
  // Sum over the series of metric `name` whose labels contain every `label="value"` given.
  static double MetricSum(const std::string& text, const std::string& name,
                          const std::vector<std::string>& labels = {});

  // Polls `predicate` until true or the deadline passes.
  static bool WaitFor(const std::function<bool()>& predicate,
                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Runs a shell command; exit code and combined output.
  static int RunCommand(const std::string& command, std::string* output);

 private:
  std::string build_dir_;
  std::string source_dir_;
  std::string log_dir_;
  std::string token_ = "test-pool-token";
  std::string token_file_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
};

}  // namespace pdpool::testing
