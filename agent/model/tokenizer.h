// ByteTokenizer: the engine's tokenizer. Every byte of UTF-8 text is one token (ids 0..255);
// 256 is BOS and 257 is EOS. Real checkpoints' vocabularies are larger, but serving byte tokens
// through them exercises every code path with no tokenizer files. Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pdpool::agent {

class ByteTokenizer {
 public:
  static constexpr int32_t kBosId = 256;
  static constexpr int32_t kEosId = 257;
  static constexpr int32_t kVocabSize = 258;  // the smallest vocab_size a model may have

  // One token per byte, no BOS added (the caller decides).
  std::vector<int32_t> Encode(std::string_view text) const;
  // Bytes of ids 0..255 in order; ids outside (BOS, EOS, the rest of a large vocab, negatives)
  // produce nothing. The result may end in an incomplete UTF-8 sequence when a stream is cut.
  std::string Decode(std::span<const int32_t> ids) const;

  int32_t bos_id() const { return kBosId; }
  int32_t eos_id() const { return kEosId; }
};

}  // namespace pdpool::agent
