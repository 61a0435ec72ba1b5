// The node agent running pods as local processes (--pod-runner process) against the real
// control plane: a worker pod shaped like the controller's (pool-token Secret mounted at
// /var/run/pdpool/token, readinessProbe httpGet /readyz on port `http`, POD_IP from the downward
// API) becomes Running and Ready, serves /healthz on its pod IP, sees its own mounts (the pool
// token, the service-account token that works as in-cluster config, a downward-API labels file
// that follows a relabel), stops on SIGTERM when deleted, and goes away with the agent. A
// container that crashes is restarted with a growing restartCount; one whose image the node
// cannot have waits with ErrImageNeverPull. Needs root (containers get mount namespaces).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "tests/integration/test_env.h"

namespace pdpool::testing {
namespace {

namespace fs = std::filesystem;

constexpr char kPoolToken[] = "process-runner-pool-token";

int RandomIpPrefix() {
  std::mt19937 rng(std::random_device{}());
  return 100 + static_cast<int>(rng() % 150);
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json FieldRefEnv(const char* name, const char* path) {
  return {{"name", name}, {"valueFrom", {{"fieldRef", {{"fieldPath", path}}}}}};
}

// What controller/desired_state.cc's worker template makes, pinned to `node`, with the sim
// backend, listening on its pod IP, and a downward-API labels volume.
Json WorkerPod(const std::string& name, const std::string& node) {
  auto http_probe = [](const char* path, int period, int failures) {
    return Json{{"httpGet", {{"path", path}, {"port", "http"}}},
                {"periodSeconds", period},
                {"failureThreshold", failures}};
  };
  Json container = {
      {"name", "worker"},
      {"image", "ghcr.io/pdpool/agent:0.1.0"},
      {"command", Json::array({"pdpool-agent"})},
      {"args", Json::array({"worker", "--role=both", "--backend=sim", "--model=test-tiny",
                            "--weights=dummy:1", "--port=8000", "--host=$(POD_IP)",
                            "--auth-token-file=/var/run/pdpool/token/token"})},
      {"env", Json::array({FieldRefEnv("POD_NAME", "metadata.name"),
                           FieldRefEnv("POD_NAMESPACE", "metadata.namespace"),
                           FieldRefEnv("POD_IP", "status.podIP")})},
      {"ports", Json::array({{{"name", "http"}, {"containerPort", 8000}, {"protocol", "TCP"}}})},
      {"readinessProbe", http_probe("/readyz", 1, 3)},
      {"livenessProbe", http_probe("/healthz", 10, 3)},
      {"startupProbe", http_probe("/healthz", 1, 120)},
      {"volumeMounts",
       Json::array(
           {{{"name", "pool-token"}, {"mountPath", "/var/run/pdpool/token"}, {"readOnly", true}},
            {{"name", "podinfo"}, {"mountPath", "/var/run/pdpool/podinfo"}}})},
  };
  return {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata",
       {{"name", name},
        {"labels",
         {{"app.kubernetes.io/name", "pdpool-worker"},
          {"pdpool.dev/pool", "chat"},
          {"pdpool.dev/role", "prefill"}}}}},
      {"spec",
       {{"nodeName", node},
        // Long, so a pod that only went away at SIGKILL time would fail the deletion check.
        {"terminationGracePeriodSeconds", 600},
        {"containers", Json::array({container})},
        {"volumes",
         Json::array({{{"name", "pool-token"},
                       {"secret", {{"secretName", "chat-token"}, {"defaultMode", 0440}}}},
                      {{"name", "podinfo"},
                       {"downwardAPI",
                        {{"items", Json::array({{{"path", "labels"},
                                                 {"fieldRef",
                                                  {{"fieldPath", "metadata.labels"}}}}})}}}}})}}}};
}

// Creates `pod`, retrying while the namespace's default ServiceAccount (and its token, which
// the ServiceAccount admission plugin of Kubernetes 1.20 mounts into every pod) is not there.
Json CreatePod(TestEnv& env, const Json& pod) {
  Json created;
  std::string last_error;
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        auto r = env.client().Create(kube::kPods, env.ns(), pod);
        if (!r.ok()) last_error = r.status().ToString();
        if (r.ok()) created = *r;
        return r.ok();
      },
      std::chrono::seconds(60)))
      << last_error;
  return created;
}

void CreatePoolTokenSecret(TestEnv& env) {
  Json secret = {{"apiVersion", "v1"},
                 {"kind", "Secret"},
                 {"metadata", {{"name", "chat-token"}}},
                 {"type", "Opaque"},
                 {"stringData", {{"token", kPoolToken}}}};
  auto r = env.client().Create(kube::kSecrets, env.ns(), secret);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
}

Json GetPod(TestEnv& env, const std::string& name) {
  auto pod = env.client().Get(kube::kPods, env.ns(), name);
  return pod.ok() ? *pod : Json();
}

// The pid of the process whose environment says it is container `pod` of namespace `ns`.
pid_t FindContainerPid(const std::string& ns, const std::string& pod) {
  const std::string want_ns = "POD_NAMESPACE=" + ns;
  const std::string want_name = "POD_NAME=" + pod;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string environ = ReadText(entry.path().string() + "/environ");
    bool has_ns = false, has_name = false;
    std::stringstream ss(environ);
    std::string var;
    while (std::getline(ss, var, '\0')) {
      has_ns = has_ns || var == want_ns;
      has_name = has_name || var == want_name;
    }
    if (has_ns && has_name) return static_cast<pid_t>(std::stoi(name));
  }
  return 0;
}

std::string EnvironValue(pid_t pid, const std::string& key) {
  std::stringstream ss(ReadText("/proc/" + std::to_string(pid) + "/environ"));
  std::string var;
  while (std::getline(ss, var, '\0')) {
    if (var.starts_with(key + "=")) return var.substr(key.size() + 1);
  }
  return "";
}

// Gone: no such process, or a zombie nobody has reaped yet.
bool ProcessGone(pid_t pid) {
  std::string stat = ReadText("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

// A file as the container sees it: `path` resolved in its mount namespace, through
// /proc/<pid>/root, with absolute symlinks (/var/run -> /run) kept inside it (RESOLVE_IN_ROOT).
std::string ContainerFile(pid_t pid, const std::string& path) {
  const int root =
      ::open(("/proc/" + std::to_string(pid) + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return "";
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT;
  const std::string relative = path.substr(path.find_first_not_of('/'));
  const int fd = static_cast<int>(::syscall(SYS_openat2, root, relative.c_str(), &how, sizeof how));
  ::close(root);
  if (fd < 0) return "";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

const Json* ContainerStatus(const Json& pod) {
  const Json* statuses = JsonPath(pod, {"status", "containerStatuses"});
  if (statuses == nullptr || !statuses->is_array() || statuses->empty()) return nullptr;
  return &(*statuses)[0];
}

bool RunningAndReady(const Json& pod) {
  const Json* cs = ContainerStatus(pod);
  return JsonGet<std::string>(pod, "/status/phase", "") == "Running" &&
         TestEnv::ConditionStatus(pod, "Ready") == "True" && cs != nullptr &&
         JsonGet<bool>(*cs, "/ready", false) &&
         !JsonGet<std::string>(pod, "/status/podIP", "").empty();
}

class ProcessPodRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "the process pod runner needs root (mount namespaces)";
  }
};

TEST_F(ProcessPodRunnerTest, WorkerPodRunsServesFollowsLabelsAndStopsOnDelete) {
  TestEnv env;
  CreatePoolTokenSecret(env);
  ChildProcess* nodes =
      env.StartNodes("prun", 2, 4, "", {.process_runner = true, .ip_prefix = RandomIpPrefix()});
  ASSERT_NE(nodes, nullptr);
  env.WaitForNodes("prun", 2);
  // Lets the default ServiceAccount read pods, so its token can prove it works in-cluster.
  ASSERT_EQ(env.Kubectl("-n " + env.ns() + " create role pod-reader --verb=get --resource=pods")
                .exit_code,
            0);
  ASSERT_EQ(env.Kubectl("-n " + env.ns() +
                        " create rolebinding pod-reader --role=pod-reader --serviceaccount=" +
                        env.ns() + ":default")
                .exit_code,
            0);

  const Json created = CreatePod(env, WorkerPod("chat-worker-0", "prun-0"));
  CreatePod(env, WorkerPod("chat-worker-1", "prun-1"));
  const std::string uid = JsonGet<std::string>(created, "/metadata/uid", "");
  Json pod;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        pod = GetPod(env, "chat-worker-0");
        return RunningAndReady(pod) && RunningAndReady(GetPod(env, "chat-worker-1"));
      },
      std::chrono::seconds(120)))
      << pod.dump(2) << "\n"
      << env.ChildLogs();
  const Json* cs = ContainerStatus(pod);
  ASSERT_NE(cs, nullptr);
  EXPECT_EQ(JsonGet<int>(*cs, "/restartCount", -1), 0);
  EXPECT_TRUE(JsonChild(JsonGet<Json>(*cs, "/state", Json::object()), "running") != nullptr);
  const std::string ip = JsonGet<std::string>(pod, "/status/podIP", "");
  ASSERT_TRUE(ip.starts_with("127.")) << ip;

  // It serves on its pod IP.
  httplib::Client http(ip, 8000);
  http.set_connection_timeout(5);
  auto health = http.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);

  // What the process sees: its environment and its own mounts.
  const pid_t pid = FindContainerPid(env.ns(), "chat-worker-0");
  ASSERT_NE(pid, 0) << "no process with POD_NAME=chat-worker-0";
  EXPECT_EQ(EnvironValue(pid, "POD_IP"), ip);
  EXPECT_EQ(ReadText("/proc/" + std::to_string(pid) + "/cmdline").find("--host=" + ip) !=
                std::string::npos,
            true);
  EXPECT_NE(fs::read_symlink("/proc/" + std::to_string(pid) + "/ns/mnt"),
            fs::read_symlink("/proc/self/ns/mnt"));
  EXPECT_EQ(ContainerFile(pid, "/var/run/pdpool/token/token"), kPoolToken);
  EXPECT_NE(
      ContainerFile(pid, "/var/run/pdpool/podinfo/labels").find("pdpool.dev/role=\"prefill\""),
      std::string::npos)
      << ContainerFile(pid, "/var/run/pdpool/podinfo/labels");

  // The service-account token the API server's admission added works as in-cluster config.
  const std::string sa_mount = "/var/run/secrets/kubernetes.io/serviceaccount";
  const std::string sa_dir = env.BuildPath("test-logs/" + env.ns() + "/serviceaccount-seen");
  fs::create_directories(sa_dir);
  for (const char* file : {"token", "ca.crt", "namespace"}) {
    std::ofstream(sa_dir + "/" + file) << ContainerFile(pid, sa_mount + "/" + file);
  }
  EXPECT_EQ(ContainerFile(pid, sa_mount + "/namespace"), env.ns());
  ASSERT_FALSE(EnvironValue(pid, "KUBERNETES_SERVICE_HOST").empty());
  ::setenv("KUBERNETES_SERVICE_HOST", EnvironValue(pid, "KUBERNETES_SERVICE_HOST").c_str(), 1);
  ::setenv("KUBERNETES_SERVICE_PORT", EnvironValue(pid, "KUBERNETES_SERVICE_PORT").c_str(), 1);
  auto in_cluster = kube::LoadInClusterConfig(sa_dir);
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  ::unsetenv("KUBERNETES_SERVICE_PORT");
  ASSERT_TRUE(in_cluster.ok()) << in_cluster.status().ToString();
  auto sa_client = kube::NewHttpKubeClient(*in_cluster);
  ASSERT_TRUE(sa_client.ok()) << sa_client.status().ToString();
  auto self = (*sa_client)->Get(kube::kPods, env.ns(), "chat-worker-0");
  ASSERT_TRUE(self.ok()) << self.status().ToString();
  EXPECT_EQ(JsonGet<std::string>(*self, "/metadata/uid", ""), uid);

  // Its log file is on the node.
  const std::string log = env.NodeStateDir("prun") + "/prun-0/pods/" + env.ns() +
                          "_chat-worker-0_" + uid + "/logs/worker/0.log";
  EXPECT_FALSE(ReadText(log).empty()) << log;

  // Relabelled: the downward-API file it reads changes.
  Json patch = {{"metadata", {{"labels", {{"pdpool.dev/role", "decode"}}}}}};
  ASSERT_TRUE(env.client()
                  .Patch(kube::kPods, env.ns(), "chat-worker-0", kube::PatchType::kMerge, patch)
                  .ok());
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        return ContainerFile(pid, "/var/run/pdpool/podinfo/labels")
                   .find("pdpool.dev/role=\"decode\"") != std::string::npos;
      },
      std::chrono::seconds(30)))
      << ContainerFile(pid, "/var/run/pdpool/podinfo/labels");

  // Deleted (grace period 600 s): SIGTERM ends it long before SIGKILL would, and the node
  // finishes the deletion.
  ASSERT_TRUE(env.client().Delete(kube::kPods, env.ns(), "chat-worker-0").ok());
  EXPECT_TRUE(TestEnv::WaitFor([&] { return ProcessGone(pid); }, std::chrono::seconds(120)))
      << env.ChildLogs();
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        return env.client().Get(kube::kPods, env.ns(), "chat-worker-0").status().IsNotFound();
      },
      std::chrono::seconds(60)))
      << env.ChildLogs();
  EXPECT_FALSE(fs::exists(env.NodeStateDir("prun") + "/prun-0/pods/" + env.ns() +
                          "_chat-worker-0_" + uid + "/volumes"));

  // The agent shutting down leaves nothing running.
  const pid_t other = FindContainerPid(env.ns(), "chat-worker-1");
  ASSERT_NE(other, 0);
  EXPECT_EQ(nodes->Stop(std::chrono::seconds(120)), 0) << env.ChildLogs();
  EXPECT_TRUE(ProcessGone(other));
}

TEST_F(ProcessPodRunnerTest, CrashLoopsAndUnavailableImagesAreReported) {
  TestEnv env;
  env.StartNodes("pcrash", 2, 4, "",
                 {.process_runner = true,
                  .ip_prefix = RandomIpPrefix(),
                  .extra_args = {"--restart-backoff", "1s", "--max-restart-backoff", "2s"}});
  env.WaitForNodes("pcrash", 2);

  Json crasher = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", {{"name", "crasher"}}},
      {"spec",
       {{"nodeName", "pcrash-0"},
        {"containers", Json::array({{{"name", "worker"},
                                     {"image", "pdpool/agent:test"},
                                     {"args", Json::array({"worker", "--role=bogus"})}}})}}}};
  Json foreign = {{"apiVersion", "v1"},
                  {"kind", "Pod"},
                  {"metadata", {{"name", "foreign"}}},
                  {"spec",
                   {{"nodeName", "pcrash-1"},
                    {"containers", Json::array({{{"name", "web"}, {"image", "nginx:1.25"}}})}}}};
  CreatePod(env, crasher);
  CreatePod(env, foreign);

  Json pod;
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        pod = GetPod(env, "crasher");
        const Json* cs = ContainerStatus(pod);
        return cs != nullptr && JsonGet<int>(*cs, "/restartCount", 0) >= 2 &&
               JsonGet<int>(*cs, "/lastState/terminated/exitCode", 0) != 0;
      },
      std::chrono::seconds(90)))
      << pod.dump(2) << "\n"
      << env.ChildLogs();

  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        pod = GetPod(env, "foreign");
        const Json* cs = ContainerStatus(pod);
        return cs != nullptr &&
               JsonGet<std::string>(*cs, "/state/waiting/reason", "") == "ErrImageNeverPull";
      },
      std::chrono::seconds(60)))
      << pod.dump(2) << "\n"
      << env.ChildLogs();
  const Json* cs = ContainerStatus(pod);
  ASSERT_NE(cs, nullptr);
  EXPECT_NE(JsonGet<std::string>(*cs, "/state/waiting/message", "").find("nginx:1.25"),
            std::string::npos);
  EXPECT_EQ(JsonGet<std::string>(pod, "/status/phase", ""), "Pending");
}

}  // namespace
}  // namespace pdpool::testing
