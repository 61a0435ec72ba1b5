// Base64 (RFC 4648, standard alphabet, padded) for Kubernetes Secret data and kubeconfig
// *-data fields. Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace pdpool {

std::string Base64Encode(std::string_view in);
// Ignores padding and line breaks; InvalidArgument "<what>: invalid base64" on other characters.
StatusOr<std::string> Base64Decode(const std::string& in, const std::string& what);

}  // namespace pdpool
