// The environment and command line a pod's container starts with on a simulated node, built
// as the kubelet builds them: a base of PATH, HOSTNAME, HOME, KUBERNETES_SERVICE_HOST/PORT (the
// API server the node agent talks to, so in-cluster config works) and POD_NAME, POD_NAMESPACE,
// POD_IP; then envFrom (configMapRef/secretRef, with prefix); then env (`value` with $(VAR)
// references to variables defined before it, `valueFrom.fieldRef`, `secretKeyRef`,
// `configMapKeyRef`; `optional` honoured). command and args get the same $(VAR) expansion
// against the final environment. Pure functions (Secrets and ConfigMaps come through a
// PodDataSource); thread-safe.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/node/downward_api.h"
#include "agent/node/pod_data_source.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

struct EnvVar {
  std::string name;
  std::string value;
  bool operator==(const EnvVar&) const = default;
};

struct ContainerEnvContext {
  PodRuntimeFields runtime;
  std::string api_server_host;  // KUBERNETES_SERVICE_HOST; "" leaves both unset
  std::string api_server_port;  // KUBERNETES_SERVICE_PORT
};

// Kubernetes' $(VAR) expansion: "$(NAME)" becomes lookup(NAME) when that is not nullopt and
// stays as written otherwise; "$$" is a literal "$"; any other "$" is kept.
std::string ExpandEnvReferences(
    std::string_view input,
    const std::function<std::optional<std::string>(std::string_view name)>& lookup);

// The container's environment, in order, each name once (a later definition replaces an
// earlier one in place). Errors (a missing Secret or key that is not optional, an unsupported
// fieldRef or resourceFieldRef) name the variable; the kubelet reports them as
// CreateContainerConfigError.
StatusOr<std::vector<EnvVar>> BuildContainerEnv(const Json& pod, const Json& container,
                                                const ContainerEnvContext& context,
                                                const PodDataSource& data);

// command + args with $(VAR) expanded against `env` (command empty: only args are returned;
// the image's entrypoint goes first, see container_image.h).
struct ContainerCommand {
  std::vector<std::string> command;
  std::vector<std::string> args;
};
ContainerCommand ExpandContainerCommand(const Json& container, const std::vector<EnvVar>& env);

}  // namespace pdpool::agent
