// Downward-API labels file: see labels_file.h.
#include "agent/worker/labels_file.h"

#include <fstream>
#include <sstream>

#include "common/log.h"

namespace pdpool::agent {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The inside of a Go double-quoted string literal (what strconv.Unquote accepts).
Status UnquoteGo(std::string_view quoted, std::string* out) {
  for (size_t i = 0; i < quoted.size();) {
    const char c = quoted[i];
    if (c == '"') return Status::InvalidArgument("unescaped '\"' inside the value");
    if (c != '\\') {
      out->push_back(c);
      ++i;
      continue;
    }
    if (i + 1 >= quoted.size()) return Status::InvalidArgument("the value ends in a lone '\\'");
    const char e = quoted[i + 1];
    i += 2;
    switch (e) {
      case 'a':
        out->push_back('\a');
        continue;
      case 'b':
        out->push_back('\b');
        continue;
      case 'f':
        out->push_back('\f');
        continue;
      case 'n':
        out->push_back('\n');
        continue;
      case 'r':
        out->push_back('\r');
        continue;
      case 't':
        out->push_back('\t');
        continue;
      case 'v':
        out->push_back('\v');
        continue;
      case '\\':
        out->push_back('\\');
        continue;
      case '"':
        out->push_back('"');
        continue;
      default:
        break;
    }
    int digits = 0;
    int base = 16;
    switch (e) {
      case 'x':
        digits = 2;
        break;
      case 'u':
        digits = 4;
        break;
      case 'U':
        digits = 8;
        break;
      case '0':
      case '1':
      case '2':
      case '3':
      case '4':
      case '5':
      case '6':
      case '7':
        digits = 2;  // the first octal digit is `e` itself
        base = 8;
        break;
      default:
        return Status::InvalidArgument(std::string("unknown escape '\\") + e + "'");
    }
    if (i + digits > quoted.size()) {
      return Status::InvalidArgument(std::string("escape '\\") + e + "' is cut short");
    }
    uint32_t value = base == 8 ? static_cast<uint32_t>(e - '0') : 0;
    for (int k = 0; k < digits; ++k) {
      const int d = HexValue(quoted[i + k]);
      if (d < 0 || d >= base) {
        return Status::InvalidArgument(std::string("escape '\\") + e + "' has a bad digit");
      }
      value = value * static_cast<uint32_t>(base) + static_cast<uint32_t>(d);
    }
    i += digits;
    if (e == 'x' || base == 8) {
      if (value > 0xFF) return Status::InvalidArgument("octal escape above \\377");
      out->push_back(static_cast<char>(value));  // a raw byte, as in Go
    } else {
      if (value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) {
        return Status::InvalidArgument("escape '\\" + std::string(1, e) +
                                       "' is not a Unicode code point");
      }
      AppendUtf8(value, out);
    }
  }
  return Status::Ok();
}

}  // namespace

StatusOr<PodLabels> ParseLabelsFile(std::string_view text) {
  PodLabels labels;
  int line_number = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("line " + std::to_string(line_number) + ": " + why +
                                     " (want key=\"value\")");
    };
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("no '='");
    if (eq == 0) return bad("empty key");
    std::string_view value = line.substr(eq + 1);
    if (value.size() < 2 || value.front() != '"' || value.back() != '"') {
      return bad("the value is not a double-quoted string");
    }
    std::string unquoted;
    if (Status s = UnquoteGo(value.substr(1, value.size() - 2), &unquoted); !s.ok()) {
      return bad(s.message());
    }
    labels[std::string(line.substr(0, eq))] = std::move(unquoted);
  }
  return labels;
}

StatusOr<PodLabels> ReadLabelsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("labels file " + path + " cannot be opened");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::Unavailable("labels file " + path + " cannot be read");
  auto labels = ParseLabelsFile(text.str());
  if (!labels.ok()) {
    return Status::InvalidArgument("labels file " + path + ": " + labels.status().message());
  }
  return labels;
}

LabelsFileWatcher::LabelsFileWatcher(std::string path, std::string key,
                                     std::chrono::milliseconds interval, Callback on_change)
    : path_(std::move(path)),
      key_(std::move(key)),
      interval_(interval),
      on_change_(std::move(on_change)) {}

LabelsFileWatcher::~LabelsFileWatcher() { Stop(); }

void LabelsFileWatcher::Start(std::optional<std::string> current) {
  if (thread_.joinable()) return;
  applied_ = std::move(current);
  {
    std::lock_guard lock(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!stop_) {
      if (cv_.wait_for(lock, interval_, [this] { return stop_; })) break;
      lock.unlock();
      PollOnce();
      lock.lock();
    }
  });
  LogInfo("watching pod labels", {{"path", path_}, {"label", key_}});
}

void LabelsFileWatcher::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LabelsFileWatcher::PollOnce() {
  auto labels = ReadLabelsFile(path_);
  if (!labels.ok()) {
    // A pod without the volume, or a file caught mid-replacement: keep the current value.
    if (labels.status().message() != last_problem_) {
      last_problem_ = labels.status().message();
      LogWarn("cannot read pod labels; keeping the current role",
              {{"path", path_}, {"error", labels.status().ToString()}});
    }
    return;
  }
  last_problem_.clear();
  auto it = labels->find(key_);
  if (it == labels->end() || (applied_ && *applied_ == it->second)) return;
  if (pending_ != it->second) {  // once per new value, not once per retry
    LogInfo(
        "pod label changed",
        {{"label", key_}, {"from", applied_.value_or("")}, {"to", it->second}, {"path", path_}});
    pending_ = it->second;
  }
  if (on_change_(it->second)) applied_ = it->second;
}

}  // namespace pdpool::agent
