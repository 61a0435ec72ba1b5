// KvBlockAllocator: see kv_block_allocator.h.
#include "agent/engine/kv_block_allocator.h"

#include <cstdio>
#include <cstdlib>

namespace pdpool::agent {

KvBlockAllocator::KvBlockAllocator(int32_t num_blocks)
    : in_use_(static_cast<size_t>(num_blocks < 0 ? 0 : num_blocks), false) {
  free_.reserve(in_use_.size());
  // Highest first on the stack, so block 0 is handed out first.
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

std::optional<std::vector<int32_t>> KvBlockAllocator::Allocate(int32_t count) {
  std::vector<int32_t> blocks;
  if (!Extend(blocks, count)) return std::nullopt;
  return blocks;
}

bool KvBlockAllocator::Extend(std::vector<int32_t>& blocks, int32_t count) {
  if (count < 0 || count > free_blocks()) return false;
  blocks.reserve(blocks.size() + count);
  for (int32_t i = 0; i < count; ++i) {
    int32_t b = free_.back();
    free_.pop_back();
    in_use_[b] = true;
    blocks.push_back(b);
  }
  return true;
}

void KvBlockAllocator::Free(std::span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    if (b < 0 || b >= total_blocks() || !in_use_[b]) {
      std::fprintf(stderr, "KvBlockAllocator: freeing block %d that is not in use\n", b);
      std::abort();
    }
    in_use_[b] = false;
    free_.push_back(b);
  }
}

}  // namespace pdpool::agent
