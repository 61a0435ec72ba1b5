// SimBackend: step validation, deterministic token choice and KV sizing for the sim backend.
#include "agent/engine/sim/sim_backend.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <unordered_set>
#include <utility>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"

namespace pdpool::agent {
namespace {

// SplitMix64 finalizer: a well-mixed hash of one 64-bit word (own copy: the sim backend does
// not depend on the sampler's).
uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int32_t SimToken(uint64_t seed, int32_t sample_index, int32_t last_token) {
  uint64_t h = Mix64(seed);
  h = Mix64(h ^ static_cast<uint32_t>(sample_index));
  h = Mix64(h ^ (uint64_t{static_cast<uint32_t>(last_token)} << 32));
  return static_cast<int32_t>(32 + h % 95);  // printable ASCII: 32..126
}

std::string Gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  return buf;
}

std::string Where(size_t i, const char* field) {
  return "sequences[" + std::to_string(i) + "]." + field;
}

}  // namespace

SimBackend::SimBackend(PerfModel perf_model, KvLayout layout)
    : perf_model_(std::move(perf_model)), layout_(layout) {}

StatusOr<StepResult> SimBackend::Step(const StepBatch& batch) {
  if (batch.sequences.empty()) return Status::InvalidArgument("step batch has no sequences");
  const ModelConfig& m = perf_model_.model();
  std::unordered_set<uint64_t> seq_ids;
  std::vector<SeqWork> work;
  work.reserve(batch.sequences.size());
  for (size_t i = 0; i < batch.sequences.size(); ++i) {
    const SequenceStep& s = batch.sequences[i];
    if (!seq_ids.insert(s.seq_id).second) {
      return Status::InvalidArgument(Where(i, "seq_id") + ": " + std::to_string(s.seq_id) +
                                     " appears twice in the batch");
    }
    if (s.tokens.empty()) return Status::InvalidArgument(Where(i, "tokens") + " is empty");
    for (size_t t = 0; t < s.tokens.size(); ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= m.vocab_size) {
        return Status::InvalidArgument(
            Where(i, "tokens") + "[" + std::to_string(t) + "] = " + std::to_string(s.tokens[t]) +
            " is outside the vocabulary [0, " + std::to_string(m.vocab_size) + ")");
      }
    }
    if (s.start_position < 0) {
      return Status::InvalidArgument(Where(i, "start_position") + " = " +
                                     std::to_string(s.start_position) + " is negative");
    }
    const int64_t end = int64_t{s.start_position} + static_cast<int64_t>(s.tokens.size());
    if (m.max_position_embeddings > 0 && end > m.max_position_embeddings) {
      return Status::InvalidArgument(Where(i, "tokens") + ": positions up to " +
                                     std::to_string(end) + " exceed max_position_embeddings " +
                                     std::to_string(m.max_position_embeddings));
    }
    const int64_t covered = static_cast<int64_t>(s.block_table.size()) * layout_.block_size;
    if (covered < end) {
      return Status::InvalidArgument(
          Where(i, "block_table") + ": " + std::to_string(s.block_table.size()) + " blocks of " +
          std::to_string(layout_.block_size) + " cover " + std::to_string(covered) +
          " positions, the step needs " + std::to_string(end));
    }
    for (size_t b = 0; b < s.block_table.size(); ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= layout_.num_blocks) {
        return Status::InvalidArgument(Where(i, "block_table") + "[" + std::to_string(b) + "] = " +
                                       std::to_string(s.block_table[b]) + " is outside [0, " +
                                       std::to_string(layout_.num_blocks) + ")");
      }
    }
    if (!(s.sampling.temperature >= 0)) {
      return Status::InvalidArgument(Where(i, "sampling.temperature") + " must be >= 0");
    }
    if (!(s.sampling.top_p > 0 && s.sampling.top_p <= 1)) {
      return Status::InvalidArgument(Where(i, "sampling.top_p") + " must be in (0, 1]");
    }
    if (s.sample_index < 0) {
      return Status::InvalidArgument(Where(i, "sample_index") + " is negative");
    }
    work.push_back(SeqWork{static_cast<int>(s.tokens.size()), s.start_position, s.sample});
  }

  StepResult result;
  result.next_tokens.reserve(batch.sequences.size());
  if (batch.want_logits) result.logits.resize(batch.sequences.size());
  for (size_t i = 0; i < batch.sequences.size(); ++i) {
    const SequenceStep& s = batch.sequences[i];
    if (!s.sample) {
      result.next_tokens.push_back(-1);
      continue;
    }
    const int32_t token = SimToken(s.sampling.seed, s.sample_index, s.tokens.back());
    result.next_tokens.push_back(token);
    if (batch.want_logits) {
      result.logits[i].assign(static_cast<size_t>(m.vocab_size), 0.0f);
      result.logits[i][static_cast<size_t>(token)] = kSampledLogit;
    }
  }
  result.modeled_time = perf_model_.StepTime(work);
  return result;
}

Status SimBackend::CheckBlock(int32_t block, int32_t tokens) const {
  if (block < 0 || block >= layout_.num_blocks) {
    return Status::InvalidArgument("KV block " + std::to_string(block) + " is outside [0, " +
                                   std::to_string(layout_.num_blocks) + ")");
  }
  if (tokens < 1 || tokens > layout_.block_size) {
    return Status::InvalidArgument("KV block tokens " + std::to_string(tokens) +
                                   " is outside [1, " + std::to_string(layout_.block_size) + "]");
  }
  return Status::Ok();
}

Status SimBackend::ExportKvBlock(int32_t block, int32_t tokens, std::string* out) {
  if (Status s = CheckBlock(block, tokens); !s.ok()) return s;
  out->clear();
  return Status::Ok();
}

Status SimBackend::ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) {
  if (Status s = CheckBlock(block, tokens); !s.ok()) return s;
  if (!data.empty()) {
    return Status::InvalidArgument(
        "sim backend: KV block payload must be empty (the sim moves "
        "no data), got " +
        std::to_string(data.size()) + " bytes; is the sender a real backend?");
  }
  return Status::Ok();
}

int64_t SimBackend::ModeledKvBytes(int32_t tokens) const {
  return int64_t{tokens} * perf_model_.KvBytesPerTokenPerGpu() * perf_model_.tensor_parallel();
}

Duration SimBackend::ModeledKvTransferTime(int64_t bytes) const {
  return perf_model_.KvTransferTime(bytes);
}

StatusOr<std::unique_ptr<Backend>> NewSimBackend(const SimBackendOptions& options) {
  if (Status s = options.model.Validate(); !s.ok()) {
    return Status::InvalidArgument("sim backend: model " + options.model.name + ": " + s.message());
  }
  if (options.block_size < 1) {
    return Status::InvalidArgument("sim backend: block_size must be >= 1, got " +
                                   std::to_string(options.block_size));
  }
  if (options.num_blocks < 0) {
    return Status::InvalidArgument("sim backend: num_blocks must be >= 0, got " +
                                   std::to_string(options.num_blocks));
  }
  if (options.max_blocks < 1) {
    return Status::InvalidArgument("sim backend: max_blocks must be >= 1, got " +
                                   std::to_string(options.max_blocks));
  }
  if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1)) {
    return Status::InvalidArgument("sim backend: gpu_memory_utilization must be in (0, 1], got " +
                                   std::to_string(options.gpu_memory_utilization));
  }
  auto gpu = LookupGpu(options.gpu);
  if (!gpu.ok()) return Status::InvalidArgument("sim backend: " + gpu.status().message());
  auto calibration = LoadCalibration(options.calibration_file);
  if (!calibration.ok()) return calibration.status();
  const GpuCalibration& cal = calibration->For(gpu->name);
  auto perf = PerfModel::Create(options.model, *gpu, cal, options.tensor_parallel);
  if (!perf.ok()) return Status::InvalidArgument("sim backend: " + perf.status().message());

  const int64_t capacity_tokens = perf->KvCapacityTokens(options.gpu_memory_utilization);
  const int64_t capacity_blocks = capacity_tokens / options.block_size;
  auto memory = [&] {
    char util[16];
    std::snprintf(util, sizeof util, "%.2f", options.gpu_memory_utilization);
    return "model " + options.model.name + " on " + std::to_string(options.tensor_parallel) + "x " +
           gpu->name + ": weights " + Gb(perf->WeightBytes()) + " (" +
           Gb(perf->WeightBytesPerGpu()) + " per GPU at tp " +
           std::to_string(options.tensor_parallel) + "), " + Gb(gpu->hbm_bytes) +
           " HBM per GPU x utilization " + util + " = " +
           Gb(gpu->hbm_bytes * options.gpu_memory_utilization) + ", activation reserve " +
           Gb(perf->ActivationReserveBytes()) + ", KV " +
           std::to_string(perf->KvBytesPerTokenPerGpu()) + " B per token per GPU";
  };
  if (capacity_blocks < 1) {
    return Status::InvalidArgument("sim backend: the weights leave no room for one KV block of " +
                                   std::to_string(options.block_size) + " tokens: " + memory() +
                                   "; use more GPUs (tensor_parallel) or a larger GPU");
  }
  if (options.num_blocks > capacity_blocks) {
    return Status::InvalidArgument("sim backend: num_blocks " + std::to_string(options.num_blocks) +
                                   " exceeds the modeled capacity of " +
                                   std::to_string(capacity_blocks) + " blocks: " + memory());
  }
  KvLayout layout;
  layout.block_size = options.block_size;
  layout.num_blocks =
      options.num_blocks > 0
          ? options.num_blocks
          : static_cast<int>(std::min<int64_t>(capacity_blocks, options.max_blocks));
  layout.num_layers = options.model.num_layers;
  layout.num_kv_heads = options.model.num_kv_heads;
  layout.head_dim = options.model.head_dim;
  layout.bytes_per_element = perf->bytes_per_element();
  return std::unique_ptr<Backend>(new SimBackend(std::move(perf).value(), layout));
}

const PerfModel* SimPerfModel(const Backend& backend) {
  const auto* sim = dynamic_cast<const SimBackend*>(&backend);
  return sim == nullptr ? nullptr : &sim->perf_model();
}

}  // namespace pdpool::agent
