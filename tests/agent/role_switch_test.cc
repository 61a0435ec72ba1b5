// A worker switching role in place (decode ↔ prefill) as the planner moves it: through the
// admin call while a stream of requests runs through the router (none lost, the same process
// and weights, info and metrics report the new role, new-role work lands on it), through the
// pod's labels file (the kubelet's atomic replacement), and the call's errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/worker/worker_protocol.h"
#include "tests/agent/agent_env.h"

namespace pdpool::testing {
namespace {

namespace fs = std::filesystem;
namespace protocol = agent::protocol;

// Sim workers: each decode step lasts as long as an 8B model's would on an H100, so requests
// stay in flight long enough to be drained.
std::vector<std::string> SimFlags() {
  return {"--backend", "sim", "--model", "llama-3.1-8b", "--gpu", "H100"};
}

Json Completion(int max_tokens) {
  return {{"model", "tiny"},
          {"prompt", "The planner moves a ready worker between prefill and decode."},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"ignore_eos", true}};
}

Json Info(AgentEnv& env, const Process& worker) {
  return env.Get(worker.port, protocol::kInfoPath).json;
}

HttpResult SetRole(AgentEnv& env, const Process& worker, const Json& role, bool token = true) {
  return env.Post(worker.port, protocol::kRolePath, {{protocol::kRoleField, role}}, token);
}

TEST(RoleSwitchTest, DecodeWorkerMovesToPrefillUnderLoadWithoutLosingARequest) {
  AgentEnv env;
  Process prefill = env.StartWorker("prefill", SimFlags());
  Process decode = env.StartWorker("decode", SimFlags());
  Process moved = env.StartWorker("decode", SimFlags());
  Process router = env.StartRouter({"--served-model-name", "tiny", "--prefill", prefill.address(),
                                    "--decode", decode.address() + "," + moved.address()});
  const Json before = Info(env, moved);
  ASSERT_EQ(before.value("role", ""), "decode");
  ASSERT_EQ(before.value(protocol::kPidField, 0), moved.child->pid());
  const std::string loaded_at = before.value(protocol::kWeightsLoadedAtField, "");
  ASSERT_FALSE(loaded_at.empty());

  // A steady stream of requests through the router for the whole test.
  constexpr int kMaxTokens = 120;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<std::string> failures;
  std::atomic<int> completed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        HttpResult r = env.Post(router.port, "/v1/completions", Completion(kMaxTokens), false);
        if (r.status != 200 ||
            r.json.value("usage", Json::object()).value("completion_tokens", 0) != kMaxTokens) {
          std::lock_guard lock(mu);
          failures.push_back(std::to_string(r.status) + " " + r.body);
        }
        ++completed;
      }
    });
  }
  // The worker to move has decode work in flight when the switch begins.
  ASSERT_TRUE(AgentEnv::WaitFor([&] {
    const Json i = Info(env, moved);
    return i.value("running", 0) + i.value("reservations", 0) > 0;
  })) << Info(env, moved).dump();

  HttpResult switched = SetRole(env, moved, "prefill");
  ASSERT_EQ(switched.status, 200) << switched.body;
  EXPECT_EQ(switched.json[protocol::kRoleField], "prefill");
  EXPECT_EQ(switched.json[protocol::kPreviousRoleField], "decode");
  EXPECT_EQ(switched.json[protocol::kRoleChangedField], true);
  EXPECT_GE(switched.json[protocol::kDrainedRequestsField].get<int>(), 1);
  EXPECT_EQ(switched.json[protocol::kDrainCompleteField], true);
  EXPECT_GE(switched.json[protocol::kSwitchSecondsField].get<double>(), 0);

  // Same process, same weights, new role.
  const Json after = Info(env, moved);
  EXPECT_EQ(after.value("role", ""), "prefill");
  EXPECT_TRUE(after[protocol::kRoleSwitchingToField].is_null());
  EXPECT_EQ(after.value(protocol::kRoleSwitchesField, 0), 1);
  EXPECT_EQ(after.value(protocol::kPidField, 0), moved.child->pid());
  EXPECT_EQ(after.value(protocol::kWeightsLoadedAtField, ""), loaded_at);
  EXPECT_EQ(after.value("ready", false), true);
  EXPECT_TRUE(moved.child->Running());
  // Decode work for it now is refused with a 503 (a router that has not polled yet retries
  // elsewhere), not a 400.
  HttpResult reserve = env.Post(moved.port, protocol::kReservePath,
                                {{"request_id", "late"}, {"prompt_tokens", 8}, {"max_tokens", 4}});
  EXPECT_EQ(reserve.status, 503) << reserve.body;
  EXPECT_NE(reserve.json.value("error", "").find("switched role to prefill"), std::string::npos)
      << reserve.body;

  // The router sends it prefill work.
  EXPECT_TRUE(AgentEnv::WaitFor([&] {
    return AgentEnv::MetricValue(env.Get(moved.port, "/metrics", false).body,
                                 "pdpool_worker_prefill_tokens_total{role=\"prefill\"}") > 0;
  })) << env.Get(moved.port, "/metrics", false).body;
  const int completed_at_switch_check = completed.load();
  // A few more requests after that, so the new layout serves while the old one is gone.
  ASSERT_TRUE(AgentEnv::WaitFor([&] { return completed.load() >= completed_at_switch_check + 4; }));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures.front();
  EXPECT_GT(completed.load(), 8);

  const std::string m = env.Get(moved.port, "/metrics", false).body;
  // The decode counters of before the switch are kept, and stopped moving.
  const double decoded =
      AgentEnv::MetricValue(m, "pdpool_worker_decode_tokens_total{role=\"decode\"}");
  EXPECT_GT(decoded, 0);
  EXPECT_EQ(AgentEnv::MetricValue(m, "pdpool_worker_decode_tokens_total{role=\"prefill\"}"), 0);
  EXPECT_GT(AgentEnv::MetricSum(m, "pdpool_worker_requests_total",
                                {"kind=\"prefill\"", "result=\"ok\"", "role=\"prefill\""}),
            0);
  EXPECT_GT(AgentEnv::MetricValue(
                m, "pdpool_worker_kv_transfer_bytes_total{direction=\"send\",role=\"prefill\"}"),
            0);
  EXPECT_EQ(AgentEnv::MetricValue(m, "pdpool_worker_ready{role=\"prefill\"}"), 1);
  EXPECT_EQ(AgentEnv::MetricValue(m, "pdpool_worker_ready{role=\"decode\"}"), -1);
  // Metrics still pass promtool with both roles' series in one registry.
  const std::string file =
      env.BuildPath("agent-test-logs/role-switch-metrics-" + std::to_string(moved.port) + ".txt");
  std::ofstream(file) << m;
  std::string out;
  EXPECT_EQ(AgentEnv::RunCommand("promtool check metrics < " + file, &out), 0) << out;

  // Nothing leaks anywhere.
  for (const Process* p : {&prefill, &decode, &moved}) {
    EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(*p); })) << Info(env, *p).dump();
  }
  // Asking again for the role it has: 200 at once, nothing changes.
  HttpResult again = SetRole(env, moved, "prefill");
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.json[protocol::kRoleChangedField], false);
  EXPECT_EQ(Info(env, moved).value(protocol::kRoleSwitchesField, 0), 1);
}

// Kubelet's atomic writer: <dir>/labels → ..data/labels, ..data → a timestamped directory;
// an update writes a new directory and swaps the ..data symlink by rename.
class KubeletLabelsVolume {
 public:
  explicit KubeletLabelsVolume(fs::path dir) : dir_(std::move(dir)) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  std::string path() const { return (dir_ / "labels").string(); }
  void Write(const std::string& role) {
    const std::string version = "..v" + std::to_string(++versions_);
    fs::create_directories(dir_ / version);
    std::ofstream(dir_ / version / "labels")
        << "app=\"pdpool\"\npdpool.dev/pool=\"p\"\npdpool.dev/role=\"" << role << "\"";
    fs::create_directory_symlink(version, dir_ / "..data_tmp");
    fs::rename(dir_ / "..data_tmp", dir_ / "..data");
    if (!fs::is_symlink(dir_ / "labels")) fs::create_symlink("..data/labels", dir_ / "labels");
  }

 private:
  fs::path dir_;
  int versions_ = 0;
};

TEST(RoleSwitchTest, LabelsFileOverridesTheFlagAndMovesTheWorker) {
  AgentEnv env;
  KubeletLabelsVolume volume(
      env.BuildPath("agent-test-logs/role-labels-" + std::to_string(::getpid())));
  // The pod was moved to prefill and restarted: its args still say decode.
  volume.Write("prefill");
  Process w = env.StartWorker("decode", {"--labels-file", volume.path()});
  const Json start = Info(env, w);
  EXPECT_EQ(start.value("role", ""), "prefill");
  EXPECT_EQ(start.value(protocol::kRoleSwitchesField, -1), 0);
  const std::string loaded_at = start.value(protocol::kWeightsLoadedAtField, "");

  // The planner moves it back: the kubelet swaps the volume.
  volume.Write("decode");
  ASSERT_TRUE(AgentEnv::WaitFor([&] { return Info(env, w).value("role", "") == "decode"; }))
      << Info(env, w).dump();
  EXPECT_EQ(Info(env, w).value(protocol::kRoleSwitchesField, 0), 1);
  HttpResult reserve = env.Post(w.port, protocol::kReservePath,
                                {{"request_id", "r"}, {"prompt_tokens", 8}, {"max_tokens", 4}});
  EXPECT_EQ(reserve.status, 200) << reserve.body;  // it takes decode work now
  EXPECT_EQ(
      env.Post(w.port, protocol::kReleasePath, {{"reservation_id", reserve.json["reservation_id"]}})
          .json["released"],
      true);

  // A plain rename over the file works as well.
  const std::string tmp = volume.path() + ".new";
  std::ofstream(tmp) << "pdpool.dev/role=\"prefill\"\n";
  fs::rename(tmp, volume.path());
  ASSERT_TRUE(AgentEnv::WaitFor([&] { return Info(env, w).value("role", "") == "prefill"; }))
      << Info(env, w).dump();
  const Json end = Info(env, w);
  EXPECT_EQ(end.value(protocol::kRoleSwitchesField, 0), 2);
  EXPECT_EQ(end.value(protocol::kPidField, 0), w.child->pid());
  EXPECT_EQ(end.value(protocol::kWeightsLoadedAtField, ""), loaded_at);
  const std::string m = env.Get(w.port, "/metrics", false).body;
  EXPECT_EQ(AgentEnv::MetricValue(m, "pdpool_worker_ready{role=\"prefill\"}"), 1);
  EXPECT_EQ(AgentEnv::MetricValue(m, "pdpool_worker_ready{role=\"decode\"}"), -1);
}

TEST(RoleSwitchTest, SwitchWaitsForReservationsAndRefusesTheOtherRoleMeanwhile) {
  AgentEnv env;
  Process w = env.StartWorker("decode");
  // A reservation whose prompt is still being prefilled somewhere: the switch waits for it.
  HttpResult held = env.Post(w.port, protocol::kReservePath,
                             {{"request_id", "r"}, {"prompt_tokens", 8}, {"max_tokens", 4}});
  ASSERT_EQ(held.status, 200) << held.body;
  auto first = std::async(std::launch::async, [&] { return SetRole(env, w, "prefill"); });
  ASSERT_TRUE(AgentEnv::WaitFor(
      [&] { return Info(env, w).value(protocol::kRoleSwitchingToField, Json()).is_string(); }));
  const Json during = Info(env, w);
  EXPECT_EQ(during.value("role", ""), "decode");
  EXPECT_EQ(during[protocol::kRoleSwitchingToField], "prefill");
  EXPECT_EQ(env.Get(w.port, "/readyz", false).status, 200);  // not a shutdown
  // New decode work: 503, so the router takes it elsewhere.
  HttpResult reserve = env.Post(w.port, protocol::kReservePath,
                                {{"request_id", "r2"}, {"prompt_tokens", 8}, {"max_tokens", 4}});
  EXPECT_EQ(reserve.status, 503) << reserve.body;
  EXPECT_NE(reserve.json.value("error", "").find("switching role from decode to prefill"),
            std::string::npos)
      << reserve.body;
  // Prefill work: not yet.
  EXPECT_EQ(env.Post(w.port, protocol::kPrefillPath, {{"prompt_token_ids", {1, 2}}}).status, 503);
  // The other role while this switch runs: 409.
  HttpResult conflict = SetRole(env, w, "decode");
  EXPECT_EQ(conflict.status, 409) << conflict.body;
  // The same role: joins (or, if it came late, finds the role already switched).
  auto second = std::async(std::launch::async, [&] { return SetRole(env, w, "prefill"); });

  // The reservation is given back: the drain is complete and the switch happens.
  EXPECT_EQ(
      env.Post(w.port, protocol::kReleasePath, {{"reservation_id", held.json["reservation_id"]}})
          .json["released"],
      true);
  HttpResult done = first.get();
  ASSERT_EQ(done.status, 200) << done.body;
  EXPECT_EQ(done.json[protocol::kRoleChangedField], true);
  EXPECT_EQ(done.json[protocol::kDrainedRequestsField], 1);
  EXPECT_EQ(done.json[protocol::kDrainCompleteField], true);
  HttpResult joined = second.get();
  ASSERT_EQ(joined.status, 200) << joined.body;
  EXPECT_EQ(joined.json[protocol::kRoleField], "prefill");
  EXPECT_EQ(Info(env, w).value("role", ""), "prefill");
  EXPECT_EQ(Info(env, w).value(protocol::kRoleSwitchesField, 0), 1);
}

TEST(RoleSwitchTest, DrainTimeoutSwitchesAnywayAndOldReservationsStayClaimable) {
  AgentEnv env;
  Process w = env.StartWorker("decode", {"--drain-timeout", "1"});
  HttpResult held = env.Post(w.port, protocol::kReservePath,
                             {{"request_id", "r"}, {"prompt_tokens", 8}, {"max_tokens", 4}});
  ASSERT_EQ(held.status, 200) << held.body;
  HttpResult switched = SetRole(env, w, "prefill");
  ASSERT_EQ(switched.status, 200) << switched.body;
  EXPECT_EQ(switched.json[protocol::kDrainCompleteField], false);
  EXPECT_EQ(Info(env, w).value("role", ""), "prefill");
  // The reservation made before the switch is still honoured (here: released; a decode call
  // for it would be served the same way).
  EXPECT_EQ(
      env.Post(w.port, protocol::kReleasePath, {{"reservation_id", held.json["reservation_id"]}})
          .json["released"],
      true);
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(w); }));
}

TEST(RoleSwitchTest, RoleCallNeedsTheTokenAndAValidRole) {
  AgentEnv env;
  Process decode = env.StartWorker("decode");
  Process both = env.StartWorker("both");
  HttpResult no_token = SetRole(env, decode, "prefill", /*token=*/false);
  EXPECT_EQ(no_token.status, 401);
  EXPECT_EQ(Info(env, decode).value("role", ""), "decode");  // and no effect

  for (const Json& bad : {Json("router"), Json("both"), Json(7), Json(nullptr)}) {
    HttpResult r = SetRole(env, decode, bad);
    EXPECT_EQ(r.status, 400) << bad.dump();
    EXPECT_NE(r.json.value("error", "").find("role must be"), std::string::npos) << r.body;
  }
  HttpResult not_json = env.Post(decode.port, protocol::kRolePath, Json::array());
  EXPECT_EQ(not_json.status, 400);

  HttpResult aggregated = SetRole(env, both, "prefill");
  EXPECT_EQ(aggregated.status, 400);
  EXPECT_NE(aggregated.json.value("error", "").find("role both"), std::string::npos)
      << aggregated.body;
  EXPECT_EQ(Info(env, both).value("role", ""), "both");

  HttpResult same = SetRole(env, decode, "decode");
  ASSERT_EQ(same.status, 200) << same.body;
  EXPECT_EQ(same.json[protocol::kRoleChangedField], false);
  EXPECT_EQ(same.json[protocol::kDrainedRequestsField], 0);
  EXPECT_EQ(Info(env, decode).value(protocol::kRoleSwitchesField, -1), 0);
  // A worker that never switched still calls a wrong-role request a client error.
  EXPECT_EQ(env.Post(decode.port, protocol::kPrefillPath, {{"prompt_token_ids", {1, 2}}}).status,
            400);
}

}  // namespace
}  // namespace pdpool::testing
