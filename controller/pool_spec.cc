// ParsePoolSpec / ValidatePoolSpec: the InferencePool spec as the controller sees it. The
// parser applies the CRD's defaults itself, because a pool may be stored before the CRD (or an
// older CRD) was applied; for the same reason the validator re-checks every schema range and
// enum besides the cross-field rules a Kubernetes 1.20 schema cannot express.
#include "controller/pool_spec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <regex>
#include <string_view>
#include <utility>

namespace pdpool::controller {
namespace {

// Limits shared with crds/inferencepools.pdpool.dev.yaml (the agreement test checks them).
constexpr int32_t kMaxReplicas = 1024;
constexpr int32_t kMaxGpusPerReplica = 72;  // one GB200 NVL72 NVLink domain
constexpr int32_t kMaxGpuBudget = 1000000;
constexpr int32_t kMinPercentile = 50;
constexpr int32_t kMaxPercentile = 100;

const std::vector<std::string>& Backends() {
  static const std::vector<std::string> v = {"cuda", "cpu", "sim"};
  return v;
}
const std::vector<std::string>& RebalanceModes() {
  static const std::vector<std::string> v = {"InPlace", "Recreate", "Off"};
  return v;
}
const std::vector<std::string>& TopologyPolicies() {
  static const std::vector<std::string> v = {"Required", "Preferred", "None"};
  return v;
}
const std::vector<std::string>& KvTransports() {
  static const std::vector<std::string> v = {"auto", "nccl", "cuda-ipc", "tcp"};
  return v;
}

bool Contains(const std::vector<std::string>& set, const std::string& value) {
  return std::find(set.begin(), set.end(), value) != set.end();
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

// "2s", "0.1s", "-1s": how a duration is echoed back in a message.
std::string FormatSeconds(double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%gs", seconds);
  return buf;
}

// A value as a message shows it: its JSON type and a short rendering.
std::string Describe(const Json& v) {
  std::string text = v.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return std::string(v.type_name()) + " " + text;
}

// Reads fields of the spec by dotted path relative to spec ("slo.ttft"), recording every path
// it is asked for (present or not), and turns type mismatches into InvalidArgument naming the
// field. Absent and null fields leave the caller's default untouched.
class FieldReader {
 public:
  FieldReader(const Json& spec, std::vector<std::string>* paths_read)
      : spec_(spec), paths_read_(paths_read) {}

  // The value at path, nullptr when it (or any parent) is absent or null.
  StatusOr<const Json*> Find(std::string_view path) {
    if (paths_read_ != nullptr) paths_read_->push_back("spec." + std::string(path));
    const Json* cur = &spec_;
    std::string walked = "spec";
    size_t start = 0;
    while (start <= path.size()) {
      size_t dot = path.find('.', start);
      if (dot == std::string_view::npos) dot = path.size();
      std::string key(path.substr(start, dot - start));
      if (!cur->is_object()) {
        return Status::InvalidArgument(walked + ": expected an object, got " + Describe(*cur));
      }
      auto it = cur->find(key);
      if (it == cur->end() || it->is_null()) return static_cast<const Json*>(nullptr);
      cur = &*it;
      walked += "." + key;
      start = dot + 1;
    }
    return cur;
  }

  Status String(std::string_view path, std::string* out) {
    auto found = Find(path);
    if (!found.ok()) return found.status();
    const Json* v = *found;
    if (v == nullptr) return Status::Ok();
    if (!v->is_string()) return TypeError(path, "a string", *v);
    *out = v->get<std::string>();
    return Status::Ok();
  }

  Status Bool(std::string_view path, bool* out) {
    auto found = Find(path);
    if (!found.ok()) return found.status();
    const Json* v = *found;
    if (v == nullptr) return Status::Ok();
    if (!v->is_boolean()) return TypeError(path, "a boolean", *v);
    *out = v->get<bool>();
    return Status::Ok();
  }

  // Integers; a float with no fraction (2.0) is accepted, as the API server's JSON decoder does.
  Status Int64(std::string_view path, std::optional<int64_t>* out) {
    auto found = Find(path);
    if (!found.ok()) return found.status();
    const Json* v = *found;
    if (v == nullptr) return Status::Ok();
    if (v->is_number_integer() && !v->is_number_unsigned()) {
      *out = v->get<int64_t>();
      return Status::Ok();
    }
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return OutOfRange(path, *v, "a 64-bit integer");
      }
      *out = static_cast<int64_t>(u);
      return Status::Ok();
    }
    if (v->is_number_float()) {
      double d = v->get<double>();
      if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9.2e18) {
        *out = static_cast<int64_t>(d);
        return Status::Ok();
      }
    }
    return TypeError(path, "an integer", *v);
  }

  Status Int32(std::string_view path, std::optional<int32_t>* out) {
    std::optional<int64_t> wide;
    if (Status s = Int64(path, &wide); !s.ok()) return s;
    if (!wide) return Status::Ok();
    if (*wide < std::numeric_limits<int32_t>::min() ||
        *wide > std::numeric_limits<int32_t>::max()) {
      return OutOfRange(path, Json(*wide), "a 32-bit integer");
    }
    *out = static_cast<int32_t>(*wide);
    return Status::Ok();
  }

  Status Int32(std::string_view path, int32_t* out) {
    std::optional<int32_t> v;
    if (Status s = Int32(path, &v); !s.ok()) return s;
    if (v) *out = *v;
    return Status::Ok();
  }

  // A duration string ("2s") or a number of seconds.
  Status Duration(std::string_view path, double* out) {
    auto found = Find(path);
    if (!found.ok()) return found.status();
    const Json* v = *found;
    if (v == nullptr) return Status::Ok();
    if (v->is_number()) {
      *out = v->get<double>();
      return Status::Ok();
    }
    if (!v->is_string()) return TypeError(path, "a duration string such as 2s", *v);
    if (!ParseDurationSeconds(v->get<std::string>(), out)) {
      return Status::InvalidArgument("spec." + std::string(path) + ": " +
                                     Quote(v->get<std::string>()) +
                                     " is not a duration (examples: 2s, 100ms, 1m30s, 1.5h)");
    }
    return Status::Ok();
  }

  Status Object(std::string_view path, Json* out, bool* present) {
    auto found = Find(path);
    if (!found.ok()) return found.status();
    const Json* v = *found;
    *present = v != nullptr;
    if (v == nullptr) return Status::Ok();
    if (!v->is_object()) return TypeError(path, "an object", *v);
    *out = *v;
    return Status::Ok();
  }

 private:
  static Status TypeError(std::string_view path, const char* expected, const Json& got) {
    return Status::InvalidArgument("spec." + std::string(path) + ": expected " + expected +
                                   ", got " + Describe(got));
  }
  static Status OutOfRange(std::string_view path, const Json& got, const char* what) {
    return Status::InvalidArgument("spec." + std::string(path) + ": " + got.dump() +
                                   " does not fit " + what);
  }

  const Json& spec_;
  std::vector<std::string>* paths_read_;
};

#define PDPOOL_RETURN_IF_ERROR(expr)   \
  do {                                 \
    ::pdpool::Status status_ = (expr); \
    if (!status_.ok()) return status_; \
  } while (0)

Status ReadRole(FieldReader& r, const std::string& role, RoleSpec* out) {
  PDPOOL_RETURN_IF_ERROR(r.Int32(role + ".replicas", &out->replicas));
  PDPOOL_RETURN_IF_ERROR(r.Int32(role + ".gpusPerReplica", &out->gpus_per_replica));
  std::optional<int32_t> min, max;
  PDPOOL_RETURN_IF_ERROR(r.Int32(role + ".minReplicas", &min));
  PDPOOL_RETURN_IF_ERROR(r.Int32(role + ".maxReplicas", &max));
  // Absent bounds follow replicas without contradicting the bound that is given.
  out->min_replicas = min ? *min : (max ? std::min(out->replicas, *max) : out->replicas);
  out->max_replicas = max ? *max : (min ? std::max(out->replicas, *min) : out->replicas);
  return Status::Ok();
}

StatusOr<PoolSpec> Parse(const Json& spec_in, std::vector<std::string>* paths_read) {
  static const Json kEmpty = Json::object();
  const Json& spec = spec_in.is_null() ? kEmpty : spec_in;
  if (!spec.is_object()) {
    return Status::InvalidArgument("spec: expected an object, got " + Describe(spec));
  }
  FieldReader r(spec, paths_read);
  PoolSpec out;

  PDPOOL_RETURN_IF_ERROR(r.String("model.name", &out.model.name));
  PDPOOL_RETURN_IF_ERROR(r.String("model.preset", &out.model.preset));
  PDPOOL_RETURN_IF_ERROR(r.String("model.source.path", &out.model.source_path));
  Json dummy;
  bool has_dummy = false;
  PDPOOL_RETURN_IF_ERROR(r.Object("model.source.dummy", &dummy, &has_dummy));
  std::optional<int64_t> seed;
  PDPOOL_RETURN_IF_ERROR(r.Int64("model.source.dummy.seed", &seed));
  if (has_dummy) out.model.dummy_seed = seed.value_or(0);

  PDPOOL_RETURN_IF_ERROR(r.String("image", &out.image));
  PDPOOL_RETURN_IF_ERROR(r.String("backend", &out.backend));
  PDPOOL_RETURN_IF_ERROR(ReadRole(r, "prefill", &out.prefill));
  PDPOOL_RETURN_IF_ERROR(ReadRole(r, "decode", &out.decode));
  PDPOOL_RETURN_IF_ERROR(r.Int32("router.replicas", &out.router_replicas));
  bool has_template = false;
  PDPOOL_RETURN_IF_ERROR(r.Object("template", &out.template_overrides, &has_template));

  PDPOOL_RETURN_IF_ERROR(r.Duration("slo.ttft", &out.slo.ttft_seconds));
  PDPOOL_RETURN_IF_ERROR(r.Duration("slo.tpot", &out.slo.tpot_seconds));
  PDPOOL_RETURN_IF_ERROR(r.Int32("slo.percentile", &out.slo.percentile));

  AutoscalingSpec& as = out.autoscaling;
  PDPOOL_RETURN_IF_ERROR(r.Bool("autoscaling.enabled", &as.enabled));
  PDPOOL_RETURN_IF_ERROR(r.Duration("autoscaling.interval", &as.interval_seconds));
  PDPOOL_RETURN_IF_ERROR(r.Int32("autoscaling.gpuBudget", &as.gpu_budget));
  PDPOOL_RETURN_IF_ERROR(r.String("autoscaling.prometheus.url", &as.prometheus_url));
  PDPOOL_RETURN_IF_ERROR(
      r.Duration("autoscaling.scaleDownStabilization", &as.scale_down_stabilization_seconds));
  PDPOOL_RETURN_IF_ERROR(r.String("autoscaling.rebalance", &as.rebalance));

  PDPOOL_RETURN_IF_ERROR(r.String("topology.key", &out.topology.key));
  PDPOOL_RETURN_IF_ERROR(r.String("topology.policy", &out.topology.policy));
  PDPOOL_RETURN_IF_ERROR(r.String("kvTransfer.transport", &out.kv_transport));
  return out;
}

// A Kubernetes label key: optional DNS-subdomain prefix (<= 253) and "/", then a name (<= 63).
bool IsLabelKey(const std::string& key) {
  static const std::regex kPattern(
      "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
      "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$");
  if (!std::regex_match(key, kPattern)) return false;
  size_t slash = key.find('/');
  std::string_view prefix =
      slash == std::string::npos ? std::string_view() : std::string_view(key).substr(0, slash);
  std::string_view name =
      slash == std::string::npos ? std::string_view(key) : std::string_view(key).substr(slash + 1);
  return prefix.size() <= 253 && name.size() <= 63;
}

class ErrorList {
 public:
  void Add(std::string field, std::string message) {
    errors_.push_back({std::move(field), std::move(message)});
  }
  void Range(const std::string& field, const std::string& name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
      Add(field, name + " (" + std::to_string(v) + ") must be within [" + std::to_string(lo) +
                     ", " + std::to_string(hi) + "]");
    }
  }
  void Enum(const std::string& field, const std::string& value,
            const std::vector<std::string>& allowed) {
    if (!Contains(allowed, value)) {
      Add(field, "must be one of " + Join(allowed) + "; got " + Quote(value));
    }
  }
  void PositiveDuration(const std::string& field, double seconds) {
    if (!(seconds > 0) || !std::isfinite(seconds)) {
      Add(field, "must be a duration greater than 0, got " + FormatSeconds(seconds));
    }
  }
  std::vector<SpecError> Take() { return std::move(errors_); }

 private:
  std::vector<SpecError> errors_;
};

void ValidateRole(const std::string& base, const RoleSpec& role, ErrorList* errors) {
  errors->Range(base + ".replicas", "replicas", role.replicas, 0, kMaxReplicas);
  errors->Range(base + ".gpusPerReplica", "gpusPerReplica", role.gpus_per_replica, 1,
                kMaxGpusPerReplica);
  errors->Range(base + ".minReplicas", "minReplicas", role.min_replicas, 0, kMaxReplicas);
  errors->Range(base + ".maxReplicas", "maxReplicas", role.max_replicas, 0, kMaxReplicas);
  if (role.min_replicas > role.max_replicas) {
    errors->Add(base + ".minReplicas", "minReplicas (" + std::to_string(role.min_replicas) +
                                           ") must be <= maxReplicas (" +
                                           std::to_string(role.max_replicas) + ")");
  } else if (role.replicas < role.min_replicas || role.replicas > role.max_replicas) {
    errors->Add(base + ".replicas", "replicas (" + std::to_string(role.replicas) +
                                        ") must be within [minReplicas (" +
                                        std::to_string(role.min_replicas) + "), maxReplicas (" +
                                        std::to_string(role.max_replicas) + ")]");
  }
}

}  // namespace

const std::vector<std::string>& KnownPresets() {
  static const std::vector<std::string> v = {"test-tiny", "llama-3.2-1b", "llama-3.1-8b",
                                             "llama-3.1-70b", "llama-3.1-405b"};
  return v;
}

StatusOr<PoolSpec> ParsePoolSpec(const Json& spec) { return Parse(spec, nullptr); }

std::vector<std::string> PoolSpecFieldPaths() {
  std::vector<std::string> paths;
  // An empty spec parses without error, and every field is asked for whether present or not.
  auto parsed = Parse(Json::object(), &paths);
  (void)parsed;
  return paths;
}

std::vector<SpecError> ValidatePoolSpec(const PoolSpec& spec) {
  ErrorList e;

  const ModelSpec& model = spec.model;
  if (model.name.empty()) e.Add("spec.model.name", "is required: the model name clients request");
  const bool has_path = !model.source_path.empty();
  const bool has_dummy = model.dummy_seed.has_value();
  if (!model.preset.empty()) {
    if (!Contains(KnownPresets(), model.preset)) {
      e.Add("spec.model.preset",
            "unknown preset " + Quote(model.preset) + "; known: " + Join(KnownPresets()));
    }
  } else if (has_dummy) {
    e.Add("spec.model.preset", "is required with dummy weights (they need a model shape); known: " +
                                   Join(KnownPresets()));
  }
  if (has_path && has_dummy) {
    e.Add("spec.model.source", "set exactly one of path or dummy, not both");
  } else if (!has_path && !has_dummy) {
    e.Add("spec.model.source",
          "set exactly one of path (a safetensors directory) or dummy (generated weights)");
  }
  if (has_path && model.source_path.front() != '/') {
    e.Add("spec.model.source.path", "must be an absolute path, got " + Quote(model.source_path));
  }
  if (has_dummy && *model.dummy_seed < 0) {
    e.Add("spec.model.source.dummy.seed",
          "seed (" + std::to_string(*model.dummy_seed) + ") must be >= 0");
  }

  if (spec.image.empty()) e.Add("spec.image", "is required: the pdpool agent image");
  e.Enum("spec.backend", spec.backend, Backends());

  ValidateRole("spec.prefill", spec.prefill, &e);
  ValidateRole("spec.decode", spec.decode, &e);
  e.Range("spec.router.replicas", "replicas", spec.router_replicas, 0, kMaxReplicas);

  e.PositiveDuration("spec.slo.ttft", spec.slo.ttft_seconds);
  e.PositiveDuration("spec.slo.tpot", spec.slo.tpot_seconds);
  e.Range("spec.slo.percentile", "percentile", spec.slo.percentile, kMinPercentile, kMaxPercentile);

  const AutoscalingSpec& as = spec.autoscaling;
  e.PositiveDuration("spec.autoscaling.interval", as.interval_seconds);
  if (as.gpu_budget < 0 || as.gpu_budget > kMaxGpuBudget) {
    e.Range("spec.autoscaling.gpuBudget", "gpuBudget", as.gpu_budget, 0, kMaxGpuBudget);
  } else if (as.gpu_budget > 0 && as.gpu_budget < spec.MinTotalGpus()) {
    e.Add("spec.autoscaling.gpuBudget",
          "gpuBudget (" + std::to_string(as.gpu_budget) +
              ") must be >= the GPUs the minimum replicas hold (" +
              std::to_string(spec.MinTotalGpus()) + ": prefill " +
              std::to_string(spec.prefill.min_replicas) + "x" +
              std::to_string(spec.prefill.gpus_per_replica) + " + decode " +
              std::to_string(spec.decode.min_replicas) + "x" +
              std::to_string(spec.decode.gpus_per_replica) + "), or 0 for no budget");
  }
  if (!as.prometheus_url.empty() && as.prometheus_url.rfind("http://", 0) != 0 &&
      as.prometheus_url.rfind("https://", 0) != 0) {
    e.Add("spec.autoscaling.prometheus.url",
          "must start with http:// or https://, got " + Quote(as.prometheus_url));
  } else if (as.prometheus_url == "http://" || as.prometheus_url == "https://") {
    e.Add("spec.autoscaling.prometheus.url", "has no host: " + Quote(as.prometheus_url));
  }
  if (!(as.scale_down_stabilization_seconds >= 0) ||
      !std::isfinite(as.scale_down_stabilization_seconds)) {
    e.Add("spec.autoscaling.scaleDownStabilization",
          "must be a duration >= 0, got " + FormatSeconds(as.scale_down_stabilization_seconds));
  }
  e.Enum("spec.autoscaling.rebalance", as.rebalance, RebalanceModes());

  if (!IsLabelKey(spec.topology.key)) {
    e.Add("spec.topology.key", "must be a node label key such as nvidia.com/gpu.clique, got " +
                                   Quote(spec.topology.key));
  }
  e.Enum("spec.topology.policy", spec.topology.policy, TopologyPolicies());

  e.Enum("spec.kvTransfer.transport", spec.kv_transport, KvTransports());
  if (spec.backend == "cpu" && (spec.kv_transport == "nccl" || spec.kv_transport == "cuda-ipc")) {
    e.Add("spec.kvTransfer.transport", "transport " + Quote(spec.kv_transport) +
                                           " needs GPU memory; with backend cpu use auto or tcp");
  }
  if (spec.backend == "cuda") {
    for (const auto& [base, role] :
         {std::pair<const char*, const RoleSpec*>{"spec.prefill", &spec.prefill},
          {"spec.decode", &spec.decode}}) {
      if (role->gpus_per_replica != 1) {
        e.Add(std::string(base) + ".gpusPerReplica",
              "gpusPerReplica (" + std::to_string(role->gpus_per_replica) +
                  ") must be 1 with backend cuda: the cuda engine runs a model on one GPU "
                  "(tensor parallelism is modeled by backend sim only)");
      }
    }
  }
  return e.Take();
}

bool ParseDurationSeconds(const std::string& text, double* seconds) {
  // One number: digits, optionally "." and more digits. Returns the end, or npos if none.
  auto number = [&](size_t pos, double* value) -> size_t {
    size_t i = pos;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    if (i == pos) return std::string::npos;
    if (i < text.size() && text[i] == '.') {
      size_t frac = ++i;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
      if (i == frac) return std::string::npos;
    }
    *value = std::strtod(text.substr(pos, i - pos).c_str(), nullptr);
    return i;
  };

  if (text.empty()) return false;
  double total = 0;
  size_t pos = 0;
  double value = 0;
  size_t end = number(0, &value);
  if (end == std::string::npos) return false;
  if (end == text.size()) {  // bare number of seconds
    if (!std::isfinite(value)) return false;
    *seconds = value;
    return true;
  }
  while (pos < text.size()) {
    end = number(pos, &value);
    if (end == std::string::npos) return false;
    double unit;
    if (text.compare(end, 2, "ms") == 0) {
      unit = 0.001;
      end += 2;
    } else if (end < text.size() && text[end] == 's') {
      unit = 1;
      end += 1;
    } else if (end < text.size() && text[end] == 'm') {
      unit = 60;
      end += 1;
    } else if (end < text.size() && text[end] == 'h') {
      unit = 3600;
      end += 1;
    } else {
      return false;
    }
    total += value * unit;
    pos = end;
  }
  if (!std::isfinite(total)) return false;
  *seconds = total;
  return true;
}

}  // namespace pdpool::controller
