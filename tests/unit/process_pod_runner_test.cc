// Tests for the pieces of the process pod runner (agent/node): the container environment
// (fieldRef, secretKeyRef, envFrom, $(VAR) expansion), the downward-API file format (read back
// by the worker's labels-file parser), the image → binary mapping, the crash-loop back-off,
// probes, the kubelet-style atomic volume writer and the pod's volumes. The last tests run a
// real ProcessPodRunner on a shell script standing in for pdpool-agent (restart counting,
// SIGTERM to the process group on Stop, downward-API file updated on Update); they need root
// for the containers' mount namespaces.
#include "agent/node/process_pod_runner.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include "agent/node/atomic_writer.h"
#include "agent/node/container_env.h"
#include "agent/node/container_image.h"
#include "agent/node/container_probe.h"
#include "agent/node/downward_api.h"
#include "agent/node/node_agent.h"
#include "agent/node/pod_data_source.h"
#include "agent/node/pod_volumes.h"
#include "agent/node/restart_backoff.h"
#include "agent/worker/labels_file.h"
#include "common/clock.h"

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

Json TestPod() {
  return Json::parse(R"({
    "metadata": {"name": "w-0", "namespace": "serving", "uid": "u-1",
                 "labels": {"pdpool.dev/role": "prefill", "app": "w"},
                 "annotations": {"note": "say \"hi\"\n"}},
    "spec": {"nodeName": "gb200-00", "serviceAccountName": "default",
             "containers": [{"name": "worker", "image": "ghcr.io/pdpool/agent:0.1.0"}]},
    "status": {}
  })");
}

PodRuntimeFields Runtime() { return {"127.1.0.7", "127.0.0.1", "gb200-00"}; }

// A PodDataSource over fixed objects: {"secret/name": {key: value}}.
PodDataSource FixedData(std::map<std::string, PodData> objects) {
  return [objects](PodDataKind kind, const std::string& ns,
                   const std::string& name) -> StatusOr<PodData> {
    auto it = objects.find(std::string(PodDataKindName(kind)) + "/" + name);
    if (it == objects.end()) {
      return Status::NotFound(std::string(PodDataKindName(kind)) + " \"" + ns + "/" + name +
                              "\" not found");
    }
    return it->second;
  };
}

std::string EnvValue(const std::vector<EnvVar>& env, const std::string& name) {
  for (const EnvVar& v : env) {
    if (v.name == name) return v.value;
  }
  return "<unset>";
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------
// Environment.

TEST(ProcessPodRunnerEnvTest, BaseVariablesPointAtThePodAndTheApiServer) {
  ContainerEnvContext ctx{Runtime(), "127.0.0.1", "6443"};
  auto env = BuildContainerEnv(TestPod(), Json::object(), ctx, FixedData({}));
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(EnvValue(*env, "POD_NAME"), "w-0");
  EXPECT_EQ(EnvValue(*env, "POD_NAMESPACE"), "serving");
  EXPECT_EQ(EnvValue(*env, "POD_IP"), "127.1.0.7");
  EXPECT_EQ(EnvValue(*env, "KUBERNETES_SERVICE_HOST"), "127.0.0.1");
  EXPECT_EQ(EnvValue(*env, "KUBERNETES_SERVICE_PORT"), "6443");
  EXPECT_EQ(EnvValue(*env, "HOSTNAME"), "w-0");
  EXPECT_NE(EnvValue(*env, "PATH"), "<unset>");
}

TEST(ProcessPodRunnerEnvTest, FieldRefsResolveFromThePodAndTheNode) {
  Json container = Json::parse(R"({"env": [
    {"name": "A_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "A_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    {"name": "A_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "A_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
    {"name": "A_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    {"name": "A_ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['pdpool.dev/role']"}}},
    {"name": "A_MISSING", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['nope']"}}}
  ]})");
  auto env = BuildContainerEnv(TestPod(), container, {Runtime(), "", ""}, FixedData({}));
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(EnvValue(*env, "A_NAME"), "w-0");
  EXPECT_EQ(EnvValue(*env, "A_NS"), "serving");
  EXPECT_EQ(EnvValue(*env, "A_IP"), "127.1.0.7");
  EXPECT_EQ(EnvValue(*env, "A_HOST"), "127.0.0.1");
  EXPECT_EQ(EnvValue(*env, "A_NODE"), "gb200-00");
  EXPECT_EQ(EnvValue(*env, "A_ROLE"), "prefill");
  EXPECT_EQ(EnvValue(*env, "A_MISSING"), "");
  EXPECT_EQ(EnvValue(*env, "KUBERNETES_SERVICE_HOST"), "<unset>");
}

TEST(ProcessPodRunnerEnvTest, SpecOverridesBaseInPlaceAndExpandsEarlierVariables) {
  Json container = Json::parse(R"({"env": [
    {"name": "POD_IP", "value": "10.0.0.9"},
    {"name": "URL", "value": "http://$(POD_IP):8000/$(LATER)/$$(POD_IP)/$x"},
    {"name": "LATER", "value": "z"}
  ]})");
  auto env = BuildContainerEnv(TestPod(), container, {Runtime(), "", ""}, FixedData({}));
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(EnvValue(*env, "POD_IP"), "10.0.0.9");
  EXPECT_EQ(EnvValue(*env, "URL"), "http://10.0.0.9:8000/$(LATER)/$(POD_IP)/$x");
  int pod_ip_entries = 0;
  for (const EnvVar& v : *env) pod_ip_entries += v.name == "POD_IP";
  EXPECT_EQ(pod_ip_entries, 1);
}

TEST(ProcessPodRunnerEnvTest, ExpansionFollowsKubernetesRules) {
  auto lookup = [](std::string_view name) -> std::optional<std::string> {
    if (name == "A") return "1";
    return std::nullopt;
  };
  EXPECT_EQ(ExpandEnvReferences("$(A)-$(B)", lookup), "1-$(B)");
  EXPECT_EQ(ExpandEnvReferences("$$(A)", lookup), "$(A)");
  EXPECT_EQ(ExpandEnvReferences("$$$(A)", lookup), "$1");
  EXPECT_EQ(ExpandEnvReferences("a$", lookup), "a$");
  EXPECT_EQ(ExpandEnvReferences("$(A", lookup), "$(A");
  EXPECT_EQ(ExpandEnvReferences("$A", lookup), "$A");
}

TEST(ProcessPodRunnerEnvTest, SecretAndConfigMapReferences) {
  Json container = Json::parse(R"({
    "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                {"secretRef": {"name": "absent", "optional": true}}],
    "env": [
      {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "pool-token", "key": "token"}}},
      {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "pool-token", "key": "no", "optional": true}}}
    ]})");
  auto data = FixedData({{"secret/pool-token", {{"token", "s3cret"}}},
                         {"configmap/cfg", {{"level", "debug"}, {"bad key", "x"}}}});
  auto env = BuildContainerEnv(TestPod(), container, {Runtime(), "", ""}, data);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(EnvValue(*env, "TOKEN"), "s3cret");
  EXPECT_EQ(EnvValue(*env, "OPT"), "<unset>");
  EXPECT_EQ(EnvValue(*env, "CFG_level"), "debug");
  EXPECT_EQ(EnvValue(*env, "CFG_bad key"), "<unset>");
}

TEST(ProcessPodRunnerEnvTest, ErrorsNameTheVariable) {
  Json missing_secret = Json::parse(
      R"({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "t"}}}]})");
  auto env = BuildContainerEnv(TestPod(), missing_secret, {Runtime(), "", ""}, FixedData({}));
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("TOKEN"), std::string::npos) << env.status().message();
  EXPECT_NE(env.status().message().find("gone"), std::string::npos) << env.status().message();

  Json missing_key = Json::parse(
      R"({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}]})");
  env = BuildContainerEnv(TestPod(), missing_key, {Runtime(), "", ""},
                          FixedData({{"secret/s", {{"other", "x"}}}}));
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("no key \"t\""), std::string::npos)
      << env.status().message();

  Json resource = Json::parse(
      R"({"env": [{"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]})");
  env = BuildContainerEnv(TestPod(), resource, {Runtime(), "", ""}, FixedData({}));
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("CPUS"), std::string::npos);

  Json bad_field = Json::parse(
      R"({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]})");
  env = BuildContainerEnv(TestPod(), bad_field, {Runtime(), "", ""}, FixedData({}));
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("spec.bogus"), std::string::npos);
}

TEST(ProcessPodRunnerEnvTest, CommandAndArgsExpandAgainstTheEnvironment) {
  Json container = Json::parse(R"js({"command": ["pdpool-agent"],
    "args": ["worker", "--host=$(POD_IP)", "--x=$(NOPE)", "$$(POD_IP)"]})js");
  std::vector<EnvVar> env = {{"POD_IP", "127.1.0.7"}};
  ContainerCommand cmd = ExpandContainerCommand(container, env);
  EXPECT_EQ(cmd.command, std::vector<std::string>{"pdpool-agent"});
  EXPECT_EQ(cmd.args,
            (std::vector<std::string>{"worker", "--host=127.1.0.7", "--x=$(NOPE)", "$(POD_IP)"}));
}

// ---------------------------------------------------------------------------------------------
// Downward API.

TEST(ProcessPodRunnerDownwardApiTest, MapFormatIsTheKubelets) {
  EXPECT_EQ(FormatDownwardApiMap({{"b", "2"}, {"a", "1"}}), "a=\"1\"\nb=\"2\"");
  EXPECT_EQ(FormatDownwardApiMap({}), "");
  EXPECT_EQ(GoQuote("a\"b\\c\n\t\x01\x7f"), R"("a\"b\\c\n\t\x01\x7f")");
  EXPECT_EQ(GoQuote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");  // valid UTF-8 kept
  EXPECT_EQ(GoQuote("\xff"), R"("\xff")");               // invalid UTF-8 escaped
}

TEST(ProcessPodRunnerDownwardApiTest, WorkerParsesWhatTheNodeWrites) {
  std::map<std::string, std::string> labels = {
      {"pdpool.dev/role", "decode"}, {"app", "w"}, {"odd", "tab\there \"quoted\" back\\slash"}};
  StatusOr<PodLabels> parsed = ParseLabelsFile(FormatDownwardApiMap(labels));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, labels);
}

TEST(ProcessPodRunnerDownwardApiTest, VolumeFilesForLabelsAnnotationsAndFields) {
  Json source = Json::parse(R"({"defaultMode": 420, "items": [
    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 256},
    {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}}
  ]})");
  auto files = DownwardApiVolumeFiles(source, TestPod(), Runtime());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  ASSERT_EQ(files->size(), 3u);
  EXPECT_EQ((*files)[0].path, "labels");
  EXPECT_EQ((*files)[0].content, "app=\"w\"\npdpool.dev/role=\"prefill\"");
  EXPECT_EQ((*files)[0].mode, 0644);
  EXPECT_EQ((*files)[1].content, "note=\"say \\\"hi\\\"\\n\"");
  EXPECT_EQ((*files)[1].mode, 0400);
  EXPECT_EQ((*files)[2].path, "meta/name");
  EXPECT_EQ((*files)[2].content, "w-0");

  Json escape =
      Json::parse(R"({"items": [{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]})");
  EXPECT_FALSE(DownwardApiVolumeFiles(escape, TestPod(), Runtime()).ok());
  Json resource = Json::parse(
      R"({"items": [{"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]})");
  auto refused = DownwardApiVolumeFiles(resource, TestPod(), Runtime());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("resourceFieldRef"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Images.

TEST(ProcessPodRunnerImageTest, RepositoryDropsTagAndDigest) {
  EXPECT_EQ(ImageRepository("ghcr.io/pdpool/agent:0.1.0"), "ghcr.io/pdpool/agent");
  EXPECT_EQ(ImageRepository("pdpool/agent"), "pdpool/agent");
  EXPECT_EQ(ImageRepository("localhost:5000/pdpool/agent"), "localhost:5000/pdpool/agent");
  EXPECT_EQ(ImageRepository("localhost:5000/pdpool/agent:1"), "localhost:5000/pdpool/agent");
  EXPECT_EQ(ImageRepository("pdpool/controller@sha256:abcd"), "pdpool/controller");
}

TEST(ProcessPodRunnerImageTest, OnlyPdpoolImagesHaveBinaries) {
  EXPECT_EQ(ImageBinary("ghcr.io/pdpool/agent:0.1.0"), "pdpool-agent");
  EXPECT_EQ(ImageBinary("pdpool/agent:test"), "pdpool-agent");
  EXPECT_EQ(ImageBinary("docker.io/pdpool/controller:v1"), "pdpool-controller");
  EXPECT_EQ(ImageBinary("busybox:1.36"), std::nullopt);
  EXPECT_EQ(ImageBinary("notpdpool/agent:1"), std::nullopt);
  EXPECT_EQ(ImageBinary("pdpool/agent-extra:1"), std::nullopt);
}

TEST(ProcessPodRunnerImageTest, CommandResolvesInTheBinaryDir) {
  auto r = ResolveContainerCommand("pdpool/agent:test", {}, {"worker", "--role=both"}, "/opt/b");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->path, "/opt/b/pdpool-agent");
  EXPECT_EQ(r->argv, (std::vector<std::string>{"pdpool-agent", "worker", "--role=both"}));

  r = ResolveContainerCommand("ghcr.io/pdpool/controller:0.1", {"/usr/local/bin/pdpool-controller"},
                              {"--namespace=x"}, "/opt/b");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->path, "/opt/b/pdpool-controller");
  EXPECT_EQ(r->argv, (std::vector<std::string>{"pdpool-controller", "--namespace=x"}));

  r = ResolveContainerCommand("pdpool/agent:test", {"sh", "-c", "true"}, {}, "/opt/b");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("\"sh\""), std::string::npos);

  r = ResolveContainerCommand("nginx:1.25", {}, {}, "/opt/b");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsNotFound());
  EXPECT_NE(r.status().message().find("nginx:1.25"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Restarts.

TEST(ProcessPodRunnerBackoffTest, RestartPolicy) {
  EXPECT_TRUE(ShouldRestart("Always", 0));
  EXPECT_TRUE(ShouldRestart("Always", 1));
  EXPECT_TRUE(ShouldRestart("", 0));
  EXPECT_FALSE(ShouldRestart("OnFailure", 0));
  EXPECT_TRUE(ShouldRestart("OnFailure", 137));
  EXPECT_FALSE(ShouldRestart("Never", 1));
}

TEST(ProcessPodRunnerBackoffTest, DoublesFromTheSecondRestartUpToTheCap) {
  RestartBackoffPolicy kubelet;  // 10 s doubling to 5 min
  std::vector<int64_t> got;
  for (int crashes = 1; crashes <= 9; ++crashes) {
    got.push_back(std::chrono::duration_cast<seconds>(RestartDelay(kubelet, crashes)).count());
  }
  EXPECT_EQ(got, (std::vector<int64_t>{0, 10, 20, 40, 80, 160, 300, 300, 300}));

  RestartBackoffPolicy fast{std::chrono::milliseconds(100), std::chrono::milliseconds(250),
                            seconds(1)};
  EXPECT_EQ(RestartDelay(fast, 2), std::chrono::milliseconds(100));
  EXPECT_EQ(RestartDelay(fast, 3), std::chrono::milliseconds(200));
  EXPECT_EQ(RestartDelay(fast, 4), std::chrono::milliseconds(250));
}

TEST(ProcessPodRunnerBackoffTest, ALongRunForgetsEarlierCrashes) {
  RestartBackoffPolicy kubelet;
  EXPECT_EQ(CountCrash(kubelet, 0, seconds(1)), 1);
  EXPECT_EQ(CountCrash(kubelet, 4, seconds(30)), 5);
  EXPECT_EQ(CountCrash(kubelet, 4, std::chrono::minutes(10)), 1);
}

// ---------------------------------------------------------------------------------------------
// Probes.

TEST(ProcessPodRunnerProbeTest, ParsesNamedPortsAndDefaults) {
  Json container = Json::parse(R"({"ports": [{"name": "http", "containerPort": 8000}]})");
  auto spec = ParseProbe(Json::parse(R"({"httpGet": {"path": "/readyz", "port": "http"},
                                         "periodSeconds": 5, "failureThreshold": 3})"),
                         container, "127.1.0.7");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->kind, ProbeSpec::Kind::kHttpGet);
  EXPECT_EQ(spec->host, "127.1.0.7");
  EXPECT_EQ(spec->port, 8000);
  EXPECT_EQ(spec->path, "/readyz");
  EXPECT_EQ(spec->period, seconds(5));
  EXPECT_EQ(spec->timeout, seconds(1));
  EXPECT_EQ(spec->initial_delay, seconds(0));
  EXPECT_EQ(spec->success_threshold, 1);
  EXPECT_EQ(spec->failure_threshold, 3);

  auto bad = ParseProbe(Json::parse(R"({"httpGet": {"port": "metrics"}})"), container, "x");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("metrics"), std::string::npos);

  auto tcp = ParseProbe(Json::parse(R"({"tcpSocket": {"port": 9000}})"), container, "x");
  ASSERT_TRUE(tcp.ok());
  EXPECT_EQ(tcp->kind, ProbeSpec::Kind::kTcpSocket);
  EXPECT_EQ(tcp->port, 9000);

  auto exec = ParseProbe(Json::parse(R"({"exec": {"command": ["true"]}})"), container, "x");
  ASSERT_TRUE(exec.ok());
  EXPECT_EQ(exec->kind, ProbeSpec::Kind::kUnsupported);
  EXPECT_FALSE(RunProbe(*exec).success);
}

TEST(ProcessPodRunnerProbeTest, TrackerFollowsDelaysAndThresholds) {
  ProbeSpec spec;
  spec.initial_delay = seconds(3);
  spec.period = seconds(5);
  spec.success_threshold = 2;
  spec.failure_threshold = 3;
  const TimePoint t0{};
  ProbeTracker readiness(spec, t0, false);
  EXPECT_FALSE(readiness.Due(t0 + seconds(2)));
  EXPECT_TRUE(readiness.Due(t0 + seconds(3)));
  EXPECT_FALSE(readiness.Record(true, t0 + seconds(3)));  // 1 of 2 successes
  EXPECT_FALSE(readiness.Due(t0 + seconds(7)));
  EXPECT_TRUE(readiness.Due(t0 + seconds(8)));
  EXPECT_TRUE(readiness.Record(true, t0 + seconds(8)));
  EXPECT_TRUE(readiness.result());
  EXPECT_FALSE(readiness.Record(false, t0 + seconds(13)));
  EXPECT_FALSE(readiness.Record(false, t0 + seconds(18)));
  EXPECT_FALSE(readiness.failing());
  EXPECT_TRUE(readiness.Record(false, t0 + seconds(23)));
  EXPECT_FALSE(readiness.result());
  EXPECT_TRUE(readiness.failing());
}

// The pod's thread sleeps until NextProbeDue: a probe that no longer runs (the startup probe once
// the container started) or does not run yet (readiness and liveness during startup) must not
// count, or its due time in the past would wake the thread at once, forever.
TEST(ProcessPodRunnerProbeTest, NextDueCountsOnlyTheProbesThatRun) {
  ProbeSpec spec;
  spec.period = seconds(10);
  const TimePoint t0{};
  std::optional<ProbeTracker> startup(std::in_place, spec, t0, false);
  std::optional<ProbeTracker> readiness(std::in_place, spec, t0 + seconds(1), false);
  std::optional<ProbeTracker> liveness(std::in_place, spec, t0 + seconds(2), true);
  // Starting: only the startup probe, although readiness and liveness are already due.
  startup->Record(false, t0 + seconds(5));
  EXPECT_EQ(NextProbeDue(startup, false, readiness, liveness), t0 + seconds(15));
  // Started: the startup probe's due time (now in the past) no longer counts.
  startup->Record(true, t0 + seconds(15));
  readiness->Record(true, t0 + seconds(30));
  liveness->Record(true, t0 + seconds(32));
  EXPECT_EQ(NextProbeDue(startup, true, readiness, liveness), t0 + seconds(40));
  EXPECT_EQ(NextProbeDue(std::nullopt, false, std::nullopt, liveness), t0 + seconds(42));
  EXPECT_EQ(NextProbeDue(std::nullopt, true, std::nullopt, std::nullopt), TimePoint::max());
}

TEST(ProcessPodRunnerProbeTest, HttpProbeAgainstAClosedPortFails) {
  ProbeSpec spec;
  spec.kind = ProbeSpec::Kind::kHttpGet;
  spec.host = "127.0.0.1";
  spec.port = 1;  // nothing listens on tcpmux
  ProbeOutcome outcome = RunProbe(spec);
  EXPECT_FALSE(outcome.success);
  EXPECT_FALSE(outcome.detail.empty());
}

// ---------------------------------------------------------------------------------------------
// Volumes.

class ProcessPodRunnerVolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pdpool-volume-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ProcessPodRunnerVolumeTest, AtomicWriterPublishesThroughDataSymlink) {
  const std::string vol = (dir_ / "vol").string();
  auto first = WriteAtomically(vol, {{"labels", "a=\"1\"", 0644}, {"sub/x", "x", 0600}});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(*first);
  EXPECT_EQ(ReadText(vol + "/labels"), "a=\"1\"");
  EXPECT_EQ(ReadText(vol + "/sub/x"), "x");
  EXPECT_TRUE(fs::is_symlink(vol + "/labels"));
  EXPECT_EQ(fs::read_symlink(vol + "/labels").string(), "..data/labels");
  EXPECT_TRUE(fs::is_symlink(vol + "/..data"));
  struct stat st {};
  ASSERT_EQ(::stat((vol + "/sub/x").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto same = WriteAtomically(vol, {{"labels", "a=\"1\"", 0644}, {"sub/x", "x", 0600}});
  ASSERT_TRUE(same.ok());
  EXPECT_FALSE(*same);

  const fs::path old_target = fs::read_symlink(vol + "/..data");
  auto second = WriteAtomically(vol, {{"labels", "a=\"2\"", 0644}});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_TRUE(*second);
  EXPECT_EQ(ReadText(vol + "/labels"), "a=\"2\"");
  EXPECT_FALSE(fs::exists(fs::symlink_status(vol + "/sub")));
  EXPECT_FALSE(fs::exists(fs::path(vol) / old_target));

  EXPECT_FALSE(WriteAtomically(vol, {{"../escape", "x", 0644}}).ok());
  EXPECT_FALSE(WriteAtomically(vol, {{"/abs", "x", 0644}}).ok());
  EXPECT_FALSE(WriteAtomically(vol, {{"..data", "x", 0644}}).ok());
}

TEST_F(ProcessPodRunnerVolumeTest, SecretDownwardApiAndEmptyDirVolumes) {
  Json pod = TestPod();
  pod["spec"]["volumes"] = Json::parse(R"([
    {"name": "pool-token", "secret": {"secretName": "chat-token", "defaultMode": 288}},
    {"name": "sa", "secret": {"secretName": "default-token-abc"}},
    {"name": "picked", "secret": {"secretName": "chat-token", "items": [{"key": "token", "path": "t/tok"}]}},
    {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    {"name": "scratch", "emptyDir": {}}
  ])");
  PodVolumes volumes(
      (dir_ / "volumes").string(),
      FixedData({{"secret/chat-token", {{"token", "pool-secret"}}},
                 {"secret/default-token-abc",
                  {{"token", "jwt"}, {"ca.crt", "PEM"}, {"namespace", "serving"}}}}));
  Status s = volumes.SetUp(pod, Runtime());
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string root = volumes.root();
  EXPECT_EQ(ReadText(root + "/pool-token/token"), "pool-secret");
  struct stat st {};
  ASSERT_EQ(::stat((root + "/pool-token/token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0440u);
  EXPECT_EQ(ReadText(root + "/sa/token"), "jwt");
  EXPECT_EQ(ReadText(root + "/sa/ca.crt"), "PEM");
  EXPECT_EQ(ReadText(root + "/sa/namespace"), "serving");
  EXPECT_EQ(ReadText(root + "/picked/t/tok"), "pool-secret");
  EXPECT_EQ(ReadText(root + "/podinfo/labels"), "app=\"w\"\npdpool.dev/role=\"prefill\"");
  EXPECT_TRUE(fs::is_directory(root + "/scratch"));

  Json container = Json::parse(R"({"volumeMounts": [
    {"name": "pool-token", "mountPath": "/var/run/pdpool/token"},
    {"name": "scratch", "mountPath": "/scratch"},
    {"name": "scratch", "mountPath": "/ro", "readOnly": true}]})");
  auto mounts = volumes.MountsFor(container);
  ASSERT_TRUE(mounts.ok()) << mounts.status().ToString();
  ASSERT_EQ(mounts->size(), 3u);
  EXPECT_EQ((*mounts)[0].source, root + "/pool-token");
  EXPECT_EQ((*mounts)[0].target, "/var/run/pdpool/token");
  EXPECT_TRUE((*mounts)[0].read_only);  // secrets are always read-only
  EXPECT_FALSE((*mounts)[1].read_only);
  EXPECT_TRUE((*mounts)[2].read_only);

  pod["metadata"]["labels"]["pdpool.dev/role"] = "decode";
  auto changed = volumes.RefreshDownwardApi(pod, Runtime());
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(*changed);
  EXPECT_EQ(ReadText(root + "/podinfo/labels"), "app=\"w\"\npdpool.dev/role=\"decode\"");
  changed = volumes.RefreshDownwardApi(pod, Runtime());
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(*changed);

  volumes.TearDown();
  EXPECT_FALSE(fs::exists(root));
}

TEST_F(ProcessPodRunnerVolumeTest, ErrorsNameTheVolume) {
  Json pod = TestPod();
  pod["spec"]["volumes"] =
      Json::parse(R"([{"name": "pool-token", "secret": {"secretName": "not-yet"}}])");
  PodVolumes missing((dir_ / "a").string(), FixedData({}));
  Status s = missing.SetUp(pod, Runtime());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("pool-token"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("not-yet"), std::string::npos) << s.ToString();

  pod["spec"]["volumes"][0]["secret"]["optional"] = true;
  EXPECT_TRUE(missing.SetUp(pod, Runtime()).ok());

  pod["spec"]["volumes"] =
      Json::parse(R"([{"name": "data", "nfs": {"server": "x", "path": "/"}}])");
  PodVolumes unsupported((dir_ / "b").string(), FixedData({}));
  s = unsupported.SetUp(pod, Runtime());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("\"data\""), std::string::npos) << s.ToString();

  auto mounts = unsupported.MountsFor(
      Json::parse(R"({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]})"));
  ASSERT_FALSE(mounts.ok());
  EXPECT_NE(mounts.status().message().find("nope"), std::string::npos);
}

TEST(ProcessPodRunnerDataTest, SecretDataIsBase64Decoded) {
  auto data = DecodePodData(PodDataKind::kSecret,
                            Json::parse(R"({"data": {"token": "cG9vbC10b2tlbgo=", "e": ""},
                                            "stringData": {"s": "plain"}})"));
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->at("token"), "pool-token\n");
  EXPECT_EQ(data->at("e"), "");
  EXPECT_EQ(data->at("s"), "plain");
  auto bad = DecodePodData(PodDataKind::kSecret, Json::parse(R"({"data": {"k": "@@"}})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("data.k"), std::string::npos);
  auto cm = DecodePodData(PodDataKind::kConfigMap,
                          Json::parse(R"({"data": {"a": "1"}, "binaryData": {"b": "Mg=="}})"));
  ASSERT_TRUE(cm.ok());
  EXPECT_EQ(cm->at("a"), "1");
  EXPECT_EQ(cm->at("b"), "2");
}

// ---------------------------------------------------------------------------------------------
// Node agent flags.

TEST(ProcessPodRunnerFlagsTest, ApiServerUrlSplitsIntoServiceHostAndPort) {
  std::string host, port;
  ASSERT_TRUE(SplitServerUrl("https://127.0.0.1:6443", &host, &port));
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, "6443");
  ASSERT_TRUE(SplitServerUrl("https://[::1]:6443/", &host, &port));
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, "6443");
  ASSERT_TRUE(SplitServerUrl("https://kubernetes.default.svc", &host, &port));
  EXPECT_EQ(host, "kubernetes.default.svc");
  EXPECT_EQ(port, "443");
  EXPECT_FALSE(SplitServerUrl("127.0.0.1:6443", &host, &port));
  EXPECT_FALSE(SplitServerUrl("https://h:port", &host, &port));
}

TEST(ProcessPodRunnerFlagsTest, BadRunnerFlagsNameTheFlag) {
  const Clock* clock = &RealClock::Instance();
  NodeAgentOptions o;
  o.pod_runner = "docker";
  auto f = NewPodRunnerFactory(o, nullptr, clock, "https://127.0.0.1:6443");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("--pod-runner"), std::string::npos);

  o.pod_runner = "process";
  o.restart_backoff = "0s";
  f = NewPodRunnerFactory(o, nullptr, clock, "https://127.0.0.1:6443");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("--restart-backoff"), std::string::npos);

  o.restart_backoff = "10s";
  o.max_restart_backoff = "5s";
  f = NewPodRunnerFactory(o, nullptr, clock, "https://127.0.0.1:6443");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("--max-restart-backoff"), std::string::npos);

  o.max_restart_backoff = "5m";
  o.binary_dir = "/nonexistent/pdpool/bin";
  f = NewPodRunnerFactory(o, nullptr, clock, "https://127.0.0.1:6443");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("--binary-dir"), std::string::npos);

  o.pod_runner = "status-only";
  f = NewPodRunnerFactory(o, nullptr, clock, "https://127.0.0.1:6443");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_NE((*f)(SimNodeOptions{}), nullptr);
}

// ---------------------------------------------------------------------------------------------
// The runner itself, on a shell script standing in for pdpool-agent.

bool Eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

class ProcessPodRunnerLocalTest : public ProcessPodRunnerVolumeTest {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root: containers get a private mount namespace";
    ProcessPodRunnerVolumeTest::SetUp();
    fs::create_directories(dir_ / "bin");
    // The "image": prints where it runs, then waits (exits 3 on its first runs when asked).
    script_ = (dir_ / "bin" / "pdpool-agent").string();
    std::ofstream(script_) << "#!/bin/sh\n"
                              "echo started \"$@\" pod=$POD_NAME ip=$POD_IP\n"
                              "trap 'echo got-term; exit 0' TERM\n"
                              "if [ \"$1\" = crash ]; then exit 3; fi\n"
                              "if [ -n \"$2\" ]; then echo \"mounted=$(cat \"$2\")\"; fi\n"
                              "while true; do sleep 0.05; done\n";
    fs::permissions(script_, fs::perms::owner_all);
    ProcessPodRunnerOptions options;
    options.node_name = "n0";
    options.node_dir = (dir_ / "node").string();
    options.binary_dir = (dir_ / "bin").string();
    options.restart_backoff = {std::chrono::milliseconds(50), std::chrono::milliseconds(100),
                               seconds(60)};
    options.poll_interval = std::chrono::milliseconds(10);
    options.min_kill_grace = std::chrono::milliseconds(500);
    runner_ = std::make_unique<ProcessPodRunner>(
        &RealClock::Instance(), FixedData({{"secret/tok", {{"token", "pool-secret"}}}}), options);
    runner_->SetStatusListener([this](const std::string&, const PodRunStatus& s) {
      std::lock_guard lock(mu_);
      last_ = s;
    });
  }
  void TearDown() override {
    if (runner_) runner_->Shutdown();
    runner_.reset();
    ProcessPodRunnerVolumeTest::TearDown();
  }

  Json Pod(const std::string& uid, Json args, const std::string& restart_policy = "Always") {
    Json pod = TestPod();
    pod["metadata"]["uid"] = uid;
    pod["spec"]["restartPolicy"] = restart_policy;
    pod["spec"]["terminationGracePeriodSeconds"] = 30;
    pod["spec"]["containers"][0]["args"] = std::move(args);
    // Mount points under the test's directory: the child creates them on the host.
    pod["spec"]["containers"][0]["volumeMounts"] =
        Json::array({{{"name", "tok"}, {"mountPath", (dir_ / "mnt/token").string()}},
                     {{"name", "podinfo"}, {"mountPath", (dir_ / "mnt/podinfo").string()}}});
    pod["spec"]["volumes"] = Json::parse(R"([
      {"name": "tok", "secret": {"secretName": "tok"}},
      {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}])");
    return pod;
  }

  std::optional<ContainerRunState> Last() {
    std::lock_guard lock(mu_);
    if (last_.containers.empty()) return std::nullopt;
    return last_.containers[0];
  }

  std::string script_;
  std::unique_ptr<ProcessPodRunner> runner_;
  std::mutex mu_;
  PodRunStatus last_;
};

TEST_F(ProcessPodRunnerLocalTest, RunsTheContainerWithItsVolumesAndStopsItWithSigterm) {
  Json pod = Pod("u-run", Json::array({"serve", (dir_ / "mnt/token/token").string()}));
  PodRunStatus initial = runner_->Start({pod, "u-run", "127.1.0.7", "127.0.0.1", "n0"});
  ASSERT_EQ(initial.containers.size(), 1u);
  EXPECT_EQ(initial.containers[0].phase, ContainerRunState::Phase::kWaiting);
  ASSERT_TRUE(Eventually(
      [&] {
        auto s = Last();
        return s && s->phase == ContainerRunState::Phase::kRunning && s->ready;
      },
      std::chrono::seconds(10)));
  const std::string pod_dir = runner_->PodDir(pod);
  const std::string log = pod_dir + "/logs/worker/0.log";
  ASSERT_TRUE(Eventually([&] { return ReadText(log).find("mounted=") != std::string::npos; },
                         std::chrono::seconds(10)))
      << ReadText(log);
  EXPECT_NE(ReadText(log).find("pod=w-0 ip=127.1.0.7"), std::string::npos) << ReadText(log);
  EXPECT_NE(ReadText(log).find("mounted=pool-secret"), std::string::npos) << ReadText(log);
  // The mounts exist only inside the container's namespace; the volumes are on the node.
  EXPECT_EQ(ReadText(pod_dir + "/volumes/tok/token"), "pool-secret");
  EXPECT_TRUE(fs::is_directory(dir_ / "mnt/token"));
  EXPECT_FALSE(fs::exists(dir_ / "mnt/token/token"));

  pod["metadata"]["labels"]["pdpool.dev/role"] = "decode";
  runner_->Update(pod);
  EXPECT_TRUE(Eventually(
      [&] {
        return ReadText(pod_dir + "/volumes/podinfo/labels").find("decode") != std::string::npos;
      },
      std::chrono::seconds(10)));

  runner_->Stop("u-run", seconds(30));  // blocks until gone; the script exits on SIGTERM
  EXPECT_NE(ReadText(log).find("got-term"), std::string::npos) << ReadText(log);
  EXPECT_EQ(runner_->running_pods(), 0u);
  EXPECT_FALSE(fs::exists(pod_dir + "/volumes"));
}

TEST_F(ProcessPodRunnerLocalTest, CrashingContainerIsRestartedWithBackoff) {
  Json pod = Pod("u-crash", Json::array({"crash"}));
  runner_->Start({pod, "u-crash", "127.1.0.8", "127.0.0.1", "n0"});
  ASSERT_TRUE(Eventually(
      [&] {
        auto s = Last();
        return s && s->restart_count >= 3 && s->last_termination.has_value();
      },
      std::chrono::seconds(20)));
  auto s = Last();
  EXPECT_EQ(s->last_termination->exit_code, 3);
  EXPECT_EQ(s->last_termination->reason, "Error");
  runner_->Stop("u-crash", seconds(0));
}

TEST_F(ProcessPodRunnerLocalTest, NeverRestartedAndUnknownImages) {
  Json pod = Pod("u-never", Json::array({"crash"}), "Never");
  runner_->Start({pod, "u-never", "127.1.0.9", "127.0.0.1", "n0"});
  ASSERT_TRUE(Eventually(
      [&] {
        auto s = Last();
        return s && s->phase == ContainerRunState::Phase::kTerminated;
      },
      std::chrono::seconds(10)));
  EXPECT_EQ(Last()->exit_code, 3);
  EXPECT_EQ(Last()->restart_count, 0);
  runner_->Stop("u-never", seconds(0));

  Json other = Pod("u-image", Json::array({"serve"}));
  other["spec"]["containers"][0]["image"] = "busybox:1.36";
  {
    std::lock_guard lock(mu_);
    last_ = {};
  }
  runner_->Start({other, "u-image", "127.1.0.10", "127.0.0.1", "n0"});
  ASSERT_TRUE(Eventually(
      [&] {
        auto s = Last();
        return s && s->reason == kImageNeverPullReason;
      },
      std::chrono::seconds(10)));
  EXPECT_NE(Last()->message.find("busybox:1.36"), std::string::npos) << Last()->message;
  EXPECT_EQ(Last()->phase, ContainerRunState::Phase::kWaiting);
  runner_->Stop("u-image", seconds(0));
}

}  // namespace
}  // namespace pdpool::agent
