// PodDataSource: the Secrets and ConfigMaps a pod refers to (env secretKeyRef/configMapKeyRef,
// envFrom, secret and configMap volumes), as decoded key → value data. ApiPodDataSource reads
// them through the node agent's KubeClient at each call (no cache: pods start rarely); tests
// pass a lambda. Thread-safe when the client is.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "common/json.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::agent {

enum class PodDataKind { kSecret, kConfigMap };

using PodData = std::map<std::string, std::string>;

// Returns the object's data (NotFound when it does not exist, so `optional: true` can be
// honoured), or another error naming the object.
using PodDataSource = std::function<StatusOr<PodData>(PodDataKind kind, const std::string& ns,
                                                      const std::string& name)>;

// "secret" / "configmap", for messages ("secret \"x\" not found").
const char* PodDataKindName(PodDataKind kind);

// A Secret's data (base64 decoded) merged over its stringData; a ConfigMap's data merged with
// its binaryData (base64 decoded). Errors name the key whose value is not valid base64.
StatusOr<PodData> DecodePodData(PodDataKind kind, const Json& object);

PodDataSource ApiPodDataSource(kube::KubeClient* client);

}  // namespace pdpool::agent
