// JSON helpers shared by the controller and the agent.
#include "common/json.h"

namespace pdpool {

bool JsonContains(const Json& superset, const Json& subset) {
  if (subset.is_object()) {
    if (!superset.is_object()) return false;
    for (auto it = subset.begin(); it != subset.end(); ++it) {
      auto found = superset.find(it.key());
      if (it->is_null()) {
        if (found != superset.end() && !found->is_null()) return false;
        continue;
      }
      if (found == superset.end() || !JsonContains(*found, *it)) return false;
    }
    return true;
  }
  if (subset.is_array()) {
    if (!superset.is_array() || superset.size() != subset.size()) return false;
    for (size_t i = 0; i < subset.size(); ++i) {
      if (!JsonContains(superset[i], subset[i])) return false;
    }
    return true;
  }
  return superset == subset;
}

}  // namespace pdpool
