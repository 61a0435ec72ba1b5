// ReadSecretFile: reads a secret handed to a process as a file (the pool token, an API key,
// usually a mounted Secret), without the surrounding whitespace Secrets often carry. Errors name
// the flag and the path; the secret itself never appears in them. Thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace pdpool {

StatusOr<std::string> ReadSecretFile(const std::string& path, std::string_view flag);

}  // namespace pdpool
