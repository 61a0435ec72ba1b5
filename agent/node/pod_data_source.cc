// PodDataSource over the API server: see pod_data_source.h.
#include "agent/node/pod_data_source.h"

#include "common/base64.h"

namespace pdpool::agent {
namespace {

const kube::ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};

Status DecodeMap(const Json& object, const char* field, bool base64, PodData* merge_into) {
  const Json* data = JsonChild(object, field);
  if (data == nullptr) return Status::Ok();
  if (!data->is_object()) return Status::InvalidArgument(std::string(field) + ": not a map");
  for (auto it = data->begin(); it != data->end(); ++it) {
    if (!it->is_string()) {
      return Status::InvalidArgument(std::string(field) + "." + it.key() + ": not a string");
    }
    if (!base64) {
      (*merge_into)[it.key()] = it->get<std::string>();
      continue;
    }
    StatusOr<std::string> decoded =
        Base64Decode(it->get<std::string>(), std::string(field) + "." + it.key());
    if (!decoded.ok()) return decoded.status();
    (*merge_into)[it.key()] = std::move(*decoded);
  }
  return Status::Ok();
}

}  // namespace

const char* PodDataKindName(PodDataKind kind) {
  return kind == PodDataKind::kSecret ? "secret" : "configmap";
}

StatusOr<PodData> DecodePodData(PodDataKind kind, const Json& object) {
  PodData out;
  if (kind == PodDataKind::kSecret) {
    // The API server folds stringData into data on write; a fake or a raw manifest may not.
    if (Status s = DecodeMap(object, "stringData", false, &out); !s.ok()) return s;
    if (Status s = DecodeMap(object, "data", true, &out); !s.ok()) return s;
  } else {
    if (Status s = DecodeMap(object, "binaryData", true, &out); !s.ok()) return s;
    if (Status s = DecodeMap(object, "data", false, &out); !s.ok()) return s;
  }
  return out;
}

PodDataSource ApiPodDataSource(kube::KubeClient* client) {
  return [client](PodDataKind kind, const std::string& ns,
                  const std::string& name) -> StatusOr<PodData> {
    const kube::ResourceType& type = kind == PodDataKind::kSecret ? kube::kSecrets : kConfigMaps;
    StatusOr<Json> object = client->Get(type, ns, name);
    const std::string what = std::string(PodDataKindName(kind)) + " \"" + ns + "/" + name + "\"";
    if (!object.ok()) {
      if (object.status().IsNotFound()) return Status::NotFound(what + " not found");
      return Status(object.status().code(), "read " + what + ": " + object.status().message());
    }
    StatusOr<PodData> data = DecodePodData(kind, *object);
    if (!data.ok()) return Status::InvalidArgument(what + ": " + data.status().message());
    return data;
  };
}

}  // namespace pdpool::agent
