// Prometheus text exposition format parser (see prometheus_text.h). Follows the grammar of the
// reference parser (prometheus/common expfmt text_parse.go): tokens separated by blanks (space,
// tab), label values in double quotes with the escapes \\, \" and \n, HELP text with \\ and \n.
#include "common/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace pdpool {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool IsNameChar(char c) { return IsNameStart(c) || (c >= '0' && c <= '9'); }
bool IsLabelNameStart(char c) { return IsNameStart(c) && c != ':'; }
bool IsLabelNameChar(char c) { return IsNameChar(c) && c != ':'; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// A cursor over one line.
class LineReader {
 public:
  explicit LineReader(std::string_view line) : s_(line) {}
  bool AtEnd() const { return pos_ >= s_.size(); }
  char Peek() const { return AtEnd() ? '\0' : s_[pos_]; }
  void Advance() { ++pos_; }
  // Skips blanks; returns whether any were skipped.
  bool SkipBlanks() {
    size_t start = pos_;
    while (!AtEnd() && IsBlank(s_[pos_])) ++pos_;
    return pos_ > start;
  }
  std::string_view ReadWhile(bool (*pred)(char)) {
    size_t start = pos_;
    while (!AtEnd() && pred(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }
  std::string_view ReadToken() {
    size_t start = pos_;
    while (!AtEnd() && !IsBlank(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }
  std::string_view Rest() const { return AtEnd() ? std::string_view() : s_.substr(pos_); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

// Unescapes HELP text: \\ and \n; any other backslash stays as it is (as the reference parser).
std::string UnescapeHelp(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '\\' || s[i + 1] == 'n')) {
      out.push_back(s[i + 1] == 'n' ? '\n' : '\\');
      ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

Status LineError(size_t line_no, const std::string& what) {
  return Status::InvalidArgument("metrics text line " + std::to_string(line_no) + ": " + what);
}

// `# HELP name text` and `# TYPE name type`; other comments are ignored.
Status ParseComment(std::string_view line, size_t line_no, PromExposition* out) {
  LineReader r(line);
  r.Advance();  // '#'
  r.SkipBlanks();
  std::string_view keyword = r.ReadToken();
  if (keyword != "HELP" && keyword != "TYPE") return Status::Ok();
  if (!r.SkipBlanks()) return LineError(line_no, std::string(keyword) + " without a metric name");
  std::string_view name = r.ReadWhile(IsNameChar);
  if (name.empty() || !IsNameStart(name.front()) || (!r.AtEnd() && !IsBlank(r.Peek()))) {
    return LineError(line_no, "invalid metric name in " + std::string(keyword));
  }
  r.SkipBlanks();
  if (keyword == "HELP") {
    out->help[std::string(name)] = UnescapeHelp(r.Rest());
    return Status::Ok();
  }
  std::string_view type = r.ReadToken();
  r.SkipBlanks();
  if (!r.AtEnd()) return LineError(line_no, "unexpected text after TYPE");
  PromMetricType t;
  if (type == "counter") {
    t = PromMetricType::kCounter;
  } else if (type == "gauge") {
    t = PromMetricType::kGauge;
  } else if (type == "histogram") {
    t = PromMetricType::kHistogram;
  } else if (type == "summary") {
    t = PromMetricType::kSummary;
  } else if (type == "untyped") {
    t = PromMetricType::kUntyped;
  } else {
    return LineError(line_no, "unknown metric type \"" + std::string(type) + "\"");
  }
  out->types[std::string(name)] = t;
  return Status::Ok();
}

// `"value"` with escapes; the reader is on the opening quote.
Status ParseLabelValue(LineReader& r, size_t line_no, std::string* value) {
  r.Advance();  // '"'
  while (true) {
    if (r.AtEnd()) return LineError(line_no, "unterminated label value");
    char c = r.Peek();
    r.Advance();
    if (c == '"') return Status::Ok();
    if (c != '\\') {
      value->push_back(c);
      continue;
    }
    if (r.AtEnd()) return LineError(line_no, "unterminated label value");
    char e = r.Peek();
    r.Advance();
    if (e == '\\' || e == '"') {
      value->push_back(e);
    } else if (e == 'n') {
      value->push_back('\n');
    } else {
      return LineError(line_no, std::string("invalid escape sequence \\") + e + " in label value");
    }
  }
}

Status ParseSampleLine(std::string_view line, size_t line_no, PromExposition* out) {
  LineReader r(line);
  PromSample sample;
  std::string_view name = r.ReadWhile(IsNameChar);
  if (name.empty() || !IsNameStart(name.front())) {
    return LineError(line_no, "invalid metric name");
  }
  sample.name = std::string(name);
  r.SkipBlanks();
  if (r.Peek() == '{') {
    r.Advance();
    while (true) {
      r.SkipBlanks();
      if (r.Peek() == '}') {
        r.Advance();
        break;
      }
      std::string_view label = r.ReadWhile(IsLabelNameChar);
      if (label.empty() || !IsLabelNameStart(label.front())) {
        return LineError(line_no, "invalid label name in " + sample.name);
      }
      r.SkipBlanks();
      if (r.Peek() != '=') {
        return LineError(line_no, "expected '=' after label " + std::string(label));
      }
      r.Advance();
      r.SkipBlanks();
      if (r.Peek() != '"') {
        return LineError(line_no, "expected '\"' to open the value of label " + std::string(label));
      }
      std::string value;
      if (Status s = ParseLabelValue(r, line_no, &value); !s.ok()) return s;
      if (!sample.labels.emplace(std::string(label), std::move(value)).second) {
        return LineError(line_no, "duplicate label " + std::string(label));
      }
      r.SkipBlanks();
      if (r.Peek() == ',') {
        r.Advance();
      } else if (r.Peek() != '}') {
        return LineError(line_no,
                         "expected ',' or '}' after the value of label " + std::string(label));
      }
    }
    r.SkipBlanks();
  }
  std::string_view value = r.ReadToken();
  if (value.empty()) return LineError(line_no, "missing value of " + sample.name);
  if (!ParsePromFloat(value, &sample.value)) {
    return LineError(line_no, "invalid value \"" + std::string(value) + "\" of " + sample.name);
  }
  r.SkipBlanks();
  if (!r.AtEnd()) {
    std::string_view ts = r.ReadToken();
    int64_t ms = 0;
    auto [ptr, ec] = std::from_chars(ts.data(), ts.data() + ts.size(), ms);
    if (ec != std::errc() || ptr != ts.data() + ts.size()) {
      return LineError(line_no, "invalid timestamp \"" + std::string(ts) + "\" of " + sample.name);
    }
    sample.timestamp_ms = ms;
    r.SkipBlanks();
    if (!r.AtEnd()) return LineError(line_no, "unexpected text after the timestamp");
  }
  out->samples.push_back(std::move(sample));
  return Status::Ok();
}

}  // namespace

std::string_view PromMetricTypeName(PromMetricType type) {
  switch (type) {
    case PromMetricType::kCounter:
      return "counter";
    case PromMetricType::kGauge:
      return "gauge";
    case PromMetricType::kHistogram:
      return "histogram";
    case PromMetricType::kSummary:
      return "summary";
    case PromMetricType::kUntyped:
      break;
  }
  return "untyped";
}

std::string_view PromSample::Label(std::string_view key) const {
  auto it = labels.find(key);
  return it == labels.end() ? std::string_view() : std::string_view(it->second);
}

bool ParsePromFloat(std::string_view text, double* out) {
  bool negative = false;
  std::string_view s = text;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return false;
  double v;
  if (EqualsIgnoreCase(s, "inf") || EqualsIgnoreCase(s, "infinity")) {
    v = std::numeric_limits<double>::infinity();
  } else if (EqualsIgnoreCase(s, "nan")) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else {
    // from_chars takes no sign (handled above) and no inf/nan spellings other than the above
    // reach it with a sign, so "+-1" and "--1" are refused.
    if (s.front() == '+' || s.front() == '-') return false;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc::result_out_of_range) {
      // Go rounds overflow to ±Inf and underflow to 0, as strtod does.
      v = std::strtod(std::string(s).c_str(), nullptr);
    } else if (ec != std::errc() || ptr != s.data() + s.size()) {
      return false;
    }
  }
  *out = negative ? -v : v;
  return true;
}

StatusOr<PromExposition> ParsePrometheusText(std::string_view text) {
  PromExposition out;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t first = 0;
    while (first < line.size() && IsBlank(line[first])) ++first;
    line.remove_prefix(first);
    if (line.empty()) continue;
    Status s = line.front() == '#' ? ParseComment(line, line_no, &out)
                                   : ParseSampleLine(line, line_no, &out);
    if (!s.ok()) return s;
  }
  return out;
}

}  // namespace pdpool
