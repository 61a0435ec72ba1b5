// The cuda backend's paged KV cache layout, shared by the host code and the kernels. The cache
// is one allocation of num_blocks blocks; a block is contiguous (device_kv.h) and holds, in
// this order, [layer][K or V][kv_head][slot in block][head_dim] bf16 elements, so one layer's
// K (or V) of one head in one block is a dense block_size × head_dim tile. Plain value;
// thread-safe.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PDPOOL_HOST_DEVICE __host__ __device__
#else
#define PDPOOL_HOST_DEVICE
#endif

namespace pdpool::agent::cuda {

struct KvCacheGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  // Strides in elements.
  int64_t head_stride = 0;   // block_size · head_dim
  int64_t kv_stride = 0;     // K → V of one layer: num_kv_heads · head_stride
  int64_t layer_stride = 0;  // 2 · kv_stride
  int64_t block_stride = 0;  // num_layers · layer_stride

  // Element offset of (K or V, kv head, token slot, dim 0) within one layer's view, where the
  // layer's view starts at cache + layer · layer_stride and slot = block · block_size + i.
  PDPOOL_HOST_DEVICE int64_t Offset(int kv, int head, int64_t slot) const {
    const int64_t block = slot / block_size;
    const int64_t in_block = slot - block * block_size;
    return block * block_stride + kv * kv_stride + head * head_stride + in_block * head_dim;
  }
};

inline KvCacheGeometry MakeKvCacheGeometry(int num_layers, int num_kv_heads, int head_dim,
                                           int block_size) {
  KvCacheGeometry g;
  g.num_layers = num_layers;
  g.num_kv_heads = num_kv_heads;
  g.head_dim = head_dim;
  g.block_size = block_size;
  g.head_stride = int64_t{block_size} * head_dim;
  g.kv_stride = int64_t{num_kv_heads} * g.head_stride;
  g.layer_stride = 2 * g.kv_stride;
  g.block_stride = int64_t{num_layers} * g.layer_stride;
  return g;
}

}  // namespace pdpool::agent::cuda
