// Conditions: metav1.Condition set/find over JSON arrays. Pure; see conditions.h for the
// thread-safety contract. Every JSON access is type-checked first, so nothing throws.
#include "controller/conditions.h"

#include <algorithm>
#include <string>
#include <vector>

namespace pdpool::controller {
namespace {

std::string_view TypeOf(const Json& condition) {
  if (!condition.is_object()) return {};
  auto it = condition.find("type");
  if (it == condition.end() || !it->is_string()) return {};
  return it->get_ref<const std::string&>();
}

std::string_view StringField(const Json& condition, const char* key) {
  auto it = condition.find(key);
  if (it == condition.end() || !it->is_string()) return {};
  return it->get_ref<const std::string&>();
}

// Cuts at `max` bytes without splitting a UTF-8 sequence.
std::string Truncate(std::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return std::string(s.substr(0, end));
}

// Valid entries, one per type (first wins), sorted by type.
Json Normalized(const Json& conditions) {
  std::vector<Json> kept;
  if (conditions.is_array()) {
    for (const Json& c : conditions) {
      const std::string_view type = TypeOf(c);
      if (type.empty()) continue;
      const bool duplicate =
          std::any_of(kept.begin(), kept.end(), [&](const Json& k) { return TypeOf(k) == type; });
      if (!duplicate) kept.push_back(c);
    }
  }
  std::stable_sort(kept.begin(), kept.end(),
                   [](const Json& a, const Json& b) { return TypeOf(a) < TypeOf(b); });
  Json out = Json::array();
  for (Json& c : kept) out.push_back(std::move(c));
  return out;
}

}  // namespace

bool SetCondition(Json* conditions, std::string_view type, std::string_view status,
                  std::string_view reason, std::string_view message, int64_t observed_generation,
                  WallTime now) {
  if (conditions == nullptr || type.empty()) return false;
  if (status != kConditionTrue && status != kConditionFalse) status = kConditionUnknown;

  Json updated = Normalized(*conditions);
  Json* existing = nullptr;
  for (Json& c : updated) {
    if (TypeOf(c) == type) existing = &c;
  }

  Json next = {{"type", std::string(type)},
               {"status", std::string(status)},
               {"reason", std::string(reason)},
               {"message", Truncate(message, kMaxConditionMessageBytes)},
               {"observedGeneration", observed_generation},
               {"lastTransitionTime", FormatRfc3339(now)}};
  if (existing != nullptr) {
    const std::string_view old_time = StringField(*existing, "lastTransitionTime");
    if (StringField(*existing, "status") == status && !old_time.empty()) {
      next["lastTransitionTime"] = std::string(old_time);
    }
    // Keep fields this code does not manage, as a read-modify-write should.
    for (auto it = existing->begin(); it != existing->end(); ++it) {
      if (!next.contains(it.key())) next[it.key()] = it.value();
    }
    *existing = std::move(next);
  } else {
    updated.push_back(std::move(next));
    updated = Normalized(updated);
  }

  if (updated == *conditions) return false;
  *conditions = std::move(updated);
  return true;
}

bool RemoveCondition(Json* conditions, std::string_view type) {
  if (conditions == nullptr || !conditions->is_array()) return false;
  const size_t before = conditions->size();
  Json kept = Json::array();
  for (Json& c : *conditions) {
    if (TypeOf(c) != type) kept.push_back(std::move(c));
  }
  *conditions = std::move(kept);
  return conditions->size() != before;
}

const Json* FindCondition(const Json& conditions, std::string_view type) {
  if (!conditions.is_array() || type.empty()) return nullptr;
  for (const Json& c : conditions) {
    if (TypeOf(c) == type) return &c;
  }
  return nullptr;
}

bool IsConditionTrue(const Json& conditions, std::string_view type) {
  const Json* c = FindCondition(conditions, type);
  return c != nullptr && StringField(*c, "status") == kConditionTrue;
}

}  // namespace pdpool::controller
