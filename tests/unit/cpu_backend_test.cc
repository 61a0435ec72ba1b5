// Tests for the CPU backend: logits against a deliberately plain reference Llama written here
// (contiguous KV, one token at a time, double accumulation); bit-identical results alone vs
// batched, paged with shuffled blocks, chunked prompts and both block sizes; KV export/import
// between instances; and errors for invalid batches that leave the cache untouched.
#include "agent/engine/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "agent/engine/sampling.h"
#include "agent/model/model_config.h"
#include "agent/model/tokenizer.h"
#include "agent/model/weights.h"

namespace pdpool::agent {
namespace {

// ---------------------------------------------------------------------------------------------
// Reference: the textbook forward pass, nothing shared with the backend.
class ReferenceLlama {
 public:
  ReferenceLlama(const ModelConfig& c, const ModelWeights& w) : c_(c), w_(w) {
    k_.resize(c.num_layers);
    v_.resize(c.num_layers);
    const int half = c.head_dim / 2;
    for (int i = 0; i < half; ++i) {
      double freq = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
      if (c.rope_scaling.llama3) {
        const RopeScaling& r = c.rope_scaling;
        double wavelen = 2 * std::numbers::pi / freq;
        double low_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
        double high_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
        if (wavelen > low_wavelen) {
          freq = freq / r.factor;
        } else if (wavelen >= high_wavelen) {
          double smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                          (r.high_freq_factor - r.low_freq_factor);
          freq = (1 - smooth) * freq / r.factor + smooth * freq;
        }
      }
      inv_freq_.push_back(freq);
    }
  }

  // Runs one token at the next position; returns the logits.
  std::vector<double> Forward(int token) {
    const int H = c_.hidden_size, hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
    const int pos = static_cast<int>(k_[0].size());
    std::vector<double> x(H);
    for (int i = 0; i < H; ++i) x[i] = w_.embed.data[static_cast<size_t>(token) * H + i];
    for (int l = 0; l < c_.num_layers; ++l) {
      const LayerWeights& L = w_.layers[l];
      std::vector<double> xn = Norm(x, L.attn_norm);
      std::vector<double> q = Linear(L.wq, xn), k = Linear(L.wk, xn), v = Linear(L.wv, xn);
      for (int h = 0; h < nh; ++h) Rope(&q[h * hd], pos);
      for (int h = 0; h < nkv; ++h) Rope(&k[h * hd], pos);
      k_[l].push_back(k);
      v_[l].push_back(v);
      std::vector<double> att(nh * hd, 0.0);
      for (int h = 0; h < nh; ++h) {
        int kvh = h / (nh / nkv);
        std::vector<double> s(pos + 1);
        double mx = -1e300;
        for (int t = 0; t <= pos; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * k_[l][t][kvh * hd + i];
          s[t] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (int t = 0; t <= pos; ++t) sum += (s[t] = std::exp(s[t] - mx));
        for (int t = 0; t <= pos; ++t) {
          for (int i = 0; i < hd; ++i) att[h * hd + i] += s[t] / sum * v_[l][t][kvh * hd + i];
        }
      }
      std::vector<double> o = Linear(L.wo, att);
      for (int i = 0; i < H; ++i) x[i] += o[i];
      xn = Norm(x, L.mlp_norm);
      std::vector<double> g = Linear(L.w_gate, xn), u = Linear(L.w_up, xn);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      std::vector<double> d = Linear(L.w_down, g);
      for (int i = 0; i < H; ++i) x[i] += d[i];
    }
    std::vector<double> xn = Norm(x, w_.final_norm);
    return Linear(c_.tie_word_embeddings ? w_.embed : w_.lm_head, xn);
  }

 private:
  std::vector<double> Norm(const std::vector<double>& x, const Tensor& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    double inv = 1.0 / std::sqrt(ss / x.size() + c_.rms_norm_eps);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * w.data[i];
    return out;
  }
  static std::vector<double> Linear(const Tensor& w, const std::vector<double>& x) {
    const size_t rows = w.shape[0], cols = w.shape[1];
    std::vector<double> out(rows, 0.0);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) out[r] += w.data[r * cols + c] * x[c];
    }
    return out;
  }
  void Rope(double* v, int pos) const {
    const int half = c_.head_dim / 2;
    for (int i = 0; i < half; ++i) {
      double a = v[i], b = v[i + half], ang = pos * inv_freq_[i];
      v[i] = a * std::cos(ang) - b * std::sin(ang);
      v[i + half] = b * std::cos(ang) + a * std::sin(ang);
    }
  }

  const ModelConfig& c_;
  const ModelWeights& w_;
  std::vector<double> inv_freq_;
  std::vector<std::vector<std::vector<double>>> k_, v_;  // [layer][pos][kv_heads * head_dim]
};

double RelError(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return diff / scale;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

ModelConfig Tiny() { return ModelConfigFromPreset("test-tiny").value(); }

std::unique_ptr<Backend> MakeBackend(int block_size, int num_blocks, uint64_t seed = 7) {
  ModelConfig c = Tiny();
  StatusOr<std::unique_ptr<Backend>> b =
      NewCpuBackend(c, DummyWeights(c, seed), block_size, num_blocks);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return std::move(b).value();
}

std::vector<int32_t> Iota(int from, int n) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = from + i;
  return v;
}

std::vector<int32_t> Prompt(const std::string& text) {
  std::vector<int32_t> t = {ByteTokenizer::kBosId};
  std::vector<int32_t> b = ByteTokenizer().Encode(text);
  t.insert(t.end(), b.begin(), b.end());
  return t;
}

SequenceStep MakeStep(uint64_t id, std::vector<int32_t> tokens, int start,
                      std::vector<int32_t> table, bool sample = true, int sample_index = 0) {
  SequenceStep s;
  s.seq_id = id;
  s.tokens = std::move(tokens);
  s.start_position = start;
  s.block_table = std::move(table);
  s.sample = sample;
  s.sampling.temperature = 0;
  s.sample_index = sample_index;
  return s;
}

// ---------------------------------------------------------------------------------------------

TEST(CpuBackendTest, MatchesReferenceOnPromptAndDecode) {
  ModelConfig c = Tiny();
  ModelWeights w = DummyWeights(c, 11);
  ReferenceLlama ref(c, w);
  auto backend = NewCpuBackend(c, w, 16, 8).value();

  std::vector<int32_t> prompt = Prompt("The quick brown fox jumps over the lazy d");
  ASSERT_GE(prompt.size(), 40u);
  std::vector<double> ref_logits;
  for (int32_t t : prompt) ref_logits = ref.Forward(t);

  StepBatch batch;
  batch.want_logits = true;
  batch.sequences.push_back(MakeStep(1, prompt, 0, Iota(0, 8)));
  StatusOr<StepResult> r = backend->Step(batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->logits.size(), 1u);
  ASSERT_EQ(r->logits[0].size(), static_cast<size_t>(c.vocab_size));
  EXPECT_LT(RelError(r->logits[0], ref_logits), 1e-5);

  int pos = static_cast<int>(prompt.size());
  int32_t tok = r->next_tokens[0];
  for (int step = 0; step < 8; ++step) {
    // Greedy agrees with the reference's argmax.
    EXPECT_EQ(tok, std::max_element(ref_logits.begin(), ref_logits.end()) - ref_logits.begin());
    ref_logits = ref.Forward(tok);
    batch.sequences[0] = MakeStep(1, {tok}, pos, Iota(0, 8), true, step + 1);
    r = backend->Step(batch);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_LT(RelError(r->logits[0], ref_logits), 1e-5) << "decode step " << step;
    tok = r->next_tokens[0];
    ++pos;
  }
}

TEST(CpuBackendTest, MatchesReferenceUntiedWithoutRopeScaling) {
  ModelConfig c = Tiny();
  c.tie_word_embeddings = false;
  c.rope_scaling.llama3 = false;
  c.num_kv_heads = 1;  // GQA group of 4
  ModelWeights w = DummyWeights(c, 3);
  ReferenceLlama ref(c, w);
  auto backend = NewCpuBackend(c, w, 4, 16).value();
  std::vector<int32_t> prompt = Prompt("untied heads and a single kv head");
  std::vector<double> ref_logits;
  for (int32_t t : prompt) ref_logits = ref.Forward(t);
  StepBatch batch;
  batch.want_logits = true;
  batch.sequences.push_back(MakeStep(1, prompt, 0, Iota(0, 16)));
  StatusOr<StepResult> r = backend->Step(batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(RelError(r->logits[0], ref_logits), 1e-5);
}

// One sequence's outputs: each sampled token and its logits.
struct Trace {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int chunk = 0;  // prompt chunk size when batched
};

std::vector<Request> ThreeRequests() {
  std::vector<Request> reqs(3);
  reqs[0].prompt = Prompt("short");
  reqs[0].sampling.temperature = 0;
  reqs[0].chunk = 3;
  reqs[1].prompt = Prompt("a medium length prompt here");
  reqs[1].sampling = {0.9, 0.9, 1234};
  reqs[1].chunk = 5;
  reqs[2].prompt = Prompt("the longest prompt of the three, over forty bytes");
  reqs[2].sampling.temperature = 0;
  reqs[2].chunk = 16;
  return reqs;
}

constexpr int kDecodeSteps = 6;

Trace RunAlone(const Request& req) {
  auto b = MakeBackend(16, 8);
  Trace tr;
  StepBatch batch;
  batch.want_logits = true;
  SequenceStep s = MakeStep(1, req.prompt, 0, Iota(0, 8));
  s.sampling = req.sampling;
  int pos = 0;
  for (int i = 0; i <= kDecodeSteps; ++i) {
    s.sample_index = i;
    batch.sequences = {s};
    StatusOr<StepResult> r = b->Step(batch);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return tr;
    tr.tokens.push_back(r->next_tokens[0]);
    tr.logits.push_back(r->logits[0]);
    pos += static_cast<int>(s.tokens.size());
    s.tokens = {r->next_tokens[0]};
    s.start_position = pos;
  }
  return tr;
}

class CpuBackendPagedTest : public ::testing::TestWithParam<int> {};

TEST_P(CpuBackendPagedTest, BatchedChunkedShuffledMatchesAloneBitForBit) {
  const int bs = GetParam();
  std::vector<Request> reqs = ThreeRequests();
  std::vector<Trace> alone;
  for (const Request& r : reqs) alone.push_back(RunAlone(r));

  // Shuffled, interleaved block ids (a fixed permutation, no library RNG).
  const int num_blocks = 64;
  std::vector<int32_t> perm = Iota(0, num_blocks);
  for (int i = num_blocks - 1; i > 0; --i) {
    std::swap(perm[i], perm[static_cast<int>(SplitMix64(i) % (i + 1))]);
  }
  auto b = MakeBackend(bs, num_blocks);
  std::vector<std::vector<int32_t>> tables(3);
  size_t next = 0;
  for (int i = 0; i < 3; ++i) {
    const int need = (static_cast<int>(reqs[i].prompt.size()) + kDecodeSteps + bs) / bs;
    for (int k = 0; k < need; ++k) tables[i].push_back(perm[next++]);
  }
  ASSERT_LE(next, perm.size());

  std::vector<Trace> batched(3);
  std::vector<int> pos(3, 0);
  std::vector<int32_t> last(3, -1);
  for (int step = 0; step < 100; ++step) {
    StepBatch batch;
    batch.want_logits = true;
    std::vector<int> who;
    for (int k = 0; k < 3; ++k) {
      const int i = (k + step) % 3;  // rotate the order within the batch
      if (static_cast<int>(batched[i].tokens.size()) > kDecodeSteps) continue;
      const Request& req = reqs[i];
      const int plen = static_cast<int>(req.prompt.size());
      SequenceStep s;
      if (pos[i] < plen) {
        const int n = std::min(req.chunk, plen - pos[i]);
        s = MakeStep(
            i, std::vector<int32_t>(req.prompt.begin() + pos[i], req.prompt.begin() + pos[i] + n),
            pos[i], tables[i], pos[i] + n == plen, 0);
      } else {
        s = MakeStep(i, {last[i]}, pos[i], tables[i], true,
                     static_cast<int>(batched[i].tokens.size()));
      }
      s.sampling = req.sampling;
      batch.sequences.push_back(s);
      who.push_back(i);
    }
    if (batch.sequences.empty()) break;
    StatusOr<StepResult> r = b->Step(batch);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    for (size_t k = 0; k < who.size(); ++k) {
      const int i = who[k];
      pos[i] += static_cast<int>(batch.sequences[k].tokens.size());
      if (!batch.sequences[k].sample) {
        EXPECT_EQ(r->next_tokens[k], -1);
        EXPECT_TRUE(r->logits[k].empty());
        continue;
      }
      last[i] = r->next_tokens[k];
      batched[i].tokens.push_back(r->next_tokens[k]);
      batched[i].logits.push_back(r->logits[k]);
    }
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(batched[i].tokens, alone[i].tokens) << "request " << i;
    ASSERT_EQ(batched[i].logits.size(), alone[i].logits.size());
    for (size_t s = 0; s < alone[i].logits.size(); ++s) {
      EXPECT_TRUE(BitEqual(batched[i].logits[s], alone[i].logits[s]))
          << "request " << i << " sample " << s;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, CpuBackendPagedTest, ::testing::Values(4, 16));

TEST(CpuBackendTest, ExportImportThenDecodeMatchesOriginal) {
  const int bs = 4;
  auto a = MakeBackend(bs, 32);
  auto b = MakeBackend(bs, 32);
  std::vector<int32_t> prompt = Prompt("prefill here, decode over there");  // 32 tokens
  const int plen = static_cast<int>(prompt.size());
  const int blocks = (plen + kDecodeSteps + bs) / bs;
  std::vector<int32_t> table_a, table_b;
  for (int i = 0; i < blocks; ++i) {
    table_a.push_back(31 - 2 * i);
    table_b.push_back(3 + i);
  }
  // Prompt chunk sizes that leave the last block partly filled.
  prompt.push_back('!');
  const int n = plen + 1;
  ASSERT_NE(n % bs, 0);

  StepBatch batch;
  batch.want_logits = true;
  batch.sequences = {MakeStep(1, prompt, 0, table_a)};
  StatusOr<StepResult> first = a->Step(batch);
  ASSERT_TRUE(first.ok()) << first.status().ToString();

  for (int blk = 0; blk * bs < n; ++blk) {
    const int tokens = std::min(bs, n - blk * bs);
    std::string wire;
    ASSERT_TRUE(a->ExportKvBlock(table_a[blk], tokens, &wire).ok());
    EXPECT_EQ(static_cast<int64_t>(wire.size()), a->kv_layout().BytesPerToken() * tokens);
    Status s = b->ImportKvBlock(table_b[blk], tokens, wire);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  int32_t tok_a = first->next_tokens[0], tok_b = first->next_tokens[0];
  for (int i = 0; i < kDecodeSteps; ++i) {
    batch.sequences = {MakeStep(1, {tok_a}, n + i, table_a, true, i + 1)};
    StatusOr<StepResult> ra = a->Step(batch);
    batch.sequences = {MakeStep(1, {tok_b}, n + i, table_b, true, i + 1)};
    StatusOr<StepResult> rb = b->Step(batch);
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_TRUE(BitEqual(ra->logits[0], rb->logits[0])) << "decode step " << i;
    tok_a = ra->next_tokens[0];
    tok_b = rb->next_tokens[0];
    EXPECT_EQ(tok_a, tok_b);
  }
}

TEST(CpuBackendTest, KvBlockArgumentsChecked) {
  auto b = MakeBackend(4, 8);
  std::string wire;
  EXPECT_EQ(b->ExportKvBlock(8, 4, &wire).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->ExportKvBlock(-1, 4, &wire).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->ExportKvBlock(0, 5, &wire).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->ExportKvBlock(0, 0, &wire).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(b->ExportKvBlock(0, 3, &wire).ok());
  const std::string want = std::to_string(wire.size());
  Status s = b->ImportKvBlock(1, 3, wire.substr(1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(want), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::to_string(wire.size() - 1)), std::string::npos) << s.message();
  EXPECT_EQ(b->ImportKvBlock(1, 2, wire).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->ImportKvBlock(8, 3, wire).code(), StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, InvalidBatchesAreRejectedAndChangeNothing) {
  auto b = MakeBackend(4, 8);
  // Fill block 0 with a valid step, and remember its bytes.
  StepBatch good;
  good.sequences = {MakeStep(1, {256, 1, 2, 3}, 0, {0})};
  ASSERT_TRUE(b->Step(good).ok());
  std::string before;
  ASSERT_TRUE(b->ExportKvBlock(0, 4, &before).ok());

  struct Case {
    const char* what;
    SequenceStep bad;
    const char* needle;
  };
  std::vector<Case> cases = {
      {"table too short", MakeStep(2, {1, 2, 3, 4, 5}, 0, {0}), "block_table"},
      {"block id too large", MakeStep(2, {1, 2}, 0, {8}), "block_table[0]"},
      {"block id negative", MakeStep(2, {1, 2, 3, 4, 5}, 0, {0, -1}), "block_table[1]"},
      {"token too large", MakeStep(2, {1, 512}, 0, {0}), "512"},
      {"token negative", MakeStep(2, {-3}, 0, {0}), "-3"},
      {"position too large", MakeStep(2, {1, 2}, 4095, std::vector<int32_t>(1024, 0)),
       "max_position_embeddings"},
      {"no tokens", MakeStep(2, {}, 0, {0}), "no tokens"},
      {"negative start", MakeStep(2, {1}, -1, {0}), "start_position"},
  };
  for (Case& c : cases) {
    StepBatch batch;
    // A valid sequence first: it must not run either.
    batch.sequences = {MakeStep(1, {9, 9, 9, 9}, 0, {0}), c.bad};
    StatusOr<StepResult> r = b->Step(batch);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.what << ": " << r.status().message();
    EXPECT_NE(r.status().message().find("seq_id 2"), std::string::npos) << r.status().message();
  }
  std::string after;
  ASSERT_TRUE(b->ExportKvBlock(0, 4, &after).ok());
  EXPECT_EQ(before, after);
}

TEST(CpuBackendTest, RejectsBadConstruction) {
  ModelConfig c = Tiny();
  ModelWeights w = DummyWeights(c, 1);
  EXPECT_EQ(NewCpuBackend(c, w, 0, 8).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(NewCpuBackend(c, w, 16, 0).status().code(), StatusCode::kInvalidArgument);
  ModelWeights bad = w;
  bad.layers[1].wk.shape = {16, 64};
  bad.layers[1].wk.data.resize(16 * 64);
  StatusOr<std::unique_ptr<Backend>> r = NewCpuBackend(c, bad, 16, 8);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.layers.1.self_attn.k_proj.weight"), std::string::npos)
      << r.status().message();
  ModelConfig odd = c;
  odd.num_kv_heads = 3;
  EXPECT_EQ(NewCpuBackend(odd, w, 16, 8).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdpool::agent
