// Json: Kubernetes objects are held as JSON documents, not generated structs, so that every
// field pdpool does not model survives a read-modify-write untouched. That is why this
// third-party header is part of pdpool's interfaces.
#pragma once

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

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

// Child `key` of `obj` when obj is an object holding it (and it is not null), else nullptr.
inline const Json* JsonChild(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// The value at a path of object keys, or nullptr. Unlike JSON pointers, keys need no
// escaping ("nvidia.com/gpu").
inline const Json* JsonPath(const Json& obj, std::initializer_list<std::string_view> keys) {
  const Json* cur = &obj;
  for (std::string_view k : keys) {
    cur = JsonChild(*cur, k);
    if (cur == nullptr) return nullptr;
  }
  return cur;
}

// The string at a path, or "" when absent or not a string.
inline std::string JsonStringAt(const Json& obj, std::initializer_list<std::string_view> keys) {
  const Json* v = JsonPath(obj, keys);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string();
}

// Whether every field of `subset` is present with an equal value in `superset` (objects
// recursively, arrays element by element with equal length). Fields only in `superset` (server
// defaults) do not count; a null in `subset` means "absent or null". Lets writers skip writes
// that would change nothing.
bool JsonContains(const Json& superset, const Json& subset);

}  // namespace pdpool
