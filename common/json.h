// Json: Kubernetes objects are held as JSON documents, not generated structs, so that every
// field pdpool does not model survives a read-modify-write untouched. That is why this
// third-party header is part of pdpool's interfaces.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace pdpool {

using Json = nlohmann::json;

// Safe nested lookup: returns the value at the path, or `fallback` when any step is missing or
// of the wrong type. Path is a JSON pointer ("/metadata/name").
template <typename T>
T JsonGet(const Json& doc, const char* pointer, T fallback) {
  try {
    const Json& v = doc.at(Json::json_pointer(pointer));
    if (v.is_null()) return fallback;
    return v.get<T>();
  } catch (...) {
    return fallback;
  }
}

}  // namespace pdpool
