// Step and KV block validation: see step_validation.h.
#include "agent/engine/step_validation.h"

#include <string>

namespace pdpool::agent {
namespace {

Status ValidateSequence(const ModelConfig& config, const KvLayout& layout, const SequenceStep& seq,
                        size_t index) {
  const std::string who =
      "sequence " + std::to_string(index) + " (seq_id " + std::to_string(seq.seq_id) + "): ";
  if (seq.tokens.empty()) return Status::InvalidArgument(who + "no tokens to run");
  if (seq.start_position < 0) {
    return Status::InvalidArgument(who + "start_position " + std::to_string(seq.start_position) +
                                   " is negative");
  }
  const int64_t end = int64_t{seq.start_position} + static_cast<int64_t>(seq.tokens.size());
  if (end > config.max_position_embeddings) {
    return Status::InvalidArgument(who + "position " + std::to_string(end - 1) +
                                   " is beyond max_position_embeddings (" +
                                   std::to_string(config.max_position_embeddings) + ")");
  }
  const int64_t need = (end + layout.block_size - 1) / layout.block_size;
  if (static_cast<int64_t>(seq.block_table.size()) < need) {
    return Status::InvalidArgument(
        who + "block_table has " + std::to_string(seq.block_table.size()) +
        " blocks, positions [0, " + std::to_string(end) + ") need " + std::to_string(need) +
        " (block_size " + std::to_string(layout.block_size) + ")");
  }
  for (size_t b = 0; b < static_cast<size_t>(need); ++b) {
    const int32_t id = seq.block_table[b];
    if (id < 0 || id >= layout.num_blocks) {
      return Status::InvalidArgument(who + "block_table[" + std::to_string(b) +
                                     "] = " + std::to_string(id) + " out of range [0, " +
                                     std::to_string(layout.num_blocks) + ")");
    }
  }
  for (size_t t = 0; t < seq.tokens.size(); ++t) {
    if (seq.tokens[t] < 0 || seq.tokens[t] >= config.vocab_size) {
      return Status::InvalidArgument(who + "token " + std::to_string(seq.tokens[t]) + " at index " +
                                     std::to_string(t) + " out of range [0, vocab_size " +
                                     std::to_string(config.vocab_size) + ")");
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateStepBatch(const char* backend, const ModelConfig& config, const KvLayout& layout,
                         const StepBatch& batch) {
  for (size_t i = 0; i < batch.sequences.size(); ++i) {
    if (Status s = ValidateSequence(config, layout, batch.sequences[i], i); !s.ok()) {
      return Status(s.code(), std::string(backend) + ": " + s.message());
    }
  }
  return Status::Ok();
}

Status ValidateKvBlockArgs(const char* backend, const KvLayout& layout, int32_t block,
                           int32_t tokens) {
  if (block < 0 || block >= layout.num_blocks) {
    return Status::InvalidArgument(std::string(backend) + ": block " + std::to_string(block) +
                                   " out of range [0, " + std::to_string(layout.num_blocks) + ")");
  }
  if (tokens < 1 || tokens > layout.block_size) {
    return Status::InvalidArgument(std::string(backend) + ": tokens " + std::to_string(tokens) +
                                   " out of range [1, " + std::to_string(layout.block_size) + "]");
  }
  return Status::Ok();
}

}  // namespace pdpool::agent
