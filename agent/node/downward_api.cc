// Downward API: field resolution and the kubelet's volume file format (see downward_api.h).
#include "agent/node/downward_api.h"

#include <cstdio>

namespace pdpool::agent {
namespace {

std::map<std::string, std::string> StringMap(const Json& pod,
                                             std::initializer_list<std::string_view> path) {
  std::map<std::string, std::string> out;
  const Json* obj = JsonPath(pod, path);
  if (obj == nullptr || !obj->is_object()) return out;
  for (auto it = obj->begin(); it != obj->end(); ++it) {
    if (it->is_string()) out[it.key()] = it->get<std::string>();
  }
  return out;
}

// "metadata.labels['key']" → ("metadata.labels", "key"); false when not of that form.
bool SplitSubscript(std::string_view path, std::string_view* base, std::string* key) {
  size_t open = path.find("['");
  if (open == std::string_view::npos || !path.ends_with("']")) return false;
  *base = path.substr(0, open);
  *key = std::string(path.substr(open + 2, path.size() - open - 4));
  return true;
}

// Length of the valid UTF-8 sequence at s[i] (0 when invalid).
size_t Utf8Length(std::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = 0;
  uint32_t cp = 0;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid, as Go decodes them.
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
      (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
    return 0;
  }
  return n;
}

}  // namespace

StatusOr<std::string> ResolveFieldRef(const Json& pod, std::string_view field_path,
                                      const PodRuntimeFields& runtime) {
  std::string_view base;
  std::string key;
  if (SplitSubscript(field_path, &base, &key)) {
    if (base == "metadata.labels") return JsonStringAt(pod, {"metadata", "labels", key});
    if (base == "metadata.annotations") {
      return JsonStringAt(pod, {"metadata", "annotations", key});
    }
    return Status::InvalidArgument("fieldPath \"" + std::string(field_path) +
                                   "\": only metadata.labels and metadata.annotations take a key");
  }
  if (field_path == "metadata.name") return JsonStringAt(pod, {"metadata", "name"});
  if (field_path == "metadata.namespace") return JsonStringAt(pod, {"metadata", "namespace"});
  if (field_path == "metadata.uid") return JsonStringAt(pod, {"metadata", "uid"});
  if (field_path == "metadata.labels") {
    return FormatDownwardApiMap(StringMap(pod, {"metadata", "labels"}));
  }
  if (field_path == "metadata.annotations") {
    return FormatDownwardApiMap(StringMap(pod, {"metadata", "annotations"}));
  }
  if (field_path == "spec.nodeName") {
    return runtime.node_name.empty() ? JsonStringAt(pod, {"spec", "nodeName"}) : runtime.node_name;
  }
  if (field_path == "spec.serviceAccountName") {
    return JsonStringAt(pod, {"spec", "serviceAccountName"});
  }
  if (field_path == "status.podIP" || field_path == "status.podIPs") {
    return runtime.pod_ip.empty() ? JsonStringAt(pod, {"status", "podIP"}) : runtime.pod_ip;
  }
  if (field_path == "status.hostIP") {
    return runtime.host_ip.empty() ? JsonStringAt(pod, {"status", "hostIP"}) : runtime.host_ip;
  }
  return Status::InvalidArgument("fieldPath \"" + std::string(field_path) +
                                 "\" is not supported by pdpool's node agent");
}

std::string GoQuote(std::string_view s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t n = Utf8Length(s, i);
      if (n == 0) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\a':
        out += "\\a";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\v':
        out += "\\v";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out += "\"";
  return out;
}

std::string FormatDownwardApiMap(const std::map<std::string, std::string>& map) {
  std::string out;
  for (const auto& [k, v] : map) {
    if (!out.empty()) out += "\n";
    out += k + "=" + GoQuote(v);
  }
  return out;
}

StatusOr<std::vector<AtomicFile>> DownwardApiVolumeFiles(const Json& source, const Json& pod,
                                                         const PodRuntimeFields& runtime) {
  const int default_mode = JsonGet<int>(source, "/defaultMode", 0644);
  std::vector<AtomicFile> files;
  const Json* items = JsonChild(source, "items");
  if (items == nullptr) return files;
  if (!items->is_array()) return Status::InvalidArgument("items: must be a list");
  for (size_t i = 0; i < items->size(); ++i) {
    const Json& item = (*items)[i];
    const std::string where = "items[" + std::to_string(i) + "]";
    AtomicFile f;
    f.path = JsonGet<std::string>(item, "/path", "");
    if (Status s = ValidateVolumeItemPath(f.path); !s.ok()) {
      return Status::InvalidArgument(where + ": " + s.message());
    }
    f.mode = JsonGet<int>(item, "/mode", default_mode);
    if (JsonChild(item, "resourceFieldRef") != nullptr) {
      return Status::InvalidArgument(where + " (" + f.path +
                                     "): resourceFieldRef is not supported by pdpool's node agent");
    }
    const std::string field = JsonGet<std::string>(item, "/fieldRef/fieldPath", "");
    if (field.empty()) return Status::InvalidArgument(where + ": needs fieldRef.fieldPath");
    StatusOr<std::string> value = ResolveFieldRef(pod, field, runtime);
    if (!value.ok()) return Status::InvalidArgument(where + ": " + value.status().message());
    f.content = std::move(*value);
    files.push_back(std::move(f));
  }
  return files;
}

}  // namespace pdpool::agent
