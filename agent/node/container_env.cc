// Container environment and $(VAR) expansion: see container_env.h.
#include "agent/node/container_env.h"

#include <map>
#include <regex>

namespace pdpool::agent {
namespace {

constexpr char kDefaultPath[] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Ordered, unique-by-name environment under construction.
class EnvList {
 public:
  void Set(const std::string& name, std::string value) {
    auto it = index_.find(name);
    if (it != index_.end()) {
      vars_[it->second].value = std::move(value);
      return;
    }
    index_[name] = vars_.size();
    vars_.push_back({name, std::move(value)});
  }
  std::optional<std::string> Get(std::string_view name) const {
    auto it = index_.find(std::string(name));
    if (it == index_.end()) return std::nullopt;
    return vars_[it->second].value;
  }
  std::vector<EnvVar> Take() { return std::move(vars_); }

 private:
  std::vector<EnvVar> vars_;
  std::map<std::string, size_t> index_;
};

// What envFrom accepts as a variable name (the kubelet skips other keys).
bool IsEnvVarName(const std::string& name) {
  static const std::regex re("[-._a-zA-Z][-._a-zA-Z0-9]*");
  return std::regex_match(name, re);
}

// One key of a Secret or ConfigMap (`secretKeyRef` / `configMapKeyRef`): nullopt when it is
// optional and missing.
StatusOr<std::optional<std::string>> KeyRef(const Json& ref, PodDataKind kind,
                                            const std::string& ns, const PodDataSource& data) {
  const std::string name = JsonGet<std::string>(ref, "/name", "");
  const std::string key = JsonGet<std::string>(ref, "/key", "");
  const bool optional = JsonGet<bool>(ref, "/optional", false);
  const std::string what = std::string(PodDataKindName(kind)) + " \"" + name + "\"";
  if (name.empty() || key.empty()) return Status::InvalidArgument(what + ": needs name and key");
  StatusOr<PodData> values = data(kind, ns, name);
  if (!values.ok()) {
    if (values.status().IsNotFound() && optional) return std::optional<std::string>();
    return values.status();
  }
  auto it = values->find(key);
  if (it == values->end()) {
    if (optional) return std::optional<std::string>();
    return Status::NotFound(what + " has no key \"" + key + "\"");
  }
  return std::optional<std::string>(it->second);
}

}  // namespace

std::string ExpandEnvReferences(
    std::string_view input,
    const std::function<std::optional<std::string>(std::string_view name)>& lookup) {
  std::string out;
  size_t i = 0;
  while (i < input.size()) {
    if (input[i] != '$' || i + 1 >= input.size()) {
      out.push_back(input[i++]);
      continue;
    }
    char next = input[i + 1];
    if (next == '$') {  // escaped
      out.push_back('$');
      i += 2;
      continue;
    }
    if (next == '(') {
      size_t close = input.find(')', i + 2);
      if (close != std::string_view::npos) {
        std::string_view name = input.substr(i + 2, close - i - 2);
        std::optional<std::string> value = lookup(name);
        if (value.has_value()) {
          out += *value;
        } else {
          out.append(input.substr(i, close - i + 1));
        }
        i = close + 1;
        continue;
      }
    }
    out.push_back('$');
    ++i;
  }
  return out;
}

StatusOr<std::vector<EnvVar>> BuildContainerEnv(const Json& pod, const Json& container,
                                                const ContainerEnvContext& context,
                                                const PodDataSource& data) {
  const std::string ns = JsonStringAt(pod, {"metadata", "namespace"});
  const std::string pod_name = JsonStringAt(pod, {"metadata", "name"});
  EnvList env;
  env.Set("PATH", kDefaultPath);
  env.Set("HOSTNAME", pod_name);
  env.Set("HOME", "/root");
  if (!context.api_server_host.empty()) {
    env.Set("KUBERNETES_SERVICE_HOST", context.api_server_host);
    env.Set("KUBERNETES_SERVICE_PORT", context.api_server_port);
    env.Set("KUBERNETES_SERVICE_PORT_HTTPS", context.api_server_port);
  }
  env.Set("POD_NAME", pod_name);
  env.Set("POD_NAMESPACE", ns);
  env.Set("POD_IP", context.runtime.pod_ip);
  // No network namespace per pod here: pdpool's servers listen on the pod's own address.
  env.Set("PDPOOL_LISTEN_HOST", context.runtime.pod_ip);

  if (const Json* env_from = JsonChild(container, "envFrom"); env_from && env_from->is_array()) {
    for (size_t i = 0; i < env_from->size(); ++i) {
      const Json& source = (*env_from)[i];
      const std::string where = "envFrom[" + std::to_string(i) + "]";
      const std::string prefix = JsonGet<std::string>(source, "/prefix", "");
      const Json* ref = JsonChild(source, "secretRef");
      PodDataKind kind = PodDataKind::kSecret;
      if (ref == nullptr) {
        ref = JsonChild(source, "configMapRef");
        kind = PodDataKind::kConfigMap;
      }
      if (ref == nullptr)
        return Status::InvalidArgument(where + ": needs secretRef or configMapRef");
      const std::string name = JsonGet<std::string>(*ref, "/name", "");
      StatusOr<PodData> values = data(kind, ns, name);
      if (!values.ok()) {
        if (values.status().IsNotFound() && JsonGet<bool>(*ref, "/optional", false)) continue;
        return Status(values.status().code(), where + ": " + values.status().message());
      }
      for (const auto& [key, value] : *values) {
        if (IsEnvVarName(prefix + key)) env.Set(prefix + key, value);
      }
    }
  }

  if (const Json* vars = JsonChild(container, "env"); vars && vars->is_array()) {
    for (const Json& var : *vars) {
      const std::string name = JsonGet<std::string>(var, "/name", "");
      if (name.empty()) return Status::InvalidArgument("env: an entry has no name");
      const std::string where = "env " + name;
      const Json* from = JsonChild(var, "valueFrom");
      if (from == nullptr) {
        // $(VAR) sees the variables defined so far, as the kubelet's expansion does.
        env.Set(name, ExpandEnvReferences(JsonGet<std::string>(var, "/value", ""),
                                          [&env](std::string_view n) { return env.Get(n); }));
        continue;
      }
      if (const Json* field = JsonChild(*from, "fieldRef")) {
        StatusOr<std::string> value =
            ResolveFieldRef(pod, JsonGet<std::string>(*field, "/fieldPath", ""), context.runtime);
        if (!value.ok()) return Status::InvalidArgument(where + ": " + value.status().message());
        env.Set(name, std::move(*value));
        continue;
      }
      const Json* secret = JsonChild(*from, "secretKeyRef");
      const Json* config_map = JsonChild(*from, "configMapKeyRef");
      if (secret != nullptr || config_map != nullptr) {
        auto value =
            KeyRef(secret != nullptr ? *secret : *config_map,
                   secret != nullptr ? PodDataKind::kSecret : PodDataKind::kConfigMap, ns, data);
        if (!value.ok()) {
          return Status(value.status().code(), where + ": " + value.status().message());
        }
        if (value->has_value()) env.Set(name, std::move(**value));
        continue;
      }
      if (JsonChild(*from, "resourceFieldRef") != nullptr) {
        return Status::InvalidArgument(
            where + ": resourceFieldRef is not supported by pdpool's node agent");
      }
      return Status::InvalidArgument(where + ": valueFrom has no supported source");
    }
  }
  return env.Take();
}

ContainerCommand ExpandContainerCommand(const Json& container, const std::vector<EnvVar>& env) {
  std::map<std::string, std::string, std::less<>> values;
  for (const EnvVar& v : env) values[v.name] = v.value;
  auto lookup = [&values](std::string_view name) -> std::optional<std::string> {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };
  auto expand = [&](const char* field) {
    std::vector<std::string> out;
    const Json* list = JsonChild(container, field);
    if (list == nullptr || !list->is_array()) return out;
    for (const Json& item : *list) {
      out.push_back(
          ExpandEnvReferences(item.is_string() ? item.get<std::string>() : item.dump(), lookup));
    }
    return out;
  };
  return {expand("command"), expand("args")};
}

}  // namespace pdpool::agent
