// KvBlockAllocator: hands out the fixed-size blocks of a paged KV cache, all-or-nothing, and
// accounts for them (the usage ratio the workers export). Not thread-safe: the Engine guards it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace pdpool::agent {

class KvBlockAllocator {
 public:
  explicit KvBlockAllocator(int32_t num_blocks);

  // `count` free blocks, or nullopt (and nothing taken) when fewer are free.
  std::optional<std::vector<int32_t>> Allocate(int32_t count);
  // Appends `count` blocks to `blocks`; false (and nothing taken) when fewer are free.
  bool Extend(std::vector<int32_t>& blocks, int32_t count);
  // Returns blocks to the pool. Freeing a block twice is a broken invariant: it aborts.
  void Free(std::span<const int32_t> blocks);

  int32_t total_blocks() const { return static_cast<int32_t>(in_use_.size()); }
  int32_t free_blocks() const { return static_cast<int32_t>(free_.size()); }
  int32_t used_blocks() const { return total_blocks() - free_blocks(); }
  double usage_ratio() const {
    return total_blocks() == 0 ? 0.0 : static_cast<double>(used_blocks()) / total_blocks();
  }

 private:
  std::vector<int32_t> free_;  // stack: the most recently freed block is reused first
  std::vector<bool> in_use_;
};

// Blocks needed to hold `tokens` token slots.
inline int32_t BlocksForTokens(int64_t tokens, int32_t block_size) {
  return static_cast<int32_t>((tokens + block_size - 1) / block_size);
}

}  // namespace pdpool::agent
