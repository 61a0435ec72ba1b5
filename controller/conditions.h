// Conditions: metav1.Condition helpers over a JSON `status.conditions` array (type, status,
// reason, message, observedGeneration, lastTransitionTime), with the Kubernetes rule that
// lastTransitionTime moves only when status flips. Pure functions over values the caller owns;
// thread-safe as long as no two threads touch the same array.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/clock.h"
#include "common/json.h"

namespace pdpool::controller {

inline constexpr char kConditionTrue[] = "True";
inline constexpr char kConditionFalse[] = "False";
inline constexpr char kConditionUnknown[] = "Unknown";

// metav1.Condition caps message at 32768 bytes; longer ones are cut there (on a UTF-8 boundary).
inline constexpr size_t kMaxConditionMessageBytes = 32768;

// Sets condition `type` in `conditions` (an array; null or any non-array becomes an empty array).
// `status` other than "True"/"False"/"Unknown" is stored as "Unknown". lastTransitionTime is set
// to `now` (RFC 3339, seconds) when the condition is new or its status changes, and kept
// otherwise. The array is left sorted by type, one entry per type (entries that are not objects
// with a string type are dropped), so the written status is the same whatever order conditions
// were set in. Returns whether anything changed (i.e. whether status needs writing).
bool SetCondition(Json* conditions, std::string_view type, std::string_view status,
                  std::string_view reason, std::string_view message, int64_t observed_generation,
                  WallTime now);

// Removes condition `type`; returns whether it was there.
bool RemoveCondition(Json* conditions, std::string_view type);

// The condition object of `type`, or nullptr (also when `conditions` is not an array).
const Json* FindCondition(const Json& conditions, std::string_view type);

// Whether condition `type` exists with status "True".
bool IsConditionTrue(const Json& conditions, std::string_view type);

}  // namespace pdpool::controller
