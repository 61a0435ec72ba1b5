// NewBackend: see backend_factory.h.
#include "agent/engine/backend_factory.h"

#include <algorithm>

#include "agent/engine/cpu/cpu_backend.h"
#if defined(PDPOOL_HAVE_CUDA)
#include "agent/engine/cuda/cuda_backend.h"
#endif
#include "agent/engine/sim/sim_backend.h"
#include "agent/model/weights.h"

namespace pdpool::agent {

bool CudaBackendBuilt() {
#if defined(PDPOOL_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options) {
  if (options.block_size < 1 || options.block_size > 1024) {
    return Status::InvalidArgument("--block-size " + std::to_string(options.block_size) +
                                   ": must be 1..1024");
  }
  auto config = ResolveModelConfig(options.model, options.weights);
  if (!config.ok()) return config.status();
  if (options.backend == "cpu") {
    auto weights = LoadWeights(*config, options.weights);
    if (!weights.ok()) return weights.status();
    int blocks = options.num_kv_blocks;
    if (blocks <= 0) {
      const int64_t block_bytes = config->KvBytesPerToken(4) * options.block_size;
      blocks =
          static_cast<int>(std::clamp<int64_t>(options.kv_cache_bytes / block_bytes, 1, 1 << 20));
    }
    return NewCpuBackend(std::move(*config), std::move(*weights), options.block_size, blocks);
  }
  if (options.backend == "sim") {
    SimBackendOptions sim;
    sim.model = std::move(*config);
    sim.gpu = options.gpu;
    sim.tensor_parallel = options.tensor_parallel;
    sim.calibration_file = options.calibration_file;
    sim.block_size = options.block_size;
    sim.num_blocks = options.num_kv_blocks;
    sim.gpu_memory_utilization = options.gpu_memory_utilization;
    return NewSimBackend(sim);
  }
  if (options.backend == "cuda") {
#if defined(PDPOOL_HAVE_CUDA)
    if (options.tensor_parallel != 1) {
      return Status::InvalidArgument(
          "--tensor-parallel " + std::to_string(options.tensor_parallel) +
          ": the cuda backend runs a model on one GPU; tensor parallelism is modeled by the sim "
          "backend only");
    }
    CudaBackendOptions cuda;
    cuda.model = std::move(*config);
    cuda.weights = options.weights;
    cuda.device = options.device;
    cuda.block_size = options.block_size;
    cuda.num_blocks = options.num_kv_blocks;
    cuda.gpu_memory_utilization = options.gpu_memory_utilization;
    cuda.max_batched_tokens = options.max_batched_tokens;
    cuda.max_sequences = options.max_sequences;
    cuda.max_model_len = options.max_model_len;
    cuda.cuda_graphs = options.cuda_graphs;
    auto decode_gemm = ParseDecodeGemm(options.decode_gemm);
    if (!decode_gemm.ok()) return decode_gemm.status();
    cuda.decode_gemm = *decode_gemm;
    auto prefill_attention = ParsePrefillAttention(options.prefill_attention);
    if (!prefill_attention.ok()) return prefill_attention.status();
    cuda.prefill_attention = *prefill_attention;
    return NewCudaBackend(cuda);
#else
    return Status::InvalidArgument(
        "backend \"cuda\" is not built into this binary: it was built without nvcc (CMake "
        "found no CUDA compiler, or -DPDPOOL_CUDA=OFF); use cpu or sim");
#endif
  }
  return Status::InvalidArgument("backend \"" + options.backend + "\": must be cpu, sim or cuda");
}

}  // namespace pdpool::agent
