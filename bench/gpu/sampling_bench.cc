// sampling_bench: the cuda backend's token sampler (LaunchSample, sampling_kernel.cuh) against
// the peer, Hugging Face transformers' sampling on torch (bench/gpu/peer_torch_sampling.py,
// run on the same GPU just before; its JSON comes in with --peer-json).
//
// Cases, each for batch sizes 1 and 64 over float32 logits of a 128256-id vocabulary (normal,
// standard deviation 2): greedy; temperature 1 (every token kept); temperature 0.7 with top-p
// 0.9. One launch is timed alone between CUDA events, median of --repeats, as the peer times
// one call. Prints one table (pdpool µs, peer µs, peer / pdpool) and, with --json, writes it.
// A report, not a test: no assertions on time. Without a GPU it says so and exits 0.
// Usage: sampling_bench [--peer-json PATH] [--json PATH] [--repeats N] [--vocab V]
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/kernels.h"
#include "bench/gpu/engine_cases.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent::cuda {
namespace {

struct SamplingCase {
  const char* name;  // as peer_torch_sampling.py's CASES
  float temperature;
  float top_p;
};
constexpr SamplingCase kCases[] = {
    {"greedy", 0.0f, 1.0f}, {"temperature 1", 1.0f, 1.0f}, {"top-p 0.9, T 0.7", 0.7f, 0.9f}};
constexpr int kBatchSizes[] = {1, 64};

// Device buffers of one batch size: logits, the sampler's weight scratch, params, tokens.
struct Buffers {
  float* logits = nullptr;
  float* weights = nullptr;
  SampleRowParams* params = nullptr;
  int32_t* tokens = nullptr;
  ~Buffers() {
    cudaFree(logits);
    cudaFree(weights);
    cudaFree(params);
    cudaFree(tokens);
  }
};

// Median microseconds of one LaunchSample of `rows` rows, each timed alone.
StatusOr<double> TimeSample(const Buffers& b, int rows, int vocab, int repeats) {
  cudaEvent_t start = nullptr, stop = nullptr;
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<double> us;
  for (int i = -3; i < repeats; ++i) {  // three warm-up launches
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, nullptr));
    if (Status s = LaunchSample(b.logits, b.weights, rows, vocab, b.params, b.tokens, nullptr);
        !s.ok()) {
      return s;
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, nullptr));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
    float ms = 0;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 0) us.push_back(1e3 * ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// The peer's microseconds by (case, rows), from peer_torch_sampling.py's JSON.
StatusOr<std::map<std::pair<std::string, int>, double>> LoadPeer(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("peer JSON " + path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  std::map<std::pair<std::string, int>, double> peer;
  try {
    const Json doc = Json::parse(text.str());
    for (const Json& r : doc.at("rows")) {
      peer[{r.at("case").get<std::string>(), r.at("rows").get<int>()}] = r.at("us").get<double>();
    }
  } catch (const Json::exception& e) {
    return Status::InvalidArgument("peer JSON " + path + ": " + e.what());
  }
  return peer;
}

Status Run(int vocab, int repeats, const std::string& peer_json, const std::string& json_path) {
  std::map<std::pair<std::string, int>, double> peer;
  if (!peer_json.empty()) {
    auto loaded = LoadPeer(peer_json);
    if (!loaded.ok()) return loaded.status();
    peer = *std::move(loaded);
  }
  cudaDeviceProp prop{};
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  std::printf("sampling_bench on %s: vocabulary %d, median of %d launches each\n", prop.name,
              vocab, repeats);
  std::printf("%-18s %5s %11s %11s %13s\n", "case", "rows", "pdpool us", "peer us",
              "peer/pdpool");
  Json rows_json = Json::array();
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int rows : kBatchSizes) {
    const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(vocab);
    std::vector<float> logits(n);
    for (float& x : logits) x = normal(rng);
    Buffers b;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.logits, n * sizeof(float)));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.weights, n * sizeof(float)));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.params, rows * sizeof(SampleRowParams)));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.tokens, rows * sizeof(int32_t)));
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(b.logits, logits.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    for (const SamplingCase& c : kCases) {
      std::vector<SampleRowParams> params(static_cast<size_t>(rows));
      for (int r = 0; r < rows; ++r) params[r] = SampleRowParams{c.temperature, c.top_p, 42, r, 0};
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(b.params, params.data(),
                                                params.size() * sizeof(SampleRowParams),
                                                cudaMemcpyHostToDevice));
      auto us = TimeSample(b, rows, vocab, repeats);
      if (!us.ok()) return us.status();
      const auto p = peer.find({c.name, rows});
      const double peer_us = p == peer.end() ? 0 : p->second;
      char peer_text[32] = "-", ratio_text[32] = "-";
      if (peer_us > 0) {
        std::snprintf(peer_text, sizeof peer_text, "%.1f", peer_us);
        std::snprintf(ratio_text, sizeof ratio_text, "%.2fx", peer_us / *us);
      }
      std::printf("%-18s %5d %11.1f %11s %13s\n", c.name, rows, *us, peer_text, ratio_text);
      Json row = {{"case", c.name}, {"rows", rows}, {"us", *us}};
      if (peer_us > 0) {
        row["peer_us"] = peer_us;
        row["peer_over_pdpool"] = peer_us / *us;
      }
      rows_json.push_back(std::move(row));
    }
  }
  if (json_path.empty()) return Status::Ok();
  const Json report = {{"tool", "sampling_bench"},
                       {"device_name", prop.name},
                       {"vocab", vocab},
                       {"repeats", repeats},
                       {"rows", rows_json}};
  return bench::engine::WriteFileAtomically(json_path, report.dump(1) + "\n");
}

}  // namespace
}  // namespace pdpool::agent::cuda

int main(int argc, char** argv) {
  CLI::App app{"the cuda backend's token sampler against transformers' sampling on torch"};
  int vocab = 128256, repeats = 50;
  std::string peer_json, json_path;
  app.add_option("--vocab", vocab, "vocabulary size (default 128256, Llama 3)")
      ->check(CLI::Range(1, 1 << 22));
  app.add_option("--repeats", repeats, "launches timed per case (default 50)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--peer-json", peer_json, "bench/gpu/peer_torch_sampling.py's --json output");
  app.add_option("--json", json_path, "also write the table as JSON here");
  CLI11_PARSE(app, argc, argv);
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    std::printf("sampling_bench: no CUDA GPU here (cudaGetDeviceCount: %s); nothing measured.\n",
                e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    return 0;
  }
  if (pdpool::Status s = pdpool::agent::cuda::Run(vocab, repeats, peer_json, json_path); !s.ok()) {
    std::fprintf(stderr, "sampling_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
