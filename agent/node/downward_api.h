// The Kubernetes downward API on a simulated node: a pod's own fields (metadata.name,
// metadata.labels['k'], status.podIP, ...) resolved for env `valueFrom.fieldRef`, and the files
// of a `downwardAPI` volume in the kubelet's format (metadata.labels / metadata.annotations:
// one `key="value"` line per entry, keys sorted, values quoted as Go's %q does, no trailing
// newline; agent/worker/labels_file.h parses it). Pure functions; thread-safe.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/node/atomic_writer.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

// What the node knows of a pod that its object may not show yet (the status is written after
// the containers start).
struct PodRuntimeFields {
  std::string pod_ip;
  std::string host_ip;
  std::string node_name;
};

// A fieldRef's value. Supported paths: metadata.name, metadata.namespace, metadata.uid,
// metadata.labels, metadata.annotations, metadata.labels['<key>'],
// metadata.annotations['<key>'], spec.nodeName, spec.serviceAccountName, status.podIP,
// status.podIPs, status.hostIP. A missing label or annotation is "" (as in Kubernetes); an
// unknown path is InvalidArgument naming it.
StatusOr<std::string> ResolveFieldRef(const Json& pod, std::string_view field_path,
                                      const PodRuntimeFields& runtime);

// Go's strconv.Quote for a string: "..." with \" \\ \a \b \f \n \r \t \v escaped, other control
// bytes and invalid UTF-8 as \xNN, valid UTF-8 kept as is (Go also escapes the few non-printable
// non-ASCII code points as \uNNNN; label values are ASCII).
std::string GoQuote(std::string_view s);

// The kubelet's fieldpath.FormatMap: `key="value"` lines, keys sorted, no trailing newline.
std::string FormatDownwardApiMap(const std::map<std::string, std::string>& map);

// The files of a downwardAPI volume source (`{items: [{path, fieldRef: {fieldPath}, mode}],
// defaultMode}`) for `pod`. resourceFieldRef items are refused (InvalidArgument naming the
// item), as are bad paths.
StatusOr<std::vector<AtomicFile>> DownwardApiVolumeFiles(const Json& source, const Json& pod,
                                                         const PodRuntimeFields& runtime);

}  // namespace pdpool::agent
