// Tests for the sim engine backend (agent/engine/sim/sim_backend): KV cache sizing from the
// modeled memory (and the error when the weights do not fit), deterministic tokens that do not
// depend on the batch or the instance, modeled step and transfer times, validation of bad
// batches, and the empty KV payloads.
#include "agent/engine/sim/sim_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "agent/model/model_config.h"

namespace pdpool::agent {
namespace {

ModelConfig Preset(const std::string& name) {
  auto m = ModelConfigFromPreset(name);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : ModelConfig{};
}

std::unique_ptr<Backend> MakeBackend(SimBackendOptions options) {
  auto backend = NewSimBackend(options);
  EXPECT_TRUE(backend.ok()) << backend.status().ToString();
  return backend.ok() ? std::move(backend).value() : nullptr;
}

SimBackendOptions Options(const std::string& preset, const std::string& gpu = "H200", int tp = 1) {
  SimBackendOptions o;
  o.model = Preset(preset);
  o.gpu = gpu;
  o.tensor_parallel = tp;
  return o;
}

// A sequence of `tokens` starting at `start`, with blocks 0.. covering it.
SequenceStep Seq(uint64_t id, std::vector<int32_t> tokens, int32_t start = 0, int block_size = 16,
                 int32_t first_block = 0) {
  SequenceStep s;
  s.seq_id = id;
  const int64_t end = start + static_cast<int64_t>(tokens.size());
  s.tokens = std::move(tokens);
  s.start_position = start;
  for (int64_t b = 0; b * block_size < end; ++b) s.block_table.push_back(first_block + b);
  return s;
}

// A non-sim backend, to check SimPerfModel's answer for one.
class OtherBackend final : public Backend {
 public:
  std::string_view name() const override { return "other"; }
  const ModelConfig& model() const override { return model_; }
  const KvLayout& kv_layout() const override { return layout_; }
  StatusOr<StepResult> Step(const StepBatch&) override { return StepResult{}; }
  Status ExportKvBlock(int32_t, int32_t, std::string*) override { return Status::Ok(); }
  Status ImportKvBlock(int32_t, int32_t, std::string_view) override { return Status::Ok(); }

 private:
  ModelConfig model_;
  KvLayout layout_;
};

TEST(SimBackend, SizesKvCacheFromModeledMemory) {
  auto backend = MakeBackend(Options("llama-3.1-8b"));
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->name(), "sim");
  EXPECT_EQ(backend->model().name, "llama-3.1-8b");
  const PerfModel* perf = SimPerfModel(*backend);
  ASSERT_NE(perf, nullptr);
  const KvLayout& layout = backend->kv_layout();
  EXPECT_EQ(layout.bytes_per_element, 2);
  EXPECT_EQ(layout.block_size, 16);
  EXPECT_EQ(layout.num_blocks, perf->KvCapacityTokens(0.9) / 16);
  EXPECT_GT(layout.num_blocks, 40'000);
  EXPECT_EQ(layout.BytesPerToken(), 131072);
  OtherBackend other;
  EXPECT_EQ(SimPerfModel(other), nullptr);
}

TEST(SimBackend, MaxBlocksCapsAndNumBlocksOverrides) {
  SimBackendOptions o = Options("llama-3.1-8b");
  o.max_blocks = 1000;
  auto capped = MakeBackend(o);
  ASSERT_NE(capped, nullptr);
  EXPECT_EQ(capped->kv_layout().num_blocks, 1000);
  o.num_blocks = 64;
  auto fixed = MakeBackend(o);
  ASSERT_NE(fixed, nullptr);
  EXPECT_EQ(fixed->kv_layout().num_blocks, 64);
  o.num_blocks = 10'000'000;  // more than 141 GB holds
  auto too_many = NewSimBackend(o);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("num_blocks"), std::string::npos);
}

TEST(SimBackend, SeventyBOnFourH200sHasRoomForKv) {
  auto backend = MakeBackend(Options("llama-3.1-70b", "H200", 4));
  ASSERT_NE(backend, nullptr);
  EXPECT_GT(backend->kv_layout().num_blocks, 50'000);
}

TEST(SimBackend, WeightsThatDoNotFitAreAnErrorNamingModelGpuAndMemory) {
  auto backend = NewSimBackend(Options("llama-3.1-405b", "H100", 1));
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument);
  const std::string& msg = backend.status().message();
  for (const char* want : {"llama-3.1-405b", "H100", "80.0 GB", "811.", "weights"}) {
    EXPECT_NE(msg.find(want), std::string::npos) << "want " << want << " in: " << msg;
  }
}

TEST(SimBackend, RejectsBadOptions) {
  SimBackendOptions o = Options("llama-3.1-8b");
  o.gpu = "A100";
  auto unknown = NewSimBackend(o);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("H200"), std::string::npos);
  o = Options("llama-3.1-8b", "H200", 3);
  EXPECT_FALSE(NewSimBackend(o).ok());
  o = Options("llama-3.1-8b");
  o.block_size = 0;
  EXPECT_FALSE(NewSimBackend(o).ok());
  o = Options("llama-3.1-8b");
  o.gpu_memory_utilization = 1.5;
  EXPECT_FALSE(NewSimBackend(o).ok());
  o = Options("llama-3.1-8b");
  o.calibration_file = "/nonexistent/calibration.json";
  auto no_file = NewSimBackend(o);
  ASSERT_FALSE(no_file.ok());
  EXPECT_NE(no_file.status().message().find("/nonexistent/calibration.json"), std::string::npos);
  o = Options("llama-3.1-8b");
  o.model.vocab_size = 0;
  EXPECT_FALSE(NewSimBackend(o).ok());
}

TEST(SimBackend, TokensAreDeterministicAcrossInstancesAndBatches) {
  auto a = MakeBackend(Options("llama-3.1-8b"));
  auto b = MakeBackend(Options("llama-3.1-8b", "GB200", 2));  // another worker, other hardware
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);

  // Prefill worker: the prompt alone.
  SequenceStep prompt = Seq(7, {72, 101, 108, 108, 111});
  prompt.sampling.seed = 42;
  StepBatch alone;
  alone.sequences = {prompt};
  auto ra = a->Step(alone);
  ASSERT_TRUE(ra.ok()) << ra.status().ToString();

  // Another worker: the same request (other seq id, other blocks) amid other sequences.
  SequenceStep same = Seq(99, {72, 101, 108, 108, 111}, 0, 16, /*first_block=*/30);
  same.sampling.seed = 42;
  StepBatch mixed;
  mixed.sequences = {Seq(1, {1, 2, 3}, 0, 16, 10), same, Seq(2, {5}, 40, 16, 20)};
  auto rb = b->Step(mixed);
  ASSERT_TRUE(rb.ok()) << rb.status().ToString();
  ASSERT_EQ(rb->next_tokens.size(), 3u);
  EXPECT_EQ(ra->next_tokens[0], rb->next_tokens[1]);

  // Printable ASCII, and they vary with the seed and the sample index.
  std::set<int32_t> seen;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    for (int32_t index = 0; index < 4; ++index) {
      SequenceStep s = Seq(1, {65});
      s.sampling.seed = seed;
      s.sample_index = index;
      StepBatch batch;
      batch.sequences = {s};
      auto r = a->Step(batch);
      ASSERT_TRUE(r.ok());
      EXPECT_GE(r->next_tokens[0], 32);
      EXPECT_LE(r->next_tokens[0], 126);
      seen.insert(r->next_tokens[0]);
    }
  }
  EXPECT_GT(seen.size(), 40u);
}

TEST(SimBackend, NonSampledSequencesAndLogits) {
  auto backend = MakeBackend(Options("test-tiny"));
  ASSERT_NE(backend, nullptr);
  SequenceStep chunk = Seq(1, {10, 11, 12});
  chunk.sample = false;
  StepBatch batch;
  batch.sequences = {chunk, Seq(2, {13})};
  batch.want_logits = true;
  auto r = backend->Step(batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->next_tokens[0], -1);
  ASSERT_EQ(r->logits.size(), 2u);
  EXPECT_TRUE(r->logits[0].empty());
  const std::vector<float>& logits = r->logits[1];
  ASSERT_EQ(logits.size(), static_cast<size_t>(backend->model().vocab_size));
  const auto argmax = std::max_element(logits.begin(), logits.end()) - logits.begin();
  EXPECT_EQ(argmax, r->next_tokens[1]);
  EXPECT_EQ(std::count(logits.begin(), logits.end(), 0.0f), static_cast<long>(logits.size()) - 1);
}

TEST(SimBackend, ModeledTimeIsThePerfModelsAndGrowsWithBatch) {
  auto backend = MakeBackend(Options("llama-3.1-8b"));
  ASSERT_NE(backend, nullptr);
  const PerfModel* perf = SimPerfModel(*backend);
  ASSERT_NE(perf, nullptr);
  Duration last{0};
  for (int batch_size : {1, 8, 64, 256}) {
    StepBatch batch;
    std::vector<SeqWork> work;
    for (int i = 0; i < batch_size; ++i) {
      batch.sequences.push_back(Seq(i, {65}, 1024, 16, i * 70));
      work.push_back({1, 1024, true});
    }
    auto r = backend->Step(batch);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_GT(r->modeled_time, Duration{0});
    EXPECT_GT(r->modeled_time, last) << "batch " << batch_size;
    EXPECT_EQ(r->modeled_time, perf->StepTime(work));
    last = r->modeled_time;
  }
  // A prefill takes longer than one decode step.
  StepBatch prefill;
  prefill.sequences = {Seq(1, std::vector<int32_t>(4096, 65))};
  auto r = backend->Step(prefill);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->modeled_time, perf->DecodeStepTime(1, 4096));
}

TEST(SimBackend, RejectsInvalidBatches) {
  auto backend = MakeBackend(Options("test-tiny"));
  ASSERT_NE(backend, nullptr);
  const int vocab = backend->model().vocab_size;
  const int num_blocks = backend->kv_layout().num_blocks;
  struct Case {
    const char* what;
    StepBatch batch;
    const char* field;
  };
  std::vector<Case> cases;
  cases.push_back({"empty batch", StepBatch{}, "no sequences"});
  {
    StepBatch b;
    b.sequences = {Seq(1, {vocab})};
    cases.push_back({"token past vocab", b, "tokens[0]"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(1, {5, -1})};
    cases.push_back({"negative token", b, "tokens[1]"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(1, {})};
    cases.push_back({"no tokens", b, "tokens"});
  }
  {
    StepBatch b;
    SequenceStep s = Seq(1, {5}, 20);
    s.block_table.pop_back();  // covers 16 positions, needs 21
    b.sequences = {s};
    cases.push_back({"short block table", b, "block_table"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(1, {5}, 0, 16, num_blocks)};
    cases.push_back({"block out of range", b, "block_table[0]"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(1, {5}, 0, 16, -1)};
    cases.push_back({"negative block", b, "block_table[0]"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(3, {5}), Seq(3, {6}, 0, 16, 1)};
    cases.push_back({"duplicate seq id", b, "seq_id"});
  }
  {
    StepBatch b;
    b.sequences = {Seq(1, {5}, -1)};
    cases.push_back({"negative position", b, "start_position"});
  }
  {
    StepBatch b;
    const int32_t max_pos = backend->model().max_position_embeddings;
    SequenceStep s = Seq(1, {5}, max_pos);
    b.sequences = {s};
    cases.push_back({"position past max", b, "max_position_embeddings"});
  }
  {
    StepBatch b;
    SequenceStep s = Seq(1, {5});
    s.sampling.top_p = 0;
    b.sequences = {s};
    cases.push_back({"top_p 0", b, "top_p"});
  }
  for (const Case& c : cases) {
    auto r = backend->Step(c.batch);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(r.status().message().find(c.field), std::string::npos)
        << c.what << ": " << r.status().message();
  }
  // The error names which sequence.
  StepBatch b;
  b.sequences = {Seq(1, {5}), Seq(2, {vocab + 3}, 0, 16, 1)};
  auto r = backend->Step(b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("sequences[1]"), std::string::npos);
}

TEST(SimBackend, KvBlocksCarryNoDataButModelTheTransfer) {
  auto backend = MakeBackend(Options("llama-3.1-8b"));
  ASSERT_NE(backend, nullptr);
  std::string payload = "stale";
  ASSERT_TRUE(backend->ExportKvBlock(3, 16, &payload).ok());
  EXPECT_TRUE(payload.empty());
  EXPECT_TRUE(backend->ImportKvBlock(3, 16, "").ok());
  Status bad = backend->ImportKvBlock(3, 16, "data");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("empty"), std::string::npos);
  EXPECT_FALSE(backend->ExportKvBlock(-1, 16, &payload).ok());
  EXPECT_FALSE(backend->ExportKvBlock(backend->kv_layout().num_blocks, 16, &payload).ok());
  EXPECT_FALSE(backend->ImportKvBlock(3, 17, "").ok());
  EXPECT_FALSE(backend->ImportKvBlock(3, 0, "").ok());

  EXPECT_EQ(backend->ModeledKvBytes(16), 16 * 131072);
  const PerfModel* perf = SimPerfModel(*backend);
  ASSERT_NE(perf, nullptr);
  EXPECT_EQ(backend->ModeledKvTransferTime(int64_t{1} << 30),
            perf->KvTransferTime(int64_t{1} << 30));
  EXPECT_GT(backend->ModeledKvTransferTime(int64_t{1} << 30), Duration{0});

  auto tp4 = MakeBackend(Options("llama-3.1-70b", "H200", 4));
  ASSERT_NE(tp4, nullptr);
  EXPECT_EQ(tp4->ModeledKvBytes(16), 16 * 327680);
  // 405B with tp 16 > 8 KV heads: each rank holds (and sends) one replicated KV head.
  auto tp16 = MakeBackend(Options("llama-3.1-405b", "GB200", 16));
  ASSERT_NE(tp16, nullptr);
  EXPECT_EQ(tp16->ModeledKvBytes(1), 516096 * 2);
}

}  // namespace
}  // namespace pdpool::agent
