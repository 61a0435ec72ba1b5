// Tests for controller/pool_spec: parsing with defaults, every validation rule, durations, and
// agreement with the CRD (crds/inferencepools.pdpool.dev.yaml) and the samples in
// deploy/samples/, read with yaml-cpp: every field the parser reads is in the schema with a
// description, the defaults, enums, bounds and patterns are the same on both sides.
#include "controller/pool_spec.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace pdpool::controller {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Helpers

fs::path SourceDir() {
  if (const char* dir = std::getenv("PDPOOL_SOURCE_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return fs::path(__FILE__).parent_path().parent_path().parent_path();
}

// A YAML node as JSON, reading plain scalars as YAML 1.1 does (kubectl's sigs.k8s.io/yaml):
// a bare Off or yes is a boolean, so an unquoted enum value shows up here as it would there.
Json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      return nullptr;
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const auto& item : node) out.push_back(YamlToJson(item));
      return out;
    }
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& kv : node) out[kv.first.Scalar()] = YamlToJson(kv.second);
      return out;
    }
    case YAML::NodeType::Scalar:
      break;
  }
  const std::string& s = node.Scalar();
  if (node.Tag() != "?") return s;  // quoted or block scalar: a string
  static const std::set<std::string> kTrue = {"y",    "Y",    "yes", "Yes", "YES", "true",
                                              "True", "TRUE", "on",  "On",  "ON"};
  static const std::set<std::string> kFalse = {"n",     "N",     "no",  "No",  "NO", "false",
                                               "False", "FALSE", "off", "Off", "OFF"};
  if (kTrue.count(s)) return true;
  if (kFalse.count(s)) return false;
  if (s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  static const std::regex kInt("[-+]?[0-9]+");
  static const std::regex kFloat("[-+]?([0-9]*\\.[0-9]+|[0-9]+\\.[0-9]*)([eE][-+]?[0-9]+)?");
  if (std::regex_match(s, kInt)) return std::stoll(s);
  if (std::regex_match(s, kFloat)) return std::stod(s);
  return s;
}

Json LoadYaml(const fs::path& path) {
  YAML::Node node = YAML::LoadFile(path.string());
  return YamlToJson(node);
}

// "spec.slo.ttft" -> "/slo/ttft" (relative to spec).
Json::json_pointer SpecPointer(const std::string& field) {
  std::string rel = field.substr(std::string("spec.").size());
  std::replace(rel.begin(), rel.end(), '.', '/');
  return Json::json_pointer("/" + rel);
}

// A spec that validates cleanly and leaves room on every side of every bound.
Json ValidSpec() {
  return Json::parse(R"({
    "model": {"name": "m", "preset": "test-tiny", "source": {"dummy": {"seed": 1}}},
    "backend": "sim",
    "prefill": {"replicas": 1, "gpusPerReplica": 1, "minReplicas": 0, "maxReplicas": 1024},
    "decode": {"replicas": 1, "gpusPerReplica": 1, "minReplicas": 0, "maxReplicas": 1024}
  })");
}

PoolSpec MustParse(const Json& spec) {
  auto parsed = ParsePoolSpec(spec);
  EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
  return parsed.ok() ? *parsed : PoolSpec{};
}

std::vector<SpecError> Errors(const Json& spec) { return ValidatePoolSpec(MustParse(spec)); }

std::vector<std::string> MessagesAt(const std::vector<SpecError>& errors,
                                    const std::string& field) {
  std::vector<std::string> out;
  for (const auto& e : errors) {
    if (e.field == field) out.push_back(e.message);
  }
  return out;
}

std::string Dump(const std::vector<SpecError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.field + ": " + e.message + "\n";
  return out;
}

// Errors for ValidSpec() with one field changed.
std::vector<SpecError> ErrorsWith(const std::string& field, const Json& value) {
  Json spec = ValidSpec();
  spec[SpecPointer(field)] = value;
  return Errors(spec);
}

// ---------------------------------------------------------------------------------------------
// Parsing and defaults

TEST(ParsePoolSpec, AppliesDefaultsToAMinimalSpec) {
  PoolSpec s = MustParse(Json::parse(R"({"model": {"name": "m", "source": {"dummy": {}}}})"));
  EXPECT_EQ(s.model.name, "m");
  EXPECT_EQ(s.model.preset, "");
  EXPECT_EQ(s.model.source_path, "");
  ASSERT_TRUE(s.model.dummy_seed.has_value());
  EXPECT_EQ(*s.model.dummy_seed, 0);
  EXPECT_EQ(s.image, "ghcr.io/pdpool/agent:0.1.0");
  EXPECT_EQ(s.backend, "cuda");
  for (const RoleSpec* role : {&s.prefill, &s.decode}) {
    EXPECT_EQ(role->replicas, 1);
    EXPECT_EQ(role->gpus_per_replica, 1);
    EXPECT_EQ(role->min_replicas, 1);
    EXPECT_EQ(role->max_replicas, 1);
  }
  EXPECT_EQ(s.router_replicas, 1);
  EXPECT_EQ(s.template_overrides, Json::object());
  EXPECT_DOUBLE_EQ(s.slo.ttft_seconds, 2.0);
  EXPECT_DOUBLE_EQ(s.slo.tpot_seconds, 0.1);
  EXPECT_EQ(s.slo.percentile, 90);
  EXPECT_FALSE(s.autoscaling.enabled);
  EXPECT_DOUBLE_EQ(s.autoscaling.interval_seconds, 15);
  EXPECT_EQ(s.autoscaling.gpu_budget, 0);
  EXPECT_EQ(s.autoscaling.prometheus_url, "");
  EXPECT_DOUBLE_EQ(s.autoscaling.scale_down_stabilization_seconds, 300);
  EXPECT_EQ(s.autoscaling.rebalance, "InPlace");
  EXPECT_EQ(s.topology.key, "nvidia.com/gpu.clique");
  EXPECT_EQ(s.topology.policy, "Required");
  EXPECT_EQ(s.kv_transport, "auto");
}

TEST(ParsePoolSpec, ReadsEveryField) {
  PoolSpec s = MustParse(Json::parse(R"({
    "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "preset": "llama-3.1-70b",
              "source": {"path": "/models/llama-3.1-70b"}},
    "image": "registry.local/agent:dev",
    "backend": "cpu",
    "prefill": {"replicas": 2, "gpusPerReplica": 4, "minReplicas": 1, "maxReplicas": 8},
    "decode": {"replicas": 4, "gpusPerReplica": 8, "minReplicas": 2, "maxReplicas": 12},
    "router": {"replicas": 3},
    "template": {"metadata": {"labels": {"team": "a"}}},
    "slo": {"ttft": "1m30s", "tpot": "50ms", "percentile": 99},
    "autoscaling": {"enabled": true, "interval": "30s", "gpuBudget": 64,
                    "prometheus": {"url": "http://prometheus.monitoring:9090"},
                    "scaleDownStabilization": "10m", "rebalance": "Off"},
    "topology": {"key": "example.com/rack", "policy": "Preferred"},
    "kvTransfer": {"transport": "tcp"}
  })"));
  EXPECT_EQ(s.model.name, "meta-llama/Llama-3.1-70B-Instruct");
  EXPECT_EQ(s.model.preset, "llama-3.1-70b");
  EXPECT_EQ(s.model.source_path, "/models/llama-3.1-70b");
  EXPECT_FALSE(s.model.dummy_seed.has_value());
  EXPECT_EQ(s.image, "registry.local/agent:dev");
  EXPECT_EQ(s.backend, "cpu");
  EXPECT_EQ(s.prefill, (RoleSpec{2, 4, 1, 8}));
  EXPECT_EQ(s.decode, (RoleSpec{4, 8, 2, 12}));
  EXPECT_EQ(s.router_replicas, 3);
  EXPECT_EQ(s.template_overrides["metadata"]["labels"]["team"], "a");
  EXPECT_DOUBLE_EQ(s.slo.ttft_seconds, 90);
  EXPECT_DOUBLE_EQ(s.slo.tpot_seconds, 0.05);
  EXPECT_EQ(s.slo.percentile, 99);
  EXPECT_TRUE(s.autoscaling.enabled);
  EXPECT_DOUBLE_EQ(s.autoscaling.interval_seconds, 30);
  EXPECT_EQ(s.autoscaling.gpu_budget, 64);
  EXPECT_EQ(s.autoscaling.prometheus_url, "http://prometheus.monitoring:9090");
  EXPECT_DOUBLE_EQ(s.autoscaling.scale_down_stabilization_seconds, 600);
  EXPECT_EQ(s.autoscaling.rebalance, "Off");
  EXPECT_EQ(s.topology.key, "example.com/rack");
  EXPECT_EQ(s.topology.policy, "Preferred");
  EXPECT_EQ(s.kv_transport, "tcp");
  EXPECT_EQ(s.TotalGpus(), 2 * 4 + 4 * 8);
  EXPECT_EQ(s.MinTotalGpus(), 1 * 4 + 2 * 8);
  EXPECT_TRUE(ValidatePoolSpec(s).empty()) << Dump(ValidatePoolSpec(s));
}

TEST(ParsePoolSpec, AbsentBoundsFollowReplicasWithoutContradictingTheOtherBound) {
  auto role = [](const char* json) {
    return MustParse(Json::parse(std::string(R"({"prefill": )") + json + "}")).prefill;
  };
  EXPECT_EQ(role(R"({"replicas": 3})"), (RoleSpec{3, 1, 3, 3}));
  EXPECT_EQ(role(R"({"replicas": 3, "maxReplicas": 8})"), (RoleSpec{3, 1, 3, 8}));
  EXPECT_EQ(role(R"({"replicas": 3, "maxReplicas": 2})"), (RoleSpec{3, 1, 2, 2}));
  EXPECT_EQ(role(R"({"replicas": 3, "minReplicas": 1})"), (RoleSpec{3, 1, 1, 3}));
  EXPECT_EQ(role(R"({"replicas": 3, "minReplicas": 5})"), (RoleSpec{3, 1, 5, 5}));
  EXPECT_EQ(role(R"({"minReplicas": 0, "maxReplicas": 4})"), (RoleSpec{1, 1, 0, 4}));
}

TEST(ParsePoolSpec, NullSpecParsesAndFailsValidationOnTheModel) {
  auto parsed = ParsePoolSpec(Json(nullptr));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  auto errors = ValidatePoolSpec(*parsed);
  EXPECT_EQ(MessagesAt(errors, "spec.model.name").size(), 1u) << Dump(errors);
  EXPECT_EQ(MessagesAt(errors, "spec.model.source").size(), 1u) << Dump(errors);
}

TEST(ParsePoolSpec, AcceptsIntegralFloatsAndNumericDurations) {
  Json spec = ValidSpec();
  spec["prefill"]["replicas"] = 2.0;
  spec["slo"] = {{"ttft", 3}, {"tpot", 0.25}};
  PoolSpec s = MustParse(spec);
  EXPECT_EQ(s.prefill.replicas, 2);
  EXPECT_DOUBLE_EQ(s.slo.ttft_seconds, 3);
  EXPECT_DOUBLE_EQ(s.slo.tpot_seconds, 0.25);
}

struct TypeErrorCase {
  const char* spec;   // JSON
  const char* field;  // the path the error must name
};

void PrintTo(const TypeErrorCase& c, std::ostream* os) { *os << c.field << " in " << c.spec; }

class ParsePoolSpecTypeError : public ::testing::TestWithParam<TypeErrorCase> {};

TEST_P(ParsePoolSpecTypeError, NamesTheField) {
  auto parsed = ParsePoolSpec(Json::parse(GetParam().spec));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parsed.status().message().rfind(std::string(GetParam().field) + ": ", 0), 0u)
      << parsed.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ParsePoolSpecTypeError,
    ::testing::Values(
        TypeErrorCase{R"([])", "spec"}, TypeErrorCase{R"({"model": "llama"})", "spec.model"},
        TypeErrorCase{R"({"model": {"name": 5}})", "spec.model.name"},
        TypeErrorCase{R"({"model": {"source": {"dummy": true}}})", "spec.model.source.dummy"},
        TypeErrorCase{R"({"model": {"source": {"dummy": {"seed": "1"}}}})",
                      "spec.model.source.dummy.seed"},
        TypeErrorCase{R"({"backend": ["cuda"]})", "spec.backend"},
        TypeErrorCase{R"({"prefill": {"replicas": "2"}})", "spec.prefill.replicas"},
        TypeErrorCase{R"({"prefill": {"replicas": 1.5}})", "spec.prefill.replicas"},
        TypeErrorCase{R"({"decode": {"gpusPerReplica": 4000000000}})",
                      "spec.decode.gpusPerReplica"},
        TypeErrorCase{R"({"decode": {"maxReplicas": null, "minReplicas": {}}})",
                      "spec.decode.minReplicas"},
        TypeErrorCase{R"({"router": {"replicas": true}})", "spec.router.replicas"},
        TypeErrorCase{R"({"template": []})", "spec.template"},
        TypeErrorCase{R"({"slo": "fast"})", "spec.slo"},
        TypeErrorCase{R"({"slo": {"ttft": true}})", "spec.slo.ttft"},
        TypeErrorCase{R"({"slo": {"tpot": "2x"}})", "spec.slo.tpot"},
        TypeErrorCase{R"({"autoscaling": {"enabled": "yes"}})", "spec.autoscaling.enabled"},
        TypeErrorCase{R"({"autoscaling": {"interval": "soon"}})", "spec.autoscaling.interval"},
        TypeErrorCase{R"({"autoscaling": {"prometheus": {"url": 9090}}})",
                      "spec.autoscaling.prometheus.url"},
        TypeErrorCase{R"({"topology": {"policy": 1}})", "spec.topology.policy"},
        TypeErrorCase{R"({"kvTransfer": {"transport": false}})", "spec.kvTransfer.transport"}));

TEST(ParsePoolSpec, MalformedDurationMessageShowsTheValueAndExamples) {
  auto parsed = ParsePoolSpec(Json::parse(R"({"slo": {"ttft": "2 seconds"}})"));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "spec.slo.ttft: \"2 seconds\" is not a duration (examples: 2s, 100ms, 1m30s, 1.5h)");
}

// ---------------------------------------------------------------------------------------------
// Validation rules

TEST(ValidatePoolSpec, ValidSpecHasNoErrors) {
  auto errors = Errors(ValidSpec());
  EXPECT_TRUE(errors.empty()) << Dump(errors);
}

TEST(ValidatePoolSpec, MinGreaterThanMaxNamesBothValues) {
  Json spec = ValidSpec();
  spec["prefill"] = {{"replicas", 2}, {"minReplicas", 5}, {"maxReplicas", 2}};
  auto errors = Errors(spec);
  ASSERT_EQ(errors.size(), 1u) << Dump(errors);  // replicas-in-range is not piled on top
  EXPECT_EQ(errors[0].field, "spec.prefill.minReplicas");
  EXPECT_EQ(errors[0].message, "minReplicas (5) must be <= maxReplicas (2)");
}

TEST(ValidatePoolSpec, ReplicasMustBeWithinBoundsEvenWithAutoscalingOff) {
  for (bool autoscaling : {false, true}) {
    Json spec = ValidSpec();
    spec["autoscaling"]["enabled"] = autoscaling;
    spec["decode"] = {{"replicas", 3}, {"minReplicas", 1}, {"maxReplicas", 2}};
    auto errors = Errors(spec);
    ASSERT_EQ(errors.size(), 1u) << Dump(errors);
    EXPECT_EQ(errors[0].field, "spec.decode.replicas");
    EXPECT_EQ(errors[0].message, "replicas (3) must be within [minReplicas (1), maxReplicas (2)]");

    spec["decode"]["replicas"] = 0;
    errors = Errors(spec);
    EXPECT_EQ(MessagesAt(errors, "spec.decode.replicas").size(), 1u) << Dump(errors);
  }
}

TEST(ValidatePoolSpec, RoleRanges) {
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.prefill.gpusPerReplica", 0), "spec.prefill.gpusPerReplica"),
            std::vector<std::string>{"gpusPerReplica (0) must be within [1, 72]"});
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.decode.gpusPerReplica", 73), "spec.decode.gpusPerReplica"),
            std::vector<std::string>{"gpusPerReplica (73) must be within [1, 72]"});
  EXPECT_TRUE(ErrorsWith("spec.decode.gpusPerReplica", 72).empty());
  EXPECT_FALSE(
      MessagesAt(ErrorsWith("spec.prefill.replicas", -1), "spec.prefill.replicas").empty());
  EXPECT_FALSE(
      MessagesAt(ErrorsWith("spec.decode.maxReplicas", 1025), "spec.decode.maxReplicas").empty());
  EXPECT_FALSE(MessagesAt(ErrorsWith("spec.router.replicas", -1), "spec.router.replicas").empty());
  EXPECT_TRUE(ErrorsWith("spec.router.replicas", 0).empty());
}

TEST(ValidatePoolSpec, ModelNameIsRequired) {
  auto errors = ErrorsWith("spec.model.name", "");
  ASSERT_EQ(errors.size(), 1u) << Dump(errors);
  EXPECT_EQ(errors[0].field, "spec.model.name");
}

TEST(ValidatePoolSpec, UnknownPresetListsTheKnownOnes) {
  auto errors = ErrorsWith("spec.model.preset", "llama-4");
  ASSERT_EQ(errors.size(), 1u) << Dump(errors);
  EXPECT_EQ(errors[0].field, "spec.model.preset");
  EXPECT_EQ(errors[0].message,
            "unknown preset \"llama-4\"; known: test-tiny, llama-3.2-1b, llama-3.1-8b, "
            "llama-3.1-70b, llama-3.1-405b");
  for (const auto& preset : KnownPresets()) {
    EXPECT_TRUE(ErrorsWith("spec.model.preset", preset).empty()) << preset;
  }
}

TEST(ValidatePoolSpec, PresetIsRequiredWithDummyWeightsOnly) {
  Json spec = ValidSpec();
  spec["model"].erase("preset");
  auto errors = Errors(spec);
  ASSERT_EQ(errors.size(), 1u) << Dump(errors);
  EXPECT_EQ(errors[0].field, "spec.model.preset");
  EXPECT_NE(errors[0].message.find("dummy"), std::string::npos) << errors[0].message;

  spec["model"]["source"] = {{"path", "/models/x"}};  // shape from config.json
  errors = Errors(spec);
  EXPECT_TRUE(errors.empty()) << Dump(errors);
}

TEST(ValidatePoolSpec, SourceNeedsExactlyOneOfPathOrDummy) {
  Json spec = ValidSpec();
  spec["model"]["source"] = Json::object();
  auto errors = Errors(spec);
  EXPECT_EQ(MessagesAt(errors, "spec.model.source").size(), 1u) << Dump(errors);

  spec["model"].erase("source");
  errors = Errors(spec);
  EXPECT_EQ(MessagesAt(errors, "spec.model.source").size(), 1u) << Dump(errors);

  spec["model"]["source"] = {{"path", "/models/x"}, {"dummy", {{"seed", 1}}}};
  errors = Errors(spec);
  EXPECT_EQ(MessagesAt(errors, "spec.model.source"),
            std::vector<std::string>{"set exactly one of path or dummy, not both"});
}

TEST(ValidatePoolSpec, SourcePathMustBeAbsoluteAndSeedNonNegative) {
  Json spec = ValidSpec();
  spec["model"]["source"] = {{"path", "models/x"}};
  EXPECT_EQ(MessagesAt(Errors(spec), "spec.model.source.path").size(), 1u);
  EXPECT_EQ(
      MessagesAt(ErrorsWith("spec.model.source.dummy.seed", -1), "spec.model.source.dummy.seed"),
      std::vector<std::string>{"seed (-1) must be >= 0"});
}

TEST(ValidatePoolSpec, DurationsMustBePositive) {
  for (const char* field : {"spec.slo.ttft", "spec.slo.tpot", "spec.autoscaling.interval"}) {
    auto errors = ErrorsWith(field, "0s");
    EXPECT_EQ(MessagesAt(errors, field),
              std::vector<std::string>{"must be a duration greater than 0, got 0s"})
        << field << "\n"
        << Dump(errors);
    EXPECT_EQ(MessagesAt(ErrorsWith(field, -2), field).size(), 1u) << field;
    EXPECT_TRUE(ErrorsWith(field, "1ms").empty()) << field;
  }
  // Zero stabilization means "scale down at once"; negative is wrong.
  EXPECT_TRUE(ErrorsWith("spec.autoscaling.scaleDownStabilization", "0s").empty());
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.autoscaling.scaleDownStabilization", -1),
                       "spec.autoscaling.scaleDownStabilization")
                .size(),
            1u);
}

TEST(ValidatePoolSpec, PercentileRange) {
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.slo.percentile", 49), "spec.slo.percentile"),
            std::vector<std::string>{"percentile (49) must be within [50, 100]"});
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.slo.percentile", 101), "spec.slo.percentile").size(), 1u);
  EXPECT_TRUE(ErrorsWith("spec.slo.percentile", 50).empty());
  EXPECT_TRUE(ErrorsWith("spec.slo.percentile", 100).empty());
}

TEST(ValidatePoolSpec, GpuBudgetMustCoverTheMinimumReplicas) {
  Json spec = ValidSpec();
  spec["prefill"] = {
      {"replicas", 1}, {"gpusPerReplica", 4}, {"minReplicas", 1}, {"maxReplicas", 4}};
  spec["decode"] = {{"replicas", 2}, {"gpusPerReplica", 4}, {"minReplicas", 2}, {"maxReplicas", 8}};
  spec["autoscaling"] = {{"enabled", true}, {"gpuBudget", 11}};
  auto errors = Errors(spec);
  EXPECT_EQ(MessagesAt(errors, "spec.autoscaling.gpuBudget"),
            std::vector<std::string>{"gpuBudget (11) must be >= the GPUs the minimum replicas "
                                     "hold (12: prefill 1x4 + decode 2x4), or 0 for no budget"})
      << Dump(errors);
  spec["autoscaling"]["gpuBudget"] = 12;
  EXPECT_TRUE(Errors(spec).empty()) << Dump(Errors(spec));
  spec["autoscaling"]["gpuBudget"] = 0;  // no budget
  EXPECT_TRUE(Errors(spec).empty()) << Dump(Errors(spec));
  spec["autoscaling"]["gpuBudget"] = -1;
  EXPECT_EQ(MessagesAt(Errors(spec), "spec.autoscaling.gpuBudget"),
            std::vector<std::string>{"gpuBudget (-1) must be within [0, 1000000]"});
}

TEST(ValidatePoolSpec, EnumsNameTheAllowedValues) {
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.backend", "rocm"), "spec.backend"),
            std::vector<std::string>{"must be one of cuda, cpu, sim; got \"rocm\""});
  EXPECT_EQ(
      MessagesAt(ErrorsWith("spec.autoscaling.rebalance", "off"), "spec.autoscaling.rebalance"),
      std::vector<std::string>{"must be one of InPlace, Recreate, Off; got \"off\""});
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.topology.policy", "Strict"), "spec.topology.policy").size(),
            1u);
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.kvTransfer.transport", "rdma"), "spec.kvTransfer.transport")
                .size(),
            1u);
}

TEST(ValidatePoolSpec, GpuTransportsNeedAGpuBackend) {
  Json spec = ValidSpec();
  spec["backend"] = "cpu";
  for (const char* transport : {"nccl", "cuda-ipc"}) {
    spec["kvTransfer"]["transport"] = transport;
    EXPECT_EQ(MessagesAt(Errors(spec), "spec.kvTransfer.transport").size(), 1u) << transport;
  }
  for (const char* transport : {"auto", "tcp"}) {
    spec["kvTransfer"]["transport"] = transport;
    EXPECT_TRUE(Errors(spec).empty()) << transport;
  }
  spec["backend"] = "sim";
  spec["kvTransfer"]["transport"] = "nccl";
  EXPECT_TRUE(Errors(spec).empty());
}

TEST(ValidatePoolSpec, CudaBackendRunsOneGpuPerWorker) {
  Json spec = ValidSpec();
  spec["backend"] = "cuda";
  spec["prefill"]["gpusPerReplica"] = 1;
  spec["decode"]["gpusPerReplica"] = 4;
  auto errors = Errors(spec);
  EXPECT_TRUE(MessagesAt(errors, "spec.prefill.gpusPerReplica").empty()) << Dump(errors);
  ASSERT_EQ(MessagesAt(errors, "spec.decode.gpusPerReplica").size(), 1u) << Dump(errors);
  EXPECT_NE(MessagesAt(errors, "spec.decode.gpusPerReplica")[0].find("backend cuda"),
            std::string::npos);
  spec["backend"] = "sim";  // the sim backend models tensor parallelism
  EXPECT_TRUE(Errors(spec).empty()) << Dump(Errors(spec));
}

TEST(ValidatePoolSpec, TopologyKeyMustBeALabelKey) {
  for (const char* key : {"nvidia.com/gpu.clique", "rack", "example.com/a_b-c.d"}) {
    EXPECT_TRUE(ErrorsWith("spec.topology.key", key).empty()) << key;
  }
  for (const char* key : {"", "Nvidia.com/x", "a/b/c", "-x", "x-", "has space"}) {
    EXPECT_EQ(MessagesAt(ErrorsWith("spec.topology.key", key), "spec.topology.key").size(), 1u)
        << key;
  }
  EXPECT_EQ(
      MessagesAt(ErrorsWith("spec.topology.key", std::string(64, 'a')), "spec.topology.key").size(),
      1u);
}

TEST(ValidatePoolSpec, PrometheusUrlAndImage) {
  EXPECT_TRUE(ErrorsWith("spec.autoscaling.prometheus.url", "https://prom:9090").empty());
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.autoscaling.prometheus.url", "prom:9090"),
                       "spec.autoscaling.prometheus.url")
                .size(),
            1u);
  EXPECT_EQ(MessagesAt(ErrorsWith("spec.image", ""), "spec.image").size(), 1u);
}

TEST(ValidatePoolSpec, ReportsEveryProblemAtOnce) {
  Json spec = ValidSpec();
  spec["model"]["name"] = "";
  spec["backend"] = "tpu";
  spec["decode"] = {{"replicas", 1}, {"minReplicas", 4}, {"maxReplicas", 2}};
  spec["slo"] = {{"ttft", "0s"}, {"percentile", 10}};
  auto errors = Errors(spec);
  std::vector<std::string> fields;
  for (const auto& e : errors) fields.push_back(e.field);
  EXPECT_EQ(fields,
            (std::vector<std::string>{"spec.model.name", "spec.backend", "spec.decode.minReplicas",
                                      "spec.slo.ttft", "spec.slo.percentile"}))
      << Dump(errors);
}

// ---------------------------------------------------------------------------------------------
// Durations

TEST(ParseDurationSeconds, Accepts) {
  struct Case {
    const char* text;
    double seconds;
  };
  for (const Case& c : {Case{"2s", 2}, Case{"100ms", 0.1}, Case{"1m30s", 90}, Case{"1.5h", 5400},
                        Case{"300s", 300}, Case{"0s", 0}, Case{"2", 2}, Case{"0.5", 0.5},
                        Case{"1h1m1s1ms", 3661.001}, Case{"1m", 60}, Case{"0.25s", 0.25}}) {
    double seconds = -1;
    EXPECT_TRUE(ParseDurationSeconds(c.text, &seconds)) << c.text;
    EXPECT_NEAR(seconds, c.seconds, 1e-9) << c.text;
  }
}

TEST(ParseDurationSeconds, Rejects) {
  for (const char* text :
       {"",    "s",  "ms",  "-1s", "+1s",  "-1",  "2x",  "1.s", ".5s",  "1.5.5s", "2 s",
        "2s ", "1d", "1us", "1ns", "1e3s", "1e3", "inf", "nan", "1m30", "s2"}) {
    double seconds = 42;
    EXPECT_FALSE(ParseDurationSeconds(text, &seconds)) << text;
    EXPECT_EQ(seconds, 42) << "left untouched on failure: " << text;
  }
}

// ---------------------------------------------------------------------------------------------
// Agreement with the CRD and the samples

class PoolSpecCrd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::path path = SourceDir() / "crds" / "inferencepools.pdpool.dev.yaml";
    ASSERT_TRUE(fs::exists(path)) << path << " (set PDPOOL_SOURCE_DIR to the source tree)";
    crd_ = new Json(LoadYaml(path));
  }
  static void TearDownTestSuite() {
    delete crd_;
    crd_ = nullptr;
  }

  static const Json& Version() { return (*crd_)["spec"]["versions"][0]; }
  static const Json& Root() { return Version()["schema"]["openAPIV3Schema"]; }

  // The schema node at a JSON path ("spec.slo.ttft", "status.prefill"), or nullptr.
  static const Json* Node(const std::string& path) {
    const Json* cur = &Root();
    size_t start = 0;
    while (start <= path.size()) {
      size_t dot = path.find('.', start);
      if (dot == std::string::npos) dot = path.size();
      std::string key = path.substr(start, dot - start);
      if (!cur->contains("properties") || !(*cur)["properties"].contains(key)) return nullptr;
      cur = &(*cur)["properties"][key];
      start = dot + 1;
    }
    return cur;
  }

  // Calls fn(path, node) for every property under the node at `path`, depth first.
  static void Walk(const std::string& path, const Json& node,
                   const std::function<void(const std::string&, const Json&)>& fn) {
    fn(path, node);
    if (node.contains("properties")) {
      for (const auto& [key, child] : node["properties"].items()) Walk(path + "." + key, child, fn);
    }
    if (node.contains("items")) Walk(path + "[]", node["items"], fn);
  }

  // Leaves under spec: properties without properties of their own (template included).
  static std::vector<std::string> SpecLeaves() {
    std::vector<std::string> leaves;
    Walk("spec", *Node("spec"), [&](const std::string& path, const Json& node) {
      if (!node.contains("properties")) leaves.push_back(path);
    });
    return leaves;
  }

  // The problems the API server's schema check would find in value at path (types, enums,
  // bounds, lengths, patterns, required, oneOf-required, unknown fields). Enough of
  // OpenAPI v3 for this CRD, not a general validator.
  static void SchemaErrors(const Json& schema, const Json& value, const std::string& path,
                           std::vector<std::string>* out) {
    const std::string type = schema.value("type", "");
    auto fail = [&](const std::string& why) { out->push_back(path + ": " + why); };
    if (type == "object") {
      if (!value.is_object()) return fail("not an object");
      const bool open = schema.value("x-kubernetes-preserve-unknown-fields", false);
      const Json props = schema.value("properties", Json::object());
      for (const auto& [key, child] : value.items()) {
        if (props.contains(key)) {
          SchemaErrors(props[key], child, path + "." + key, out);
        } else if (!open) {
          fail("unknown field " + key);
        }
      }
      for (const auto& key : schema.value("required", Json::array())) {
        if (!value.contains(key.get<std::string>())) fail("missing " + key.get<std::string>());
      }
      if (schema.contains("oneOf")) {
        int matched = 0;
        for (const auto& alt : schema["oneOf"]) {
          bool all = true;
          for (const auto& key : alt["required"])
            all = all && value.contains(key.get<std::string>());
          matched += all ? 1 : 0;
        }
        if (matched != 1) fail("must match exactly one of oneOf");
      }
      return;
    }
    if (type == "array") {
      if (!value.is_array()) return fail("not an array");
      for (size_t i = 0; i < value.size(); ++i) {
        SchemaErrors(schema["items"], value[i], path + "[" + std::to_string(i) + "]", out);
      }
      return;
    }
    if (type == "integer" && !value.is_number_integer()) return fail("not an integer");
    if (type == "number" && !value.is_number()) return fail("not a number");
    if (type == "boolean" && !value.is_boolean()) return fail("not a boolean");
    if (type == "string" && !value.is_string()) return fail("not a string");
    if (schema.contains("enum") &&
        std::find(schema["enum"].begin(), schema["enum"].end(), value) == schema["enum"].end()) {
      fail("not in enum");
    }
    if (schema.contains("minimum") && value.get<double>() < schema["minimum"].get<double>()) {
      fail("below minimum");
    }
    if (schema.contains("maximum") && value.get<double>() > schema["maximum"].get<double>()) {
      fail("above maximum");
    }
    if (value.is_string()) {
      const std::string s = value.get<std::string>();
      if (schema.contains("minLength") && s.size() < schema["minLength"].get<size_t>()) {
        fail("shorter than minLength");
      }
      if (schema.contains("maxLength") && s.size() > schema["maxLength"].get<size_t>()) {
        fail("longer than maxLength");
      }
      if (schema.contains("pattern") &&
          !std::regex_search(s, std::regex(schema["pattern"].get<std::string>()))) {
        fail("does not match pattern");
      }
    }
  }

  static std::vector<std::string> SchemaErrorsForSpec(const Json& spec) {
    std::vector<std::string> out;
    SchemaErrors(*Node("spec"), spec, "spec", &out);
    return out;
  }

  static Json* crd_;
};

Json* PoolSpecCrd::crd_ = nullptr;

// Fields that deliberately have no schema default: required, derived from other fields, or
// meaningful only when set.
const std::set<std::string> kNoSchemaDefault = {"spec.model.name",
                                                "spec.model.preset",
                                                "spec.model.source.path",
                                                "spec.prefill.minReplicas",
                                                "spec.prefill.maxReplicas",
                                                "spec.decode.minReplicas",
                                                "spec.decode.maxReplicas",
                                                "spec.autoscaling.prometheus.url",
                                                "spec.template"};

TEST_F(PoolSpecCrd, Identity) {
  const Json& crd = *crd_;
  EXPECT_EQ(crd["apiVersion"], "apiextensions.k8s.io/v1");
  EXPECT_EQ(crd["kind"], "CustomResourceDefinition");
  EXPECT_EQ(crd["metadata"]["name"], "inferencepools.pdpool.dev");
  EXPECT_EQ(crd["spec"]["group"], "pdpool.dev");
  EXPECT_EQ(crd["spec"]["scope"], "Namespaced");
  const Json& names = crd["spec"]["names"];
  EXPECT_EQ(names["kind"], "InferencePool");
  EXPECT_EQ(names["plural"], "inferencepools");
  EXPECT_EQ(names["singular"], "inferencepool");
  EXPECT_EQ(names["shortNames"], Json::parse(R"(["ipool", "pdp"])"));
  EXPECT_EQ(names["categories"], Json::parse(R"(["pdpool"])"));
  ASSERT_EQ(crd["spec"]["versions"].size(), 1u);
  EXPECT_EQ(Version()["name"], "v1alpha1");
  EXPECT_EQ(Version()["served"], true);
  EXPECT_EQ(Version()["storage"], true);
  EXPECT_EQ(Version()["subresources"], Json::parse(R"({"status": {}})"));
}

TEST_F(PoolSpecCrd, UsesNothingAKubernetes120ServerRefuses) {
  std::function<void(const Json&, const std::string&)> scan = [&](const Json& j,
                                                                  const std::string& where) {
    if (j.is_object()) {
      for (const auto& [key, child] : j.items()) {
        EXPECT_NE(key, "x-kubernetes-validations") << where;  // CEL: 1.25+
        scan(child, where + "." + key);
      }
    } else if (j.is_array()) {
      for (const auto& child : j) scan(child, where + "[]");
    }
  };
  scan(*crd_, "");
}

TEST_F(PoolSpecCrd, SchemaIsStructural) {
  Walk("", Root(), [&](const std::string& path, const Json& node) {
    if (path == ".metadata") return;
    EXPECT_TRUE(node.contains("type")) << path << " has no type";
    for (const auto& key : node.value("required", Json::array())) {
      EXPECT_TRUE(node["properties"].contains(key.get<std::string>()))
          << path << " requires " << key;
    }
    for (const auto& alt : node.value("oneOf", Json::array())) {
      for (const auto& key : alt.items()) {
        EXPECT_EQ(key.key(), "required") << path << ": only required inside oneOf";
      }
      for (const auto& key : alt["required"]) {
        EXPECT_TRUE(node["properties"].contains(key.get<std::string>())) << path;
      }
    }
    if (node.contains("default")) {
      std::vector<std::string> errors;
      SchemaErrors(node, node["default"], path, &errors);
      EXPECT_TRUE(errors.empty()) << path << " default is invalid: " << errors[0];
    }
  });
}

TEST_F(PoolSpecCrd, EveryPropertyHasADescription) {
  Walk("", Root(), [&](const std::string& path, const Json& node) {
    if (path == ".metadata") return;
    EXPECT_FALSE(node.value("description", "").empty()) << path << " has no description";
  });
}

TEST_F(PoolSpecCrd, EveryFieldTheParserReadsIsInTheSchemaWithADescription) {
  auto paths = PoolSpecFieldPaths();
  ASSERT_GT(paths.size(), 20u);
  for (const auto& path : paths) {
    const Json* node = Node(path);
    ASSERT_NE(node, nullptr) << path << " is read by ParsePoolSpec but missing from the CRD";
    EXPECT_FALSE(node->value("description", "").empty()) << path;
  }
}

TEST_F(PoolSpecCrd, EverySchemaFieldIsReadByTheParser) {
  auto paths = PoolSpecFieldPaths();
  std::set<std::string> read(paths.begin(), paths.end());
  for (const auto& leaf : SpecLeaves()) {
    EXPECT_TRUE(read.count(leaf)) << leaf << " is in the CRD but ParsePoolSpec ignores it";
  }
}

TEST_F(PoolSpecCrd, SchemaDefaultsEqualTheParserDefaults) {
  // Named, so a failure reads plainly.
  EXPECT_EQ((*Node("spec.slo.percentile"))["default"], PoolSpec{}.slo.percentile);
  EXPECT_EQ((*Node("spec.topology.key"))["default"], PoolSpec{}.topology.key);
  EXPECT_EQ((*Node("spec.kvTransfer.transport"))["default"], PoolSpec{}.kv_transport);

  // All of them: a spec holding every schema default parses to what an empty spec parses to.
  Json minimal = Json::parse(R"({"model": {"name": "m", "source": {"dummy": {}}}})");
  Json with_defaults = minimal;
  for (const auto& leaf : SpecLeaves()) {
    const Json* node = Node(leaf);
    if (node->contains("default")) with_defaults[SpecPointer(leaf)] = (*node)["default"];
  }
  PoolSpec a = MustParse(minimal);
  PoolSpec b = MustParse(with_defaults);
  EXPECT_TRUE(a == b) << "schema defaults: " << with_defaults.dump();
}

TEST_F(PoolSpecCrd, OnlyDerivedOrOptionalFieldsLackDefaults) {
  for (const auto& leaf : SpecLeaves()) {
    const bool has_default = Node(leaf)->contains("default");
    EXPECT_NE(has_default, kNoSchemaDefault.count(leaf) > 0) << leaf;
  }
}

TEST_F(PoolSpecCrd, ObjectsDefaultToEmptySoTheServerFillsTheirFields) {
  // The server applies a nested default only when the parent object exists.
  for (const char* path : {"spec.prefill", "spec.decode", "spec.router", "spec.slo",
                           "spec.autoscaling", "spec.topology", "spec.kvTransfer"}) {
    ASSERT_NE(Node(path), nullptr) << path;
    EXPECT_EQ(Node(path)->value("default", Json()), Json::object()) << path;
  }
}

TEST_F(PoolSpecCrd, RequiredFieldsAgree) {
  EXPECT_EQ(Root()["required"], Json::parse(R"(["spec"])"));
  EXPECT_EQ((*Node("spec"))["required"], Json::parse(R"(["model"])"));
  EXPECT_EQ((*Node("spec.model"))["required"], Json::parse(R"(["name", "source"])"));
  EXPECT_EQ((*Node("spec.model.source"))["oneOf"],
            Json::parse(R"([{"required": ["path"]}, {"required": ["dummy"]}])"));
}

TEST_F(PoolSpecCrd, EnumsAgreeWithValidation) {
  for (const auto& leaf : SpecLeaves()) {
    const Json* node = Node(leaf);
    if (!node->contains("enum")) continue;
    for (const auto& value : (*node)["enum"]) {
      auto errors = ErrorsWith(leaf, value);
      EXPECT_TRUE(errors.empty()) << leaf << "=" << value << "\n" << Dump(errors);
    }
    EXPECT_FALSE(MessagesAt(ErrorsWith(leaf, "Bogus"), leaf).empty()) << leaf;
  }
  std::vector<std::string> presets;
  for (const auto& p : (*Node("spec.model.preset"))["enum"]) presets.push_back(p);
  EXPECT_EQ(presets, KnownPresets());
}

TEST_F(PoolSpecCrd, BoundsAgreeWithValidation) {
  int checked = 0;
  for (const auto& leaf : SpecLeaves()) {
    const Json* node = Node(leaf);
    if (node->contains("minimum")) {
      int64_t min = (*node)["minimum"];
      EXPECT_TRUE(MessagesAt(ErrorsWith(leaf, min), leaf).empty()) << leaf << "=" << min;
      EXPECT_FALSE(MessagesAt(ErrorsWith(leaf, min - 1), leaf).empty()) << leaf << "=" << min - 1;
      ++checked;
    }
    if (node->contains("maximum")) {
      int64_t max = (*node)["maximum"];
      EXPECT_TRUE(MessagesAt(ErrorsWith(leaf, max), leaf).empty()) << leaf << "=" << max;
      EXPECT_FALSE(MessagesAt(ErrorsWith(leaf, max + 1), leaf).empty()) << leaf << "=" << max + 1;
      ++checked;
    }
  }
  EXPECT_GE(checked, 15);
}

TEST_F(PoolSpecCrd, PatternsAgreeWithTheParserAndValidation) {
  const std::string duration = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$";
  const std::vector<std::string> duration_fields = {"spec.slo.ttft", "spec.slo.tpot",
                                                    "spec.autoscaling.interval",
                                                    "spec.autoscaling.scaleDownStabilization"};
  // Strings with a unit: the schema and ParseDurationSeconds agree on each (bare numbers are
  // the parser's extra, for pools stored without the schema).
  const std::vector<std::string> duration_samples = {"2s",  "100ms", "1m30s", "1.5h", "0s",  "1h1m",
                                                     "s",   "2x",    "1.s",   ".5s",  "-1s", "1d",
                                                     "2 s", "1us",   "1m30",  ""};
  // Per patterned field: samples, and whether the controller accepts each.
  struct Sample {
    std::string value;
    bool valid;
  };
  const std::map<std::string, std::vector<Sample>> samples = {
      {"spec.topology.key",
       {{"nvidia.com/gpu.clique", true},
        {"rack", true},
        {"a.b/c_d-e.f", true},
        {"Nvidia.com/x", false},
        {"a/b/c", false},
        {"-x", false},
        {"x-", false},
        {"has space", false},
        {"", false}}},
      {"spec.autoscaling.prometheus.url",
       {{"http://prometheus.monitoring:9090", true},
        {"https://p", true},
        {"prom:9090", false},
        {"http://", false},
        {"ftp://p", false}}},
      {"spec.model.source.path", {{"/models/x", true}, {"models/x", false}, {"./x", false}}},
  };

  std::set<std::string> patterned;
  for (const auto& leaf : SpecLeaves()) {
    if (Node(leaf)->contains("pattern")) patterned.insert(leaf);
  }
  for (const auto& field : duration_fields) {
    ASSERT_TRUE(patterned.count(field)) << field;
    EXPECT_EQ((*Node(field))["pattern"], duration) << field;
    patterned.erase(field);
    Json spec = ValidSpec();
    spec[SpecPointer(field)] = "2x";
    auto parsed = ParsePoolSpec(spec);
    ASSERT_FALSE(parsed.ok()) << field;
    EXPECT_EQ(parsed.status().message().rfind(field + ": ", 0), 0u) << parsed.status().message();
  }
  const std::regex duration_re(duration);
  for (const auto& s : duration_samples) {
    double seconds = 0;
    EXPECT_EQ(std::regex_search(s, duration_re), ParseDurationSeconds(s, &seconds)) << s;
  }
  for (const auto& [field, cases] : samples) {
    ASSERT_TRUE(patterned.count(field)) << field << " has no pattern in the CRD";
    patterned.erase(field);
    for (const auto& sample : cases) {
      Json spec = ValidSpec();
      if (field == "spec.model.source.path") spec["model"]["source"] = Json::object();
      spec[SpecPointer(field)] = sample.value;
      EXPECT_EQ(SchemaErrorsForSpec(spec).empty(), sample.valid) << field << "=" << sample.value;
      EXPECT_EQ(MessagesAt(Errors(spec), field).empty(), sample.valid)
          << field << "=" << sample.value;
    }
  }
  EXPECT_TRUE(patterned.empty()) << "pattern without an agreement test: " << *patterned.begin();
}

TEST_F(PoolSpecCrd, ValidSpecPassesTheSchema) {
  auto errors = SchemaErrorsForSpec(ValidSpec());
  EXPECT_TRUE(errors.empty()) << errors[0];
  // And the checker does refuse things, so the sample checks below can fail.
  Json bad = ValidSpec();
  bad["prefill"]["gpusPerReplica"] = 0;
  bad["prefil"] = Json::object();
  EXPECT_EQ(SchemaErrorsForSpec(bad).size(), 2u);
}

TEST_F(PoolSpecCrd, StatusSchemaHoldsWhatTheControllerWrites) {
  const Json& conditions = *Node("status.conditions");
  EXPECT_EQ(conditions["type"], "array");
  EXPECT_EQ(conditions["x-kubernetes-list-type"], "map");
  EXPECT_EQ(conditions["x-kubernetes-list-map-keys"], Json::parse(R"(["type"])"));
  const Json& item = conditions["items"];
  for (const char* field :
       {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}) {
    EXPECT_TRUE(item["properties"].contains(field)) << field;
  }
  EXPECT_EQ(item["properties"]["status"]["enum"], Json::parse(R"(["True", "False", "Unknown"])"));
  EXPECT_EQ(item["properties"]["lastTransitionTime"]["format"], "date-time");
  for (const char* path :
       {"status.observedGeneration", "status.prefill.replicas", "status.prefill.readyReplicas",
        "status.prefill.desiredReplicas", "status.decode.replicas", "status.decode.readyReplicas",
        "status.decode.desiredReplicas", "status.router.replicas", "status.router.readyReplicas",
        "status.placement.domain", "status.placement.gpus", "status.placement.policy",
        "status.lastScale.time", "status.lastScale.reason"}) {
    EXPECT_NE(Node(path), nullptr) << path;
  }
  for (const char* path : {"status.observed.requestRate", "status.observed.ttftP90",
                           "status.observed.tpotP90", "status.observed.sloAttainment"}) {
    ASSERT_NE(Node(path), nullptr) << path;
    EXPECT_EQ((*Node(path))["type"], "number") << path;
  }
}

TEST_F(PoolSpecCrd, PrinterColumnsPointAtSchemaFields) {
  std::vector<std::string> names;
  for (const auto& column : Version()["additionalPrinterColumns"]) {
    const std::string name = column["name"];
    const std::string json_path = column["jsonPath"];
    names.push_back(name);
    if (json_path == ".metadata.creationTimestamp") continue;
    if (json_path == ".status.conditions[?(@.type==\"Ready\")].status") continue;
    const Json* node = Node(json_path.substr(1));
    ASSERT_NE(node, nullptr) << name << ": " << json_path;
    const std::string type = column["type"];
    EXPECT_EQ(type, (*node)["type"].get<std::string>()) << name;
  }
  for (const char* want :
       {"P-Ready", "P-Desired", "D-Ready", "D-Desired", "TTFT", "TPOT", "Domain", "Ready", "Age"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
}

// ---------------------------------------------------------------------------------------------
// Samples

class PoolSpecSamples : public PoolSpecCrd {
 protected:
  static Json Load(const char* name) {
    fs::path path = SourceDir() / "deploy" / "samples" / name;
    EXPECT_TRUE(fs::exists(path)) << path;
    Json doc = LoadYaml(path);
    EXPECT_EQ(doc["apiVersion"], "pdpool.dev/v1alpha1") << name;
    EXPECT_EQ(doc["kind"], "InferencePool") << name;
    auto errors = SchemaErrorsForSpec(doc["spec"]);
    EXPECT_TRUE(errors.empty()) << name << ": the API server would refuse it: " << errors[0];
    return doc["spec"];
  }
};

TEST_F(PoolSpecSamples, Llama70bSimIsAValidFixedSizePool) {
  PoolSpec s = MustParse(Load("llama-70b-sim.yaml"));
  EXPECT_TRUE(ValidatePoolSpec(s).empty()) << Dump(ValidatePoolSpec(s));
  EXPECT_EQ(s.model.preset, "llama-3.1-70b");
  EXPECT_EQ(s.model.dummy_seed, std::optional<int64_t>(1));
  EXPECT_EQ(s.backend, "sim");
  EXPECT_EQ(s.prefill.replicas, 2);
  EXPECT_EQ(s.prefill.gpus_per_replica, 4);
  EXPECT_EQ(s.decode.replicas, 4);
  EXPECT_EQ(s.decode.gpus_per_replica, 4);
  EXPECT_EQ(s.router_replicas, 1);
  EXPECT_EQ(s.TotalGpus(), 24);
  EXPECT_DOUBLE_EQ(s.slo.ttft_seconds, 2);
  EXPECT_DOUBLE_EQ(s.slo.tpot_seconds, 0.2);
  EXPECT_EQ(s.slo.percentile, 90);
  EXPECT_FALSE(s.autoscaling.enabled);
  EXPECT_EQ(s.autoscaling.rebalance, "InPlace");
}

TEST_F(PoolSpecSamples, TinyCpuIsValid) {
  PoolSpec s = MustParse(Load("tiny-cpu.yaml"));
  EXPECT_TRUE(ValidatePoolSpec(s).empty()) << Dump(ValidatePoolSpec(s));
  EXPECT_EQ(s.model.preset, "test-tiny");
  EXPECT_EQ(s.backend, "cpu");
  EXPECT_EQ(s.prefill, (RoleSpec{1, 1, 1, 1}));
  EXPECT_EQ(s.decode, (RoleSpec{1, 1, 1, 1}));
}

TEST_F(PoolSpecSamples, InvalidMinGtMaxPassesTheSchemaButNotTheController) {
  PoolSpec s = MustParse(Load("invalid-min-gt-max.yaml"));
  auto errors = ValidatePoolSpec(s);
  ASSERT_EQ(errors.size(), 1u) << Dump(errors);
  EXPECT_EQ(errors[0].field, "spec.prefill.minReplicas");
  EXPECT_EQ(errors[0].message, "minReplicas (3) must be <= maxReplicas (2)");
}

}  // namespace
}  // namespace pdpool::controller
