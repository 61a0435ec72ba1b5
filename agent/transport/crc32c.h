// CRC-32C (Castagnoli), the checksum of each KV block frame on the wire. Thread-safe.
#pragma once

#include <cstdint>
#include <string_view>

namespace pdpool::agent {

uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

}  // namespace pdpool::agent
