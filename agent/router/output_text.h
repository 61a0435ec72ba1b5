// OutputText: turns a request's generated token ids into the text sent to the client.
// Byte-level tokens can split a UTF-8 character, so a character's first bytes are held back
// until it is complete; stop strings end the output (the match and everything after it are
// dropped), and text that could be the start of a stop string is held back until it is known
// not to be. The streamed deltas therefore always add up to the non-streaming text.
// Thread-compatible (one request's thread uses it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/model/tokenizer.h"

namespace pdpool::agent {

class OutputText {
 public:
  OutputText(const ByteTokenizer* tokenizer, std::vector<std::string> stop, bool ignore_eos);

  // Adds one generated token and returns the text that became safe to send (often empty).
  // After stopped() further tokens are ignored.
  std::string Add(int32_t token);
  // End of generation: returns whatever is still held back (an incomplete character is sent
  // as is; JSON serialization replaces it).
  std::string Flush();

  // A stop string matched or EOS was generated (finish_reason "stop").
  bool stopped() const { return stopped_; }
  // Generated tokens counted so far, the stopping one included.
  int tokens() const { return tokens_; }
  // The text so far, a matched stop string trimmed.
  const std::string& text() const { return text_; }

 private:
  // Length of the longest suffix of text_ (from sent_) that is a proper prefix of a stop string.
  size_t StopPrefixHold() const;

  const ByteTokenizer* tokenizer_;
  std::vector<std::string> stop_;
  bool ignore_eos_;
  size_t max_stop_len_ = 0;
  std::string text_;
  size_t sent_ = 0;  // bytes of text_ already returned
  bool stopped_ = false;
  int tokens_ = 0;
};

// The length of the longest prefix of `text` that does not end inside a UTF-8 sequence (an
// incomplete character at the end is excluded; invalid bytes count as complete).
size_t Utf8CompletePrefix(std::string_view text);

}  // namespace pdpool::agent
