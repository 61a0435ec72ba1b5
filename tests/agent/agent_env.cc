// AgentEnv: see agent_env.h.
#include "tests/agent/agent_env.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/worker/worker_protocol.h"

namespace pdpool::testing {
namespace {

std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

}  // namespace

AgentEnv::AgentEnv() {
  build_dir_ = Env("PDPOOL_BUILD_DIR", PDPOOL_DEFAULT_BUILD_DIR);
  source_dir_ = Env("PDPOOL_SOURCE_DIR", PDPOOL_DEFAULT_SOURCE_DIR);
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  log_dir_ = build_dir_ + "/agent-test-logs/" +
             (info ? std::string(info->test_suite_name()) + "." + info->name() : "test");
  std::filesystem::remove_all(log_dir_);
  std::filesystem::create_directories(log_dir_);
  token_file_ = log_dir_ + "/pool-token";
  std::ofstream(token_file_) << token_ << "\n";
}

AgentEnv::~AgentEnv() {
  for (auto& c : children_) c->Stop(std::chrono::seconds(10));
}

Process AgentEnv::Start(const std::string& name, std::vector<std::string> args) {
  Process p;
  p.port = FreeLoopbackPort();
  args.push_back("--port");
  args.push_back(std::to_string(p.port));
  std::string error;
  auto child =
      SpawnProcess(name, BuildPath("pdpool-agent"), args, log_dir_ + "/" + name + ".log", &error);
  if (!child) {
    ADD_FAILURE() << error;
    return p;
  }
  p.child = child.get();
  children_.push_back(std::move(child));
  return p;
}

Process AgentEnv::StartWorker(const std::string& role, std::vector<std::string> extra) {
  std::vector<std::string> args = {"worker",   "--role",  role,        "--backend",
                                   "cpu",      "--model", "test-tiny", "--weights",
                                   "dummy:1",  "--host",  "127.0.0.1", "--auth-token-file",
                                   token_file_};
  args.insert(args.end(), extra.begin(), extra.end());
  Process p = Start(role + "-" + std::to_string(children_.size()), args);
  EXPECT_TRUE(WaitReady(p.port)) << "worker " << role
                                 << " not ready; log: " << (p.child ? p.child->log_path() : "");
  return p;
}

Process AgentEnv::StartRouter(std::vector<std::string> args) {
  args.insert(args.begin(), "router");
  args.push_back("--host");
  args.push_back("127.0.0.1");
  args.push_back("--auth-token-file");
  args.push_back(token_file_);
  Process p = Start("router-" + std::to_string(children_.size()), args);
  EXPECT_TRUE(WaitReady(p.port)) << "router not ready; log: "
                                 << (p.child ? p.child->log_path() : "");
  return p;
}

bool AgentEnv::WaitReady(int port, std::chrono::seconds timeout) {
  return WaitFor([&] { return Get(port, "/readyz", false).status == 200; }, timeout);
}

HttpResult AgentEnv::Get(int port, const std::string& path, bool with_token) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2);
  client.set_read_timeout(30);
  httplib::Headers headers;
  if (with_token) headers.emplace("Authorization", "Bearer " + token_);
  HttpResult r;
  auto res = client.Get(path.c_str(), headers);
  if (!res) return r;
  r.status = res->status;
  r.body = res->body;
  r.json = Json::parse(r.body, nullptr, false);
  return r;
}

HttpResult AgentEnv::Post(int port, const std::string& path, const Json& body, bool with_token) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2);
  client.set_read_timeout(60);
  httplib::Headers headers;
  if (with_token) headers.emplace("Authorization", "Bearer " + token_);
  HttpResult r;
  auto res = client.Post(path.c_str(), headers, body.dump(), "application/json");
  if (!res) return r;
  r.status = res->status;
  r.body = res->body;
  r.json = Json::parse(r.body, nullptr, false);
  return r;
}

std::vector<Json> AgentEnv::PostStream(int port, const std::string& path, const Json& body) {
  HttpResult r = Post(port, path, body);
  std::vector<Json> lines;
  EXPECT_EQ(r.status, 200) << r.body;
  std::istringstream in(r.body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(Json::parse(line, nullptr, false));
  }
  return lines;
}

bool AgentEnv::KvIdle(const Process& worker) {
  HttpResult info = Get(worker.port, agent::protocol::kInfoPath);
  return info.status == 200 && info.json["kv_blocks_free"] == info.json["kv_blocks_total"] &&
         info.json["reservations"] == 0 && info.json["running"] == 0;
}

double AgentEnv::MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

double AgentEnv::MetricSum(const std::string& text, const std::string& name,
                           const std::vector<std::string>& labels) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    bool all = true;
    for (const auto& l : labels) all = all && line.find(l) != std::string::npos;
    if (all) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

bool AgentEnv::WaitFor(const std::function<bool()>& predicate, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return predicate();
}

int AgentEnv::RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) output->append(buf.data(), n);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace pdpool::testing
