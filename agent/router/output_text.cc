// OutputText: incremental detokenization with stop strings (see output_text.h).
#include "agent/router/output_text.h"

#include <algorithm>
#include <span>
#include <utility>

namespace pdpool::agent {

size_t Utf8CompletePrefix(std::string_view text) {
  // Look back at most 3 bytes for the lead byte of the last sequence.
  const size_t n = text.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    unsigned char c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = (c & 0x80) == 0x00   ? 1
                  : (c & 0xE0) == 0xC0 ? 2
                  : (c & 0xF0) == 0xE0 ? 3
                  : (c & 0xF8) == 0xF0 ? 4
                                       : 1;  // invalid lead: nothing will complete it
    return back < need ? n - back : n;
  }
  return n;  // only continuation bytes (invalid): send them
}

OutputText::OutputText(const ByteTokenizer* tokenizer, std::vector<std::string> stop,
                       bool ignore_eos)
    : tokenizer_(tokenizer), stop_(std::move(stop)), ignore_eos_(ignore_eos) {
  for (const auto& s : stop_) max_stop_len_ = std::max(max_stop_len_, s.size());
}

size_t OutputText::StopPrefixHold() const {
  if (max_stop_len_ == 0) return 0;
  std::string_view pending = std::string_view(text_).substr(sent_);
  size_t hold = 0;
  for (const auto& s : stop_) {
    // Longest k < |s| with pending ending in s[0:k].
    for (size_t k = std::min(s.size() - 1, pending.size()); k > hold; --k) {
      if (pending.substr(pending.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

std::string OutputText::Add(int32_t token) {
  if (stopped_) return {};
  ++tokens_;
  if (token == tokenizer_->eos_id() && !ignore_eos_) {
    stopped_ = true;
    return Flush();
  }
  text_ += tokenizer_->Decode(std::span<const int32_t>(&token, 1));
  if (max_stop_len_ > 0) {
    // A match can only start in text not yet sent: text that could begin one is held back.
    size_t search_from = sent_;
    size_t best = std::string::npos;
    for (const auto& s : stop_) {
      size_t at = text_.find(s, search_from);
      if (at != std::string::npos && at < best) best = at;
    }
    if (best != std::string::npos) {
      text_.resize(best);
      stopped_ = true;
      return Flush();
    }
  }
  size_t end = text_.size() - StopPrefixHold();
  end = sent_ + Utf8CompletePrefix(std::string_view(text_).substr(sent_, end - sent_));
  std::string delta = text_.substr(sent_, end - sent_);
  sent_ = end;
  return delta;
}

std::string OutputText::Flush() {
  std::string delta = text_.substr(sent_);
  sent_ = text_.size();
  return delta;
}

}  // namespace pdpool::agent
