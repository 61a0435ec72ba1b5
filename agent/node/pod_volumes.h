// PodVolumes: the host directories behind one pod's volumes on a simulated node, under
// `<pod dir>/volumes/<volume name>`, and the bind mounts a container's volumeMounts make of
// them. Supported: secret and configMap (read through the API; items, defaultMode/mode,
// optional), downwardAPI (fieldRef items; rewritten when labels or annotations change), emptyDir
// (a directory; medium Memory is not a tmpfs here), hostPath (the host path itself). Secret,
// configMap and downwardAPI contents are published with WriteAtomically, the kubelet's layout,
// so a mounted file changes in one step, and are mounted read-only, as the kubelet mounts them
// since Kubernetes 1.10. Other types are refused with an error naming the volume. Secret and
// configMap contents are read when the pod starts (the kubelet also re-syncs them about every
// minute; this node does not). Thread-compatible: one owner (the pod's thread).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "agent/node/container_process.h"
#include "agent/node/downward_api.h"
#include "agent/node/pod_data_source.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

class PodVolumes {
 public:
  PodVolumes(std::string root, PodDataSource data)
      : root_(std::move(root)), data_(std::move(data)) {}

  const std::string& root() const { return root_; }

  // Creates or refreshes every volume of `pod`. Errors name the volume ("volume \"x\": secret
  // \"ns/y\" not found"); volumes done before the failing one stay.
  Status SetUp(const Json& pod, const PodRuntimeFields& runtime);
  // Rewrites the downwardAPI volumes (the pod was relabelled or annotated). Returns whether a
  // file changed.
  StatusOr<bool> RefreshDownwardApi(const Json& pod, const PodRuntimeFields& runtime);
  // The bind mounts for `container`'s volumeMounts (subPath supported). Errors name the mount.
  StatusOr<std::vector<BindMount>> MountsFor(const Json& container) const;
  // Removes the volume directories (not hostPath sources). Mounts live only in the containers'
  // namespaces, so nothing is mounted here.
  void TearDown();

 private:
  Status SetUpOne(const Json& volume, const Json& pod, const PodRuntimeFields& runtime);
  std::string Dir(const std::string& name) const { return root_ + "/" + name; }

  const std::string root_;
  const PodDataSource data_;
  struct HostPath {
    std::string path;
    bool read_only = false;  // secret, configMap, downwardAPI: always mounted read-only
  };
  std::map<std::string, HostPath> host_paths_;  // by volume name
};

// The files of a secret or configMap volume source from the object's data: every key, or the
// listed items (path, mode); a missing key is an error unless the source is optional.
StatusOr<std::vector<AtomicFile>> KeyToPathFiles(const Json& source, const PodData& data,
                                                 const std::string& what);

}  // namespace pdpool::agent
