// engine_bench (issue 4): the cuda backend on one GPU against its roofline floor and the peer.
// Measures the two ceilings first (device-to-device copy, read + write counted; cuBLAS bf16
// GEMM n³ on random data), then times the cuda backend (NewCudaBackend, dummy weights) through
// Backend::Step: decode steps of batch × context cases and single-sequence prefills. Prints one
// table (measured, floor, fraction of the floor, TARGETS.md target, peer, pdpool/peer, the sim's
// prediction) and writes the same as JSON (--json; rewritten after every row, so a run cut
// short still leaves what it measured). What is counted: bench/gpu/engine_cases.h.
//
// Timing: every timed Step is bracketed by cudaDeviceSynchronize and read on the host's steady
// clock (Step returns sampled tokens to the host, so it is synchronous anyway); warm-up Steps
// first (they capture the decode CUDA graphs); the median is reported. Decode keeps the context
// fixed: every timed step writes the new token's KV at position `context` again (as the peer
// crops its cache back), so each step reads exactly `context` cached tokens per sequence.
//
// Benchmarks report, they do not gate: exit 0 when it ran (targets met or not) and when there
// is no GPU (with a message); 1 when it could not run (a CUDA error, a backend that fails to
// start); 2 on bad flags. Single-threaded.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "agent/engine/backend.h"
#include "agent/engine/cuda/cuda_backend.h"
#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/engine/sim/perf_model.h"
#include "agent/model/model_config.h"
#include "bench/gpu/engine_cases.h"
#include "common/status.h"

// cuBLAS's counterpart of PDPOOL_CUDA_RETURN_IF_ERROR (agent/engine/cuda/cuda_check.h).
#define PDPOOL_CUBLAS_RETURN_IF_ERROR(call)                                                   \
  do {                                                                                        \
    if (cublasStatus_t pdpool_cublas_status_ = (call);                                        \
        pdpool_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                     \
      return ::pdpool::Status::Internal(std::string(#call) + " failed at " + __FILE__ + ":" + \
                                        std::to_string(__LINE__) + ": " +                     \
                                        cublasGetStatusString(pdpool_cublas_status_));        \
    }                                                                                         \
  } while (0)

namespace {

using namespace pdpool;
using namespace pdpool::bench::engine;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string preset = "llama-3.1-8b";
  std::string weights = "dummy:1";
  std::string rows;
  std::string json_path;
  std::string peer_json;
  std::string calibration;  // for the sim column; empty: built-in
  int device = 0;
  int block_size = 16;
  int num_blocks = 0;  // 0: what the selected cases need, plus a margin
  int max_batched_tokens = 8192;
  bool no_cuda_graphs = false;
  std::string decode_gemm = "auto";
  std::string prefill_attention = "auto";
  int decode_warmup = 5;
  int decode_steps = 20;
  int prefill_warmup = 2;
  int prefill_repeats = 5;
  double copy_gib = 2.0;
  int gemm_n = 8192;
  int ceiling_warmup = 3;
  int ceiling_repeats = 20;
  double max_seconds = 0;  // 0: no limit
  uint64_t seed = 1;
};

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void Progress(const std::string& line) {
  std::fprintf(stderr, "[engine_bench] %s\n", line.c_str());
  std::fflush(stderr);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Round-to-nearest-even float → bf16 bits (inputs here are finite).
uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// One cudaMalloc, freed on destruction (a failing cudaFree at teardown is ignored: nothing
// useful is left to do with it).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
  }

  static StatusOr<DeviceBuffer> Allocate(size_t bytes) {
    DeviceBuffer b;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, bytes));
    b.bytes_ = bytes;
    return b;
  }
  char* data() const { return static_cast<char*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Random (never zero-filled) bytes: a 64 MiB random chunk from the host, then doubled on the
// device until the buffer is full.
Status FillRandomBytes(const DeviceBuffer& buf, uint64_t seed) {
  const size_t chunk = std::min<size_t>(buf.bytes(), size_t{64} << 20);
  std::vector<uint64_t> host((chunk + 7) / 8);
  uint64_t state = seed;
  for (uint64_t& w : host) w = SplitMix64(&state);
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(buf.data(), host.data(), chunk, cudaMemcpyHostToDevice));
  size_t filled = chunk;
  while (filled < buf.bytes()) {
    const size_t n = std::min(filled, buf.bytes() - filled);
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buf.data() + filled, buf.data(), n, cudaMemcpyDeviceToDevice));
    filled += n;
  }
  return Status::Ok();
}

// bf16 values uniform in [-1, 1).
Status FillRandomBf16(const DeviceBuffer& buf, uint64_t seed) {
  std::vector<uint16_t> host(buf.bytes() / 2);
  uint64_t state = seed;
  for (uint16_t& h : host) {
    const double u = static_cast<double>(SplitMix64(&state) >> 11) * 0x1.0p-53;
    h = FloatToBf16(static_cast<float>(2 * u - 1));
  }
  PDPOOL_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(buf.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  return Status::Ok();
}

// Times `launch` (asynchronous work on `stream`) with CUDA events: `warmup` untimed runs, then
// `repeats` timed ones; returns each timed run's milliseconds.
StatusOr<std::vector<double>> TimeWithEvents(cudaStream_t stream,
                                             const std::function<Status()>& launch, int warmup,
                                             int repeats) {
  cudaEvent_t start = nullptr, stop = nullptr;
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  if (cudaError_t e = cudaEventCreate(&stop); e != cudaSuccess) {
    (void)cudaEventDestroy(start);
    return agent::cuda::CudaStatus(e, "cudaEventCreate(&stop)", __FILE__, __LINE__);
  }
  auto destroy = [&] {
    (void)cudaEventDestroy(start);
    (void)cudaEventDestroy(stop);
  };
  auto run = [&]() -> StatusOr<std::vector<double>> {
    for (int i = 0; i < warmup; ++i) {
      if (Status s = launch(); !s.ok()) return s;
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    std::vector<double> ms;
    for (int i = 0; i < repeats; ++i) {
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream));
      if (Status s = launch(); !s.ok()) return s;
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, stream));
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
      float elapsed = 0;
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&elapsed, start, stop));
      ms.push_back(elapsed);
    }
    return ms;
  };
  StatusOr<std::vector<double>> result = run();
  destroy();
  return result;
}

StatusOr<Ceilings> MeasureCeilings(const Options& opt) {
  Ceilings c;
  cudaStream_t stream = nullptr;
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> stream_guard(
      stream, [](cudaStream_t s) { (void)cudaStreamDestroy(s); });

  // Device-to-device copy: one buffer read, one written; both counted (TARGETS.md).
  {
    const size_t bytes = static_cast<size_t>(opt.copy_gib * (1 << 30)) & ~size_t{255};
    auto src = DeviceBuffer::Allocate(bytes);
    if (!src.ok()) return src.status();
    auto dst = DeviceBuffer::Allocate(bytes);
    if (!dst.ok()) return dst.status();
    if (Status s = FillRandomBytes(*src, opt.seed); !s.ok()) return s;
    if (Status s = FillRandomBytes(*dst, opt.seed + 1); !s.ok()) return s;
    auto ms = TimeWithEvents(
        stream,
        [&]() -> Status {
          PDPOOL_CUDA_RETURN_IF_ERROR(
              cudaMemcpyAsync(dst->data(), src->data(), bytes, cudaMemcpyDeviceToDevice, stream));
          return Status::Ok();
        },
        opt.ceiling_warmup, opt.ceiling_repeats);
    if (!ms.ok()) return ms.status();
    c.copy_bytes = static_cast<double>(bytes);
    c.copy_ms = Median(*ms);
    c.copy_bytes_per_s = 2.0 * c.copy_bytes / (c.copy_ms * 1e-3);
    // The copy really happened: a sample of the destination equals the source.
    std::vector<char> a(4096), b(4096);
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(a.data(), src->data() + bytes / 2, a.size(), cudaMemcpyDeviceToHost));
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(b.data(), dst->data() + bytes / 2, b.size(), cudaMemcpyDeviceToHost));
    if (a != b) return Status::Internal("device-to-device copy: destination differs from source");
  }

  // cuBLAS bf16 GEMM n×n×n, fp32 accumulation, bf16 output, random inputs.
  {
    const int n = opt.gemm_n;
    const size_t elems = size_t(n) * n;
    auto a = DeviceBuffer::Allocate(elems * 2);
    if (!a.ok()) return a.status();
    auto b = DeviceBuffer::Allocate(elems * 2);
    if (!b.ok()) return b.status();
    auto out = DeviceBuffer::Allocate(elems * 2);
    if (!out.ok()) return out.status();
    if (Status s = FillRandomBf16(*a, opt.seed + 2); !s.ok()) return s;
    if (Status s = FillRandomBf16(*b, opt.seed + 3); !s.ok()) return s;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemset(out->data(), 0xFF, elems * 2));  // poison (NaN)
    cublasHandle_t handle = nullptr;
    PDPOOL_CUBLAS_RETURN_IF_ERROR(cublasCreate(&handle));
    std::unique_ptr<cublasContext, void (*)(cublasHandle_t)> handle_guard(
        handle, [](cublasHandle_t h) { (void)cublasDestroy(h); });
    PDPOOL_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle, stream));
    const float alpha = 1.0f, beta = 0.0f;
    auto ms = TimeWithEvents(
        stream,
        [&]() -> Status {
          PDPOOL_CUBLAS_RETURN_IF_ERROR(
              cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a->data(),
                           CUDA_R_16BF, n, b->data(), CUDA_R_16BF, n, &beta, out->data(),
                           CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          return Status::Ok();
        },
        opt.ceiling_warmup, opt.ceiling_repeats);
    if (!ms.ok()) return ms.status();
    c.gemm_n = n;
    c.gemm_ms = Median(*ms);
    c.gemm_flops_per_s = 2.0 * n * double(n) * n / (c.gemm_ms * 1e-3);
    // Every sampled output element written, finite, and not all zero.
    std::vector<uint16_t> sample(4096);
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(sample.data(), out->data() + elems, sample.size() * 2, cudaMemcpyDeviceToHost));
    bool any_nonzero = false;
    for (uint16_t h : sample) {
      const float v = Bf16ToFloat(h);
      if (!std::isfinite(v)) return Status::Internal("GEMM output has a non-finite value");
      any_nonzero = any_nonzero || v != 0;
    }
    if (!any_nonzero) return Status::Internal("GEMM output sample is all zero");
  }
  return c;
}

// Runs the cases through one cuda backend.
class EngineRunner {
 public:
  EngineRunner(agent::Backend* backend, const Options& opt) : backend_(backend), opt_(opt) {}

  StatusOr<std::vector<double>> Run(const EngineCase& c) {
    return c.phase == Phase::kDecode ? RunDecode(c) : RunPrefill(c);
  }

 private:
  std::vector<int32_t> RandomTokens(int n, uint64_t stream) const {
    std::mt19937_64 rng(opt_.seed * 1000003 + stream);
    std::uniform_int_distribution<int32_t> dist(0, backend_->model().vocab_size - 1);
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = dist(rng);
    return out;
  }

  int BlocksFor(int64_t positions) const {
    const int bs = backend_->kv_layout().block_size;
    return static_cast<int>((positions + bs - 1) / bs);
  }

  Status CheckTokens(const agent::StepResult& result, size_t expected) const {
    if (result.next_tokens.size() != expected) {
      return Status::Internal("Step returned " + std::to_string(result.next_tokens.size()) +
                              " tokens for " + std::to_string(expected) + " sequences");
    }
    for (int32_t t : result.next_tokens) {
      if (t < -1 || t >= backend_->model().vocab_size) {
        return Status::Internal("Step returned token " + std::to_string(t) + " outside the vocab");
      }
    }
    return Status::Ok();
  }

  // One host-timed Step: synchronized before and after.
  StatusOr<double> TimedStep(const agent::StepBatch& batch, agent::StepResult* result) {
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    const auto t0 = Clock::now();
    auto r = backend_->Step(batch);
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    const auto t1 = Clock::now();
    if (!r.ok()) return r.status();
    *result = std::move(*r);
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
  }

  StatusOr<std::vector<double>> RunDecode(const EngineCase& c) {
    const int per_seq = BlocksFor(int64_t{c.context} + 1);
    if (int64_t{per_seq} * c.batch > backend_->kv_layout().num_blocks) {
      return Status::InvalidArgument("needs " + std::to_string(per_seq * c.batch) +
                                     " KV blocks, the backend has " +
                                     std::to_string(backend_->kv_layout().num_blocks));
    }
    std::vector<std::vector<int32_t>> tables(c.batch);
    for (int i = 0; i < c.batch; ++i) {
      for (int b = 0; b < per_seq; ++b) tables[i].push_back(i * per_seq + b);
    }
    // Fill every sequence's KV with `context` prompt tokens: prefill Steps of at most
    // max_batched_tokens tokens (prompts chunked where they do not fit); the last chunk samples
    // the first decode token.
    std::vector<int32_t> next(c.batch, -1);
    {
      std::vector<std::vector<int32_t>> prompts(c.batch);
      for (int i = 0; i < c.batch; ++i) prompts[i] = RandomTokens(c.context, i);
      const int budget = opt_.max_batched_tokens;
      int seq = 0, pos = 0, steps = 0;
      const auto t0 = Clock::now();
      while (seq < c.batch) {
        agent::StepBatch batch;
        std::vector<int> sampled_seq;
        int used = 0;
        while (seq < c.batch && used < budget) {
          const int len = std::min(c.context - pos, budget - used);
          agent::SequenceStep s;
          s.seq_id = static_cast<uint64_t>(seq) + 1;
          s.tokens.assign(prompts[seq].begin() + pos, prompts[seq].begin() + pos + len);
          s.start_position = pos;
          s.block_table.assign(tables[seq].begin(), tables[seq].begin() + BlocksFor(pos + len));
          s.sample = pos + len == c.context;
          s.sampling.temperature = 0;
          batch.sequences.push_back(std::move(s));
          sampled_seq.push_back(pos + len == c.context ? seq : -1);
          used += len;
          pos += len;
          if (pos == c.context) {
            ++seq;
            pos = 0;
          }
        }
        auto r = backend_->Step(batch);
        if (!r.ok()) return r.status();
        if (Status s = CheckTokens(*r, batch.sequences.size()); !s.ok()) return s;
        for (size_t k = 0; k < sampled_seq.size(); ++k) {
          if (sampled_seq[k] >= 0) next[sampled_seq[k]] = r->next_tokens[k];
        }
        ++steps;
      }
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
      Progress(c.Name() + ": KV filled (" + std::to_string(int64_t{c.batch} * c.context) +
               " tokens in " + std::to_string(steps) + " prefill steps, " +
               std::to_string(std::chrono::duration<double>(Clock::now() - t0).count()) + " s)");
    }
    std::vector<double> samples;
    for (int step = 0; step < opt_.decode_warmup + opt_.decode_steps; ++step) {
      agent::StepBatch batch;
      for (int i = 0; i < c.batch; ++i) {
        agent::SequenceStep s;
        s.seq_id = static_cast<uint64_t>(i) + 1;
        s.tokens = {next[i]};
        s.start_position = c.context;  // fixed: the context read stays `context` tokens
        s.block_table = tables[i];
        s.sample = true;
        s.sampling.temperature = 0;
        s.sample_index = 1 + step;
        batch.sequences.push_back(std::move(s));
      }
      agent::StepResult result;
      auto ms = TimedStep(batch, &result);
      if (!ms.ok()) return ms.status();
      if (Status s = CheckTokens(result, c.batch); !s.ok()) return s;
      for (int i = 0; i < c.batch; ++i) {
        if (result.next_tokens[i] < 0) return Status::Internal("decode step sampled no token");
        next[i] = result.next_tokens[i];
      }
      if (step >= opt_.decode_warmup) samples.push_back(*ms);
    }
    return samples;
  }

  StatusOr<std::vector<double>> RunPrefill(const EngineCase& c) {
    if (c.tokens > opt_.max_batched_tokens) {
      return Status::InvalidArgument(std::to_string(c.tokens) +
                                     " tokens exceed max_batched_tokens " +
                                     std::to_string(opt_.max_batched_tokens));
    }
    const int blocks = BlocksFor(c.tokens);
    if (blocks > backend_->kv_layout().num_blocks) {
      return Status::InvalidArgument("needs " + std::to_string(blocks) + " KV blocks");
    }
    agent::StepBatch batch;
    agent::SequenceStep s;
    s.seq_id = 1;
    s.tokens = RandomTokens(c.tokens, 7777);
    s.start_position = 0;
    for (int b = 0; b < blocks; ++b) s.block_table.push_back(b);
    s.sample = true;
    s.sampling.temperature = 0;
    batch.sequences.push_back(std::move(s));
    std::vector<double> samples;
    for (int i = 0; i < opt_.prefill_warmup + opt_.prefill_repeats; ++i) {
      agent::StepResult result;
      auto ms = TimedStep(batch, &result);
      if (!ms.ok()) return ms.status();
      if (Status st = CheckTokens(result, 1); !st.ok()) return st;
      if (i >= opt_.prefill_warmup) samples.push_back(*ms);
    }
    return samples;
  }

  agent::Backend* backend_;
  const Options& opt_;
};

int Run(const Options& opt) {
  auto cases = SelectRows(opt.rows);
  if (!cases.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", cases.status().message().c_str());
    return 2;
  }
  auto model = agent::ModelConfigFromPreset(opt.preset);
  if (!model.ok()) {
    std::fprintf(stderr, "engine_bench: --preset: %s\n", model.status().message().c_str());
    return 2;
  }
  Report report;
  report.tool = "engine_bench";
  report.date = UtcNow();
  report.preset = opt.preset;
  report.model = *model;
  if (!opt.peer_json.empty()) {
    auto peer = LoadPeerJson(opt.peer_json);
    if (!peer.ok()) {
      std::fprintf(stderr, "engine_bench: --peer-json: %s\n", peer.status().message().c_str());
      return 2;
    }
    if (!peer->preset.empty() && peer->preset != opt.preset) {
      report.notes.push_back("the peer ran preset " + peer->preset + ", this run " + opt.preset);
    }
    report.peer = *peer;
    report.peer_source = opt.peer_json;
  }
  auto calibration = agent::LoadCalibration(opt.calibration);
  if (!calibration.ok()) {
    std::fprintf(stderr, "engine_bench: --calibration: %s\n",
                 calibration.status().message().c_str());
    return 2;
  }
  auto write_json = [&]() {
    if (opt.json_path.empty()) return;
    if (Status s = WriteFileAtomically(opt.json_path, ReportToJson(report).dump(1) + "\n");
        !s.ok()) {
      std::fprintf(stderr, "engine_bench: --json: %s\n", s.message().c_str());
    }
  };

  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    const std::string why = e != cudaSuccess
                                ? std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e)
                                : std::string("0 devices");
    std::printf("engine_bench: no CUDA GPU here (cudaGetDeviceCount: %s); nothing measured.\n",
                why.c_str());
    if (!opt.json_path.empty()) {
      Json skipped = {{"tool", "engine_bench"},
                      {"date", report.date},
                      {"skipped", "no CUDA GPU: " + why},
                      {"complete", false},
                      {"rows", Json::array()}};
      (void)WriteFileAtomically(opt.json_path, skipped.dump(1) + "\n");
    }
    return 0;
  }
  auto fail = [&](const std::string& what, const Status& s) {
    std::fprintf(stderr, "engine_bench: %s: %s\n", what.c_str(), s.ToString().c_str());
    report.complete = false;
    report.notes.push_back(what + ": " + s.ToString());
    write_json();
    return 1;
  };
  if (cudaError_t e = cudaSetDevice(opt.device); e != cudaSuccess) {
    return fail("cudaSetDevice", agent::cuda::CudaStatus(e, "cudaSetDevice", __FILE__, __LINE__));
  }
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, opt.device); e != cudaSuccess) {
    return fail("cudaGetDeviceProperties",
                agent::cuda::CudaStatus(e, "cudaGetDeviceProperties", __FILE__, __LINE__));
  }
  int driver = 0, runtime = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  report.device_name = prop.name;
  report.device =
      Json{{"ordinal", opt.device},
           {"compute_capability", std::to_string(prop.major) + "." + std::to_string(prop.minor)},
           {"multiprocessors", prop.multiProcessorCount},
           {"memory_bytes", static_cast<double>(prop.totalGlobalMem)},
           {"l2_bytes", prop.l2CacheSize},
           {"driver_version", driver},
           {"runtime_version", runtime}};
  if (auto spec = agent::LookupGpu(prop.name); spec.ok()) report.datasheet = *spec;
  report.complete = false;
  Progress("device " + report.device_name + "; measuring the ceilings");

  auto ceilings = MeasureCeilings(opt);
  if (!ceilings.ok()) return fail("ceilings", ceilings.status());
  report.ceilings = *ceilings;
  Progress("copy " + std::to_string(ceilings->copy_bytes_per_s / 1e12) + " TB/s, GEMM " +
           std::to_string(ceilings->gemm_flops_per_s / 1e12) + " TFLOP/s");

  std::optional<agent::PerfModel> sim;
  if (report.datasheet) {
    const agent::GpuCalibration& cal = calibration->For(report.datasheet->name);
    auto perf = agent::PerfModel::Create(*model, *report.datasheet, cal, 1);
    if (perf.ok()) {
      sim = *perf;
      report.sim_calibration = cal;
    }
  }

  // Backend sized for the selected cases.
  int max_batch = 1, max_positions = 1, needed_blocks = 1, max_prefill = 0;
  const int bs = opt.block_size;
  for (const EngineCase& c : *cases) {
    max_batch = std::max(max_batch, c.batch);
    const int positions = c.context + c.tokens;
    max_positions = std::max(max_positions, positions);
    needed_blocks = std::max(needed_blocks, c.batch * ((positions + bs - 1) / bs));
    if (c.phase == Phase::kPrefill) max_prefill = std::max(max_prefill, c.tokens);
  }
  Options run_opt = opt;
  run_opt.max_batched_tokens = std::max(opt.max_batched_tokens, max_prefill);
  agent::CudaBackendOptions bo;
  bo.model = *model;
  bo.weights = opt.weights;
  bo.device = opt.device;
  bo.block_size = bs;
  bo.num_blocks = opt.num_blocks > 0 ? opt.num_blocks : needed_blocks + 64;
  bo.max_batched_tokens = run_opt.max_batched_tokens;
  bo.max_sequences = std::max(64, max_batch);
  bo.max_model_len = (max_positions + bs - 1) / bs * bs;
  bo.cuda_graphs = !opt.no_cuda_graphs;
  auto decode_gemm = agent::ParseDecodeGemm(opt.decode_gemm);
  if (!decode_gemm.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", decode_gemm.status().ToString().c_str());
    return 2;
  }
  bo.decode_gemm = *decode_gemm;
  auto prefill_attention = agent::ParsePrefillAttention(opt.prefill_attention);
  if (!prefill_attention.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", prefill_attention.status().ToString().c_str());
    return 2;
  }
  bo.prefill_attention = *prefill_attention;
  report.backend = Json{{"backend", "cuda"},
                        {"weights", bo.weights},
                        {"block_size", bo.block_size},
                        {"num_blocks", bo.num_blocks},
                        {"max_batched_tokens", bo.max_batched_tokens},
                        {"max_sequences", bo.max_sequences},
                        {"max_model_len", bo.max_model_len},
                        {"cuda_graphs", bo.cuda_graphs},
                        {"decode_gemm", opt.decode_gemm},
                        {"prefill_attention", opt.prefill_attention},
                        {"sampling", "greedy"}};
  report.timing =
      "host steady clock around each Backend::Step, cudaDeviceSynchronize before and after; "
      "decode: " +
      std::to_string(opt.decode_warmup) + " warm-up + median of " +
      std::to_string(opt.decode_steps) +
      " steps at a fixed context; prefill: " + std::to_string(opt.prefill_warmup) +
      " warm-up + median of " + std::to_string(opt.prefill_repeats) +
      " Steps; ceilings: CUDA events, " + std::to_string(opt.ceiling_warmup) +
      " warm-up + median of " + std::to_string(opt.ceiling_repeats);
  for (const EngineCase& c : *cases) {
    MeasuredRow row;
    row.c = c;
    row.error = "not run yet";
    if (sim) row.sim_ms = SimPredictSeconds(*sim, c) * 1e3;
    report.rows.push_back(std::move(row));
  }
  write_json();

  Progress("starting the cuda backend (" + opt.preset + ", " + opt.weights + ", " +
           std::to_string(bo.num_blocks) + " KV blocks)");
  const auto start_backend = Clock::now();
  auto backend = agent::NewCudaBackend(bo);
  if (!backend.ok()) return fail("NewCudaBackend", backend.status());
  Progress("backend ready in " +
           std::to_string(std::chrono::duration<double>(Clock::now() - start_backend).count()) +
           " s");

  EngineRunner runner(backend->get(), run_opt);
  const auto start = Clock::now();
  // The rows with a TARGETS.md target run first, so that a run cut short (--max-seconds, a
  // timeout) still has them; the table keeps the grid's order.
  std::vector<MeasuredRow*> order;
  for (MeasuredRow& row : report.rows) {
    if (TargetFor(opt.preset, row.c)) order.push_back(&row);
  }
  for (MeasuredRow& row : report.rows) {
    if (!TargetFor(opt.preset, row.c)) order.push_back(&row);
  }
  for (MeasuredRow* row_ptr : order) {
    MeasuredRow& row = *row_ptr;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (opt.max_seconds > 0 && elapsed > opt.max_seconds) {
      row.error = "skipped: --max-seconds " + std::to_string(opt.max_seconds) + " reached";
      continue;
    }
    Progress(row.c.Name() + ": running");
    auto samples = runner.Run(row.c);
    if (!samples.ok()) {
      row.error = samples.status().ToString();
      Progress(row.c.Name() + ": FAILED: " + row.error);
      // A sticky CUDA error poisons every later call: stop here.
      if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
        report.notes.push_back("stopped after " + row.c.Name() + ": the CUDA context is broken");
        break;
      }
    } else {
      row.samples_ms = *samples;
      row.error.clear();
      Progress(row.c.Name() + ": median " + std::to_string(row.MedianMs()) + " ms");
    }
    write_json();
  }
  report.complete = std::all_of(report.rows.begin(), report.rows.end(),
                                [](const MeasuredRow& r) { return !r.samples_ms.empty(); });
  write_json();
  std::printf("%s", RenderTable(report).c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "engine_bench: the cuda backend on one GPU against its roofline floor and the peer "
      "(issue 4). Exit 0 when it ran or there is no GPU, 1 when it could not run, 2 on bad "
      "flags."};
  app.add_option("--preset", opt.preset, "model preset (ModelConfigFromPreset)")
      ->capture_default_str();
  app.add_option("--weights", opt.weights, "\"dummy:<seed>\" or a safetensors path")
      ->capture_default_str();
  app.add_option("--rows", opt.rows,
                 "cases: comma list of all, decode, prefill, decode:B:C, prefill:T (default all)");
  app.add_option("--json", opt.json_path, "write the results as JSON here");
  app.add_option("--peer-json", opt.peer_json,
                 "peer_hf_llama.py --json output: adds peer columns and pdpool/peer");
  app.add_option("--calibration", opt.calibration,
                 "sim calibration JSON for the 'sim ms' column (default: built-in)");
  app.add_option("--device", opt.device, "CUDA device ordinal")->capture_default_str();
  app.add_option("--block-size", opt.block_size, "KV block size")->capture_default_str();
  app.add_option("--num-blocks", opt.num_blocks, "KV blocks (0: what the cases need + 64)")
      ->capture_default_str();
  app.add_option("--max-batched-tokens", opt.max_batched_tokens,
                 "most tokens per Step (raised to the longest prefill)")
      ->capture_default_str();
  app.add_flag("--no-cuda-graphs", opt.no_cuda_graphs, "decode without CUDA graphs");
  app.add_option("--decode-gemm", opt.decode_gemm,
                 "GEMMs of steps of at most 8 rows: auto (measured at load; the times are "
                 "logged), cublas or skinny")
      ->capture_default_str();
  app.add_option("--prefill-attention", opt.prefill_attention,
                 "prefill attention kernel: auto (the faster of wgmma and mma at load, where "
                 "wgmma runs), mma or wgmma")
      ->capture_default_str();
  app.add_option("--decode-warmup", opt.decode_warmup)->capture_default_str();
  app.add_option("--decode-steps", opt.decode_steps, "timed decode steps per case")
      ->capture_default_str();
  app.add_option("--prefill-warmup", opt.prefill_warmup)->capture_default_str();
  app.add_option("--prefill-repeats", opt.prefill_repeats, "timed prefills per case")
      ->capture_default_str();
  app.add_option("--copy-gib", opt.copy_gib, "device-to-device copy size, GiB (>= 2)")
      ->capture_default_str();
  app.add_option("--gemm-n", opt.gemm_n, "n of the n^3 bf16 GEMM")->capture_default_str();
  app.add_option("--ceiling-repeats", opt.ceiling_repeats)->capture_default_str();
  app.add_option("--max-seconds", opt.max_seconds,
                 "skip the cases left after this many seconds of case runs (0: no limit)")
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "seed of the random inputs")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (opt.decode_steps < 1 || opt.prefill_repeats < 1 || opt.ceiling_repeats < 1 ||
      opt.decode_warmup < 0 || opt.prefill_warmup < 0 || opt.ceiling_warmup < 0 ||
      opt.copy_gib <= 0 || opt.gemm_n < 256 || opt.block_size < 1) {
    std::fprintf(stderr,
                 "engine_bench: repeats >= 1, warm-ups >= 0, --copy-gib > 0, --gemm-n >= 256, "
                 "--block-size >= 1\n");
    return 2;
  }
  return Run(opt);
}
