// The router finding its workers through the real API server: pods of the pool (by label,
// Running and Ready) run by a simulated node get 127.x pod IPs; real CPU workers listen on those
// IPs; the router (--pool) discovers them, serves a completion end to end, and drops a worker
// whose pod goes away.
#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>

#include "tests/integration/test_env.h"
#include "tests/support/child_process.h"

namespace pdpool::testing {
namespace {

Json WorkerPod(const std::string& name, const std::string& role, const std::string& node) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata",
           {{"name", name}, {"labels", {{"pdpool.dev/pool", "chat"}, {"pdpool.dev/role", role}}}}},
          {"spec",
           {{"nodeName", node},
            {"containers", {{{"name", "worker"}, {"image", "pdpool/agent:test"}}}}}}};
}

std::string PodIp(TestEnv& env, const std::string& name) {
  std::string ip;
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        auto pod = env.client().Get(kube::kPods, env.ns(), name);
        if (!pod.ok()) return false;
        ip = JsonGet<std::string>(*pod, "/status/podIP", "");
        return !ip.empty() && TestEnv::ConditionStatus(*pod, "Ready") == "True";
      },
      std::chrono::seconds(60)))
      << "pod " << name << " never ran\n"
      << env.ChildLogs();
  return ip;
}

int Completion(int port, std::string* body) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30);
  auto r = c.Post("/v1/completions",
                  R"({"model":"chat","prompt":"hi","max_tokens":6,"ignore_eos":true})",
                  "application/json");
  if (!r) return 0;
  *body = r->body;
  return r->status;
}

TEST(RouterDiscoveryTest, RouterServesThroughWorkersItFindsInTheCluster) {
  TestEnv env;
  env.StartNodes("rdisc", 2, 8, "");
  env.WaitForNodes("rdisc", 2);
  for (const auto& [name, role] :
       {std::pair{"chat-prefill-0", "prefill"}, {"chat-decode-0", "decode"}}) {
    auto created = env.client().Create(kube::kPods, env.ns(), WorkerPod(name, role, "rdisc-0"));
    ASSERT_TRUE(created.ok()) << created.status().ToString();
  }
  const std::string token_file = env.BuildPath("test-logs/" + env.ns() + "/pool-token");
  std::ofstream(token_file) << "cluster-pool-token\n";
  for (const auto& [name, role] :
       {std::pair{"chat-prefill-0", "prefill"}, {"chat-decode-0", "decode"}}) {
    const std::string ip = PodIp(env, name);
    ASSERT_FALSE(ip.empty());
    env.Start(std::string("worker-") + role, env.BuildPath("pdpool-agent"),
              {"worker", "--role", role, "--backend", "cpu", "--model", "test-tiny", "--weights",
               "dummy:1", "--host", ip, "--port", "8000", "--advertise-host", ip,
               "--auth-token-file", token_file});
  }
  const int port = FreeLoopbackPort();
  env.Start("router", env.BuildPath("pdpool-agent"),
            {"router", "--pool", "chat", "--namespace", env.ns(), "--kubeconfig", env.kubeconfig(),
             "--served-model-name", "chat", "--host", "127.0.0.1", "--port", std::to_string(port),
             "--auth-token-file", token_file});
  std::string body;
  EXPECT_TRUE(
      TestEnv::WaitFor([&] { return Completion(port, &body) == 200; }, std::chrono::seconds(60)))
      << body << "\n"
      << env.ChildLogs();
  const Json response = Json::parse(body, nullptr, false);
  EXPECT_EQ(JsonGet<int>(response, "/usage/completion_tokens", -1), 6) << body;

  // The prefill pod goes away: the router stops using its worker and says why.
  ASSERT_TRUE(env.client().Delete(kube::kPods, env.ns(), "chat-prefill-0").ok());
  int status = 0;
  EXPECT_TRUE(TestEnv::WaitFor([&] { return (status = Completion(port, &body)) == 503; },
                               std::chrono::seconds(60)))
      << status << " " << body << "\n"
      << env.ChildLogs();
}

}  // namespace
}  // namespace pdpool::testing
