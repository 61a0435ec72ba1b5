// PodVolumes: see pod_volumes.h.
#include "agent/node/pod_volumes.h"

#include <sys/stat.h>

#include <filesystem>

#include "agent/node/atomic_writer.h"

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;

Status Mkdir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Internal("create " + dir + ": " + ec.message());
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<AtomicFile>> KeyToPathFiles(const Json& source, const PodData& data,
                                                 const std::string& what) {
  const int default_mode = JsonGet<int>(source, "/defaultMode", 0644);
  const bool optional = JsonGet<bool>(source, "/optional", false);
  std::vector<AtomicFile> files;
  const Json* items = JsonChild(source, "items");
  if (items == nullptr || !items->is_array() || items->empty()) {
    for (const auto& [key, value] : data) files.push_back({key, value, default_mode});
    return files;
  }
  for (const Json& item : *items) {
    const std::string key = JsonGet<std::string>(item, "/key", "");
    auto it = data.find(key);
    if (it == data.end()) {
      if (optional) continue;
      return Status::NotFound(what + " has no key \"" + key + "\"");
    }
    AtomicFile f{JsonGet<std::string>(item, "/path", key), it->second,
                 JsonGet<int>(item, "/mode", default_mode)};
    if (Status s = ValidateVolumeItemPath(f.path); !s.ok()) {
      return Status::InvalidArgument(what + " key \"" + key + "\": " + s.message());
    }
    files.push_back(std::move(f));
  }
  return files;
}

Status PodVolumes::SetUp(const Json& pod, const PodRuntimeFields& runtime) {
  if (Status s = Mkdir(root_); !s.ok()) return s;
  const Json* volumes = JsonPath(pod, {"spec", "volumes"});
  if (volumes == nullptr || !volumes->is_array()) return Status::Ok();
  for (const Json& volume : *volumes) {
    const std::string name = JsonGet<std::string>(volume, "/name", "");
    Status s = SetUpOne(volume, pod, runtime);
    if (!s.ok()) return Status(s.code(), "volume \"" + name + "\": " + s.message());
  }
  return Status::Ok();
}

Status PodVolumes::SetUpOne(const Json& volume, const Json& pod, const PodRuntimeFields& runtime) {
  const std::string name = JsonGet<std::string>(volume, "/name", "");
  if (name.empty() || name.find('/') != std::string::npos || name.starts_with(".")) {
    return Status::InvalidArgument("bad volume name");
  }
  const std::string ns = JsonStringAt(pod, {"metadata", "namespace"});
  const std::string dir = Dir(name);
  const Json* secret = JsonChild(volume, "secret");
  const Json* config_map = JsonChild(volume, "configMap");
  if (secret != nullptr || config_map != nullptr) {
    const Json& source = secret != nullptr ? *secret : *config_map;
    const PodDataKind kind = secret != nullptr ? PodDataKind::kSecret : PodDataKind::kConfigMap;
    const std::string object =
        JsonGet<std::string>(source, secret != nullptr ? "/secretName" : "/name", "");
    const std::string what = std::string(PodDataKindName(kind)) + " \"" + ns + "/" + object + "\"";
    StatusOr<PodData> data = data_(kind, ns, object);
    if (!data.ok()) {
      if (!(data.status().IsNotFound() && JsonGet<bool>(source, "/optional", false))) {
        return data.status();
      }
      data = PodData{};
    }
    StatusOr<std::vector<AtomicFile>> files = KeyToPathFiles(source, *data, what);
    if (!files.ok()) return files.status();
    StatusOr<bool> written = WriteAtomically(dir, *files);
    if (!written.ok()) return written.status();
    host_paths_[name] = {dir, true};
    return Status::Ok();
  } else if (const Json* downward = JsonChild(volume, "downwardAPI")) {
    StatusOr<std::vector<AtomicFile>> files = DownwardApiVolumeFiles(*downward, pod, runtime);
    if (!files.ok()) return files.status();
    StatusOr<bool> written = WriteAtomically(dir, *files);
    if (!written.ok()) return written.status();
    host_paths_[name] = {dir, true};
    return Status::Ok();
  } else if (JsonChild(volume, "emptyDir") != nullptr) {
    if (Status s = Mkdir(dir); !s.ok()) return s;
    ::chmod(dir.c_str(), 0777);  // as the kubelet makes them: any container user may write
  } else if (const Json* host = JsonChild(volume, "hostPath")) {
    const std::string path = JsonGet<std::string>(*host, "/path", "");
    const std::string type = JsonGet<std::string>(*host, "/type", "");
    if (path.empty() || path.front() != '/') {
      return Status::InvalidArgument("hostPath.path must be absolute");
    }
    if (type == "DirectoryOrCreate") {
      if (Status s = Mkdir(path); !s.ok()) return s;
    }
    std::error_code ec;
    if (!fs::exists(path, ec)) return Status::NotFound("hostPath " + path + " does not exist");
    host_paths_[name] = {path, false};
    return Status::Ok();
  } else {
    return Status::InvalidArgument(
        "volume type not supported by pdpool's node agent (secret, configMap, downwardAPI, "
        "emptyDir and hostPath are)");
  }
  host_paths_[name] = {dir, false};
  return Status::Ok();
}

StatusOr<bool> PodVolumes::RefreshDownwardApi(const Json& pod, const PodRuntimeFields& runtime) {
  bool changed = false;
  const Json* volumes = JsonPath(pod, {"spec", "volumes"});
  if (volumes == nullptr || !volumes->is_array()) return changed;
  for (const Json& volume : *volumes) {
    const Json* downward = JsonChild(volume, "downwardAPI");
    const std::string name = JsonGet<std::string>(volume, "/name", "");
    if (downward == nullptr || host_paths_.count(name) == 0) continue;
    StatusOr<std::vector<AtomicFile>> files = DownwardApiVolumeFiles(*downward, pod, runtime);
    if (!files.ok())
      return Status(files.status().code(), "volume \"" + name + "\": " + files.status().message());
    StatusOr<bool> written = WriteAtomically(Dir(name), *files);
    if (!written.ok()) {
      return Status(written.status().code(),
                    "volume \"" + name + "\": " + written.status().message());
    }
    changed = changed || *written;
  }
  return changed;
}

StatusOr<std::vector<BindMount>> PodVolumes::MountsFor(const Json& container) const {
  std::vector<BindMount> mounts;
  const Json* list = JsonChild(container, "volumeMounts");
  if (list == nullptr || !list->is_array()) return mounts;
  for (const Json& m : *list) {
    const std::string name = JsonGet<std::string>(m, "/name", "");
    const std::string path = JsonGet<std::string>(m, "/mountPath", "");
    const std::string where = "volumeMount \"" + name + "\" at " + path;
    auto it = host_paths_.find(name);
    if (it == host_paths_.end()) {
      return Status::InvalidArgument(where + ": the pod has no such volume");
    }
    if (path.empty() || path.front() != '/') {
      return Status::InvalidArgument(where + ": mountPath must be absolute");
    }
    std::string source = it->second.path;
    const std::string sub = JsonGet<std::string>(m, "/subPath", "");
    if (!sub.empty()) {
      if (Status s = ValidateVolumeItemPath(sub); !s.ok()) {
        return Status::InvalidArgument(where + ": subPath: " + s.message());
      }
      source += "/" + sub;
      std::error_code ec;
      // As the kubelet: a missing subPath of a writable volume is created as a directory.
      if (!fs::exists(source, ec) && (it->second.read_only || !Mkdir(source).ok())) {
        return Status::Internal(where + ": cannot create subPath " + source);
      }
    }
    mounts.push_back({source, path, it->second.read_only || JsonGet<bool>(m, "/readOnly", false)});
  }
  return mounts;
}

void PodVolumes::TearDown() {
  std::error_code ec;
  fs::remove_all(root_, ec);
  host_paths_.clear();
}

}  // namespace pdpool::agent
