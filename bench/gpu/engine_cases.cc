// Engine benchmark cases: counting, targets, the peer's JSON, and the report (see the header).
#include "bench/gpu/engine_cases.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace pdpool::bench::engine {
namespace {

std::vector<std::string> SplitComma(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string_view::npos) end = s.size();
    std::string item(s.substr(start, end - start));
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

bool ParsePositiveInt(std::string_view s, int* out) {
  if (s.empty() || s.size() > 9) return false;
  int v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + (ch - '0');
  }
  if (v <= 0) return false;
  *out = v;
  return true;
}

std::string Fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// A column-aligned text table: first row is the header.
std::string AlignRows(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::string line;
    for (size_t i = 0; i < rows[r].size(); ++i) {
      const std::string& cell = rows[r][i];
      // First column left-aligned, numbers right-aligned.
      if (i == 0) {
        line += cell + std::string(width[i] - cell.size(), ' ');
      } else {
        line += "  " + std::string(width[i] - cell.size(), ' ') + cell;
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
    if (r == 0) {
      size_t total = 0;
      for (size_t i = 0; i < width.size(); ++i) total += width[i] + (i == 0 ? 0 : 2);
      out += std::string(total, '-') + "\n";
    }
  }
  return out;
}

Json CaseJson(const EngineCase& c) {
  return Json{{"name", c.Name()},
              {"phase", c.phase == Phase::kDecode ? "decode" : "prefill"},
              {"batch", c.batch},
              {"context", c.context},
              {"tokens", c.tokens}};
}

Json OptionalNumber(std::optional<double> v) { return v ? Json(*v) : Json(nullptr); }

}  // namespace

std::string EngineCase::Name() const {
  if (phase == Phase::kPrefill) return "prefill:" + std::to_string(tokens);
  return "decode:" + std::to_string(batch) + ":" + std::to_string(context);
}

EngineCase DecodeCase(int batch, int context) {
  return EngineCase{Phase::kDecode, batch, context, 1};
}

EngineCase PrefillCase(int tokens) { return EngineCase{Phase::kPrefill, 1, 0, tokens}; }

namespace {
std::vector<EngineCase> DefaultDecode() {
  std::vector<EngineCase> out;
  for (int context : {1024, 2048}) {
    for (int batch : {1, 8, 32, 64}) out.push_back(DecodeCase(batch, context));
  }
  return out;
}
std::vector<EngineCase> DefaultPrefill() {
  return {PrefillCase(512), PrefillCase(2048), PrefillCase(8192)};
}
}  // namespace

std::vector<EngineCase> DefaultCases() {
  std::vector<EngineCase> out = DefaultDecode();
  for (const EngineCase& c : DefaultPrefill()) out.push_back(c);
  return out;
}

StatusOr<std::vector<EngineCase>> SelectRows(std::string_view rows) {
  std::vector<EngineCase> out;
  auto add = [&out](const EngineCase& c) {
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  };
  const std::vector<std::string> items = SplitComma(rows);
  if (items.empty()) return DefaultCases();
  for (const std::string& item : items) {
    if (item == "all") {
      for (const EngineCase& c : DefaultCases()) add(c);
    } else if (item == "decode") {
      for (const EngineCase& c : DefaultDecode()) add(c);
    } else if (item == "prefill") {
      for (const EngineCase& c : DefaultPrefill()) add(c);
    } else if (item.rfind("decode:", 0) == 0) {
      const std::string rest = item.substr(7);
      const size_t colon = rest.find(':');
      int batch = 0, context = 0;
      if (colon == std::string::npos || !ParsePositiveInt(rest.substr(0, colon), &batch) ||
          !ParsePositiveInt(rest.substr(colon + 1), &context)) {
        return Status::InvalidArgument("--rows: \"" + item +
                                       "\": expected decode:BATCH:CONTEXT with positive integers");
      }
      add(DecodeCase(batch, context));
    } else if (item.rfind("prefill:", 0) == 0) {
      int tokens = 0;
      if (!ParsePositiveInt(item.substr(8), &tokens)) {
        return Status::InvalidArgument("--rows: \"" + item +
                                       "\": expected prefill:TOKENS with a positive integer");
      }
      add(PrefillCase(tokens));
    } else {
      return Status::InvalidArgument("--rows: unknown item \"" + item +
                                     "\"; known: all, decode, prefill, decode:B:C, prefill:T");
    }
  }
  return out;
}

CaseCount CountCase(const agent::ModelConfig& m, const EngineCase& c) {
  const double params = static_cast<double>(m.ParamCount());
  const double embed = double{1} * m.vocab_size * m.hidden_size;
  const double lm_head = embed;  // [vocab, hidden], tied or not it is multiplied
  const double embeddings_counted = m.tie_word_embeddings ? embed : 2 * embed;
  const double per_pair = 2.0 * 2.0 * m.num_layers * m.num_heads * m.head_dim;
  const double b = c.batch;
  const double t = c.tokens;
  const double pairs =
      c.phase == Phase::kPrefill ? b * t * t / 2 : b * t * static_cast<double>(c.context);
  CaseCount out;
  out.attention_flops = per_pair * pairs;
  out.flops = 2 * params * b * t + out.attention_flops;
  out.exact_flops =
      2 * (params - embeddings_counted) * b * t + 2 * lm_head * b + out.attention_flops;
  const double kv_per_token = static_cast<double>(m.KvBytesPerToken(2));
  out.bytes = 2 * params + b * static_cast<double>(c.context) * kv_per_token;
  return out;
}

double FloorSeconds(const CaseCount& count, const Ceilings& ceilings) {
  const double compute =
      ceilings.gemm_flops_per_s > 0 ? count.flops / ceilings.gemm_flops_per_s : 0;
  const double memory = ceilings.copy_bytes_per_s > 0 ? count.bytes / ceilings.copy_bytes_per_s : 0;
  return std::max(compute, memory);
}

std::optional<Target> TargetFor(std::string_view preset, const EngineCase& c) {
  if (preset != "llama-3.1-8b") return std::nullopt;
  if (c == DecodeCase(1, 1024)) return Target{0.85};
  if (c == DecodeCase(64, 2048)) return Target{0.83};
  if (c == PrefillCase(8192)) return Target{0.87};
  return std::nullopt;
}

double SimPredictSeconds(const agent::PerfModel& model, const EngineCase& c) {
  std::vector<agent::SeqWork> work;
  for (int i = 0; i < c.batch; ++i) work.push_back(agent::SeqWork{c.tokens, c.context, true});
  return std::chrono::duration<double>(model.StepTime(work)).count();
}

StatusOr<PeerResults> ParsePeerJson(const Json& doc, std::string_view origin) {
  const std::string prefix = std::string(origin) + ": ";
  if (!doc.is_object()) return Status::InvalidArgument(prefix + "not a JSON object");
  PeerResults out;
  out.device = JsonStringAt(doc, {"device"});
  out.preset = JsonStringAt(doc, {"preset"});
  if (const Json* v = JsonChild(doc, "d2d_bw"); v != nullptr && v->is_number()) {
    out.copy_bytes_per_s = v->get<double>();
  }
  if (const Json* v = JsonChild(doc, "bf16_peak"); v != nullptr && v->is_number()) {
    out.gemm_flops_per_s = v->get<double>();
  }
  const Json* rows = JsonChild(doc, "rows");
  if (rows == nullptr || !rows->is_array()) {
    return Status::InvalidArgument(prefix + "rows must be an array (peer_hf_llama.py --json)");
  }
  for (size_t i = 0; i < rows->size(); ++i) {
    const Json& row = (*rows)[i];
    const std::string where = prefix + "rows[" + std::to_string(i) + "]";
    const std::string phase = JsonStringAt(row, {"phase"});
    const Json* batch = JsonChild(row, "batch");
    const Json* tokens = JsonChild(row, "tokens");
    const Json* ms = JsonChild(row, "ms");
    if (batch == nullptr || !batch->is_number_integer() || tokens == nullptr ||
        !tokens->is_number_integer() || ms == nullptr || !ms->is_number()) {
      return Status::InvalidArgument(where + ": needs integer batch and tokens and a number ms");
    }
    EngineCase c;
    if (phase == "decode") {
      c = DecodeCase(batch->get<int>(), tokens->get<int>());
    } else if (phase == "prefill") {
      if (batch->get<int>() != 1) continue;  // engine_bench's prefill rows are batch 1
      c = PrefillCase(tokens->get<int>());
    } else {
      return Status::InvalidArgument(where + ".phase must be decode or prefill, got \"" + phase +
                                     "\"");
    }
    out.ms_by_case[c.Name()] = ms->get<double>();
  }
  return out;
}

StatusOr<PeerResults> LoadPeerJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return Status::NotFound("peer JSON " + path + ": cannot open: " + std::strerror(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  Json doc;
  try {
    doc = Json::parse(text.str());
  } catch (const Json::exception& e) {
    return Status::InvalidArgument("peer JSON " + path + ": not valid JSON: " + e.what());
  }
  return ParsePeerJson(doc, "peer JSON " + path);
}

double MeasuredRow::MedianMs() const {
  if (samples_ms.empty()) return 0;
  std::vector<double> s = samples_ms;
  std::sort(s.begin(), s.end());
  const size_t n = s.size();
  return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

double MeasuredRow::MinMs() const {
  return samples_ms.empty() ? 0 : *std::min_element(samples_ms.begin(), samples_ms.end());
}

double MeasuredRow::MaxMs() const {
  return samples_ms.empty() ? 0 : *std::max_element(samples_ms.begin(), samples_ms.end());
}

Json ReportToJson(const Report& r) {
  Json doc;
  doc["tool"] = r.tool;
  doc["date"] = r.date;
  doc["device_name"] = r.device_name;
  doc["device"] = r.device.is_null() ? Json::object() : r.device;
  if (r.datasheet) {
    doc["gpu"] = r.datasheet->name;
    doc["datasheet"] = Json{{"hbm_bytes", r.datasheet->hbm_bytes},
                            {"hbm_bandwidth", r.datasheet->hbm_bandwidth},
                            {"bf16_flops", r.datasheet->bf16_flops},
                            {"nvlink_bandwidth", r.datasheet->nvlink_bandwidth}};
  } else {
    doc["gpu"] = nullptr;
    doc["datasheet"] = nullptr;
  }
  doc["ceilings"] = Json{{"copy_bytes", r.ceilings.copy_bytes},
                         {"copy_ms", r.ceilings.copy_ms},
                         {"copy_bytes_per_s", r.ceilings.copy_bytes_per_s},
                         {"gemm_n", r.ceilings.gemm_n},
                         {"gemm_ms", r.ceilings.gemm_ms},
                         {"gemm_flops_per_s", r.ceilings.gemm_flops_per_s}};
  const agent::ModelConfig& m = r.model;
  doc["model"] = Json{{"preset", r.preset},
                      {"vocab_size", m.vocab_size},
                      {"hidden_size", m.hidden_size},
                      {"intermediate_size", m.intermediate_size},
                      {"num_layers", m.num_layers},
                      {"num_heads", m.num_heads},
                      {"num_kv_heads", m.num_kv_heads},
                      {"head_dim", m.head_dim},
                      {"tie_word_embeddings", m.tie_word_embeddings},
                      {"params", m.ParamCount()},
                      {"weight_bytes", 2 * m.ParamCount()},
                      {"kv_bytes_per_token", m.KvBytesPerToken(2)}};
  doc["backend"] = r.backend.is_null() ? Json::object() : r.backend;
  doc["timing"] = r.timing;
  doc["counting"] =
      "TARGETS.md Definitions: flops = 2*params*batch*tokens + 4*layers*heads*head_dim*pairs "
      "(prefill pairs tokens^2/2, decode batch*context); bytes = 2*params + "
      "batch*context*kv_bytes_per_token; floor = max(flops/gemm rate, bytes/copy rate) with the "
      "measured ceilings; floor_fraction = floor/measured median. exact_flops: embedding gather "
      "and LM head on all but the last token left out.";
  doc["sim_calibration"] = r.sim_calibration ? CalibrationJson(*r.sim_calibration) : Json(nullptr);
  Json rows = Json::array();
  for (const MeasuredRow& row : r.rows) {
    Json j = CaseJson(row.c);
    const CaseCount count = CountCase(m, row.c);
    const double floor_s = FloorSeconds(count, r.ceilings);
    const bool measured = !row.samples_ms.empty();
    const double ms = row.MedianMs();
    j["ms"] = measured ? Json(ms) : Json(nullptr);
    j["ms_min"] = measured ? Json(row.MinMs()) : Json(nullptr);
    j["ms_max"] = measured ? Json(row.MaxMs()) : Json(nullptr);
    j["samples_ms"] = row.samples_ms;
    j["error"] = row.error.empty() ? Json(nullptr) : Json(row.error);
    j["flops"] = count.flops;
    j["attention_flops"] = count.attention_flops;
    j["exact_flops"] = count.exact_flops;
    j["bytes"] = count.bytes;
    j["floor_ms"] = floor_s * 1e3;
    j["floor_fraction"] = measured && ms > 0 ? Json(floor_s * 1e3 / ms) : Json(nullptr);
    const std::optional<Target> target = TargetFor(r.preset, row.c);
    j["target_fraction"] = target ? Json(target->min_fraction) : Json(nullptr);
    j["target_met"] = target && measured && ms > 0
                          ? Json(floor_s * 1e3 / ms >= target->min_fraction)
                          : Json(nullptr);
    j["sim_ms"] = OptionalNumber(row.sim_ms);
    std::optional<double> peer_ms;
    if (r.peer) {
      if (auto it = r.peer->ms_by_case.find(row.c.Name()); it != r.peer->ms_by_case.end()) {
        peer_ms = it->second;
      }
    }
    j["peer_ms"] = OptionalNumber(peer_ms);
    j["peer_floor_fraction"] =
        peer_ms && *peer_ms > 0 ? Json(floor_s * 1e3 / *peer_ms) : Json(nullptr);
    j["ratio_vs_peer"] = peer_ms && *peer_ms > 0 && measured ? Json(ms / *peer_ms) : Json(nullptr);
    rows.push_back(std::move(j));
  }
  doc["rows"] = std::move(rows);
  if (r.peer) {
    doc["peer"] = Json{{"source", r.peer_source},
                       {"device", r.peer->device},
                       {"preset", r.peer->preset},
                       {"copy_bytes_per_s", r.peer->copy_bytes_per_s},
                       {"gemm_flops_per_s", r.peer->gemm_flops_per_s}};
  } else {
    doc["peer"] = nullptr;
  }
  doc["complete"] = r.complete;
  doc["notes"] = r.notes;
  return doc;
}

std::string RenderTable(const Report& r) {
  std::string out;
  out += "engine_bench (" + r.tool + ")  " + r.date + "  device: " + r.device_name;
  if (r.datasheet) out += " (catalog " + r.datasheet->name + ")";
  out += "\nmodel: " + r.preset + ", " + Fmt("%.2f", r.model.ParamCount() / 1e9) + "B params, " +
         Fmt("%.2f", 2.0 * r.model.ParamCount() / 1e9) + " GB bf16, KV " +
         std::to_string(r.model.KvBytesPerToken(2)) + " B/token\n";
  out += "ceilings (measured): device-to-device copy " +
         Fmt("%.2f", r.ceilings.copy_bytes_per_s / 1e12) + " TB/s (read+write, " +
         Fmt("%.1f", r.ceilings.copy_bytes / (1 << 30)) + " GiB buffer), bf16 GEMM " +
         std::to_string(r.ceilings.gemm_n) + "^3 " +
         Fmt("%.0f", r.ceilings.gemm_flops_per_s / 1e12) + " TFLOP/s";
  if (r.datasheet) {
    out += "  [datasheet " + Fmt("%.2f", r.datasheet->hbm_bandwidth / 1e12) + " TB/s, " +
           Fmt("%.0f", r.datasheet->bf16_flops / 1e12) + " TFLOP/s]";
  }
  out += "\n";
  if (r.peer) {
    out += "peer (" + r.peer_source + "): " + r.peer->device + ", its ceilings " +
           Fmt("%.2f", r.peer->copy_bytes_per_s / 1e12) + " TB/s, " +
           Fmt("%.0f", r.peer->gemm_flops_per_s / 1e12) + " TFLOP/s\n";
  }
  if (!r.timing.empty()) out += "timing: " + r.timing + "\n";
  out += "\n";

  std::vector<std::vector<std::string>> rows;
  rows.push_back({"case", "pdpool ms", "min-max ms", "floor ms", "of floor", "target", "result",
                  "peer ms", "peer of floor", "pdpool/peer", "sim ms"});
  for (const MeasuredRow& row : r.rows) {
    const CaseCount count = CountCase(r.model, row.c);
    const double floor_ms = FloorSeconds(count, r.ceilings) * 1e3;
    const std::optional<Target> target = TargetFor(r.preset, row.c);
    std::vector<std::string> cells{row.c.Name()};
    const bool measured = !row.samples_ms.empty();
    const double ms = row.MedianMs();
    if (measured) {
      cells.push_back(Fmt("%.2f", ms));
      cells.push_back(Fmt("%.2f", row.MinMs()) + "-" + Fmt("%.2f", row.MaxMs()));
    } else {
      cells.push_back("n/a");
      cells.push_back("");
    }
    cells.push_back(Fmt("%.2f", floor_ms));
    cells.push_back(measured && ms > 0 ? Fmt("%.1f%%", 100 * floor_ms / ms) : "");
    cells.push_back(target ? ">= " + Fmt("%.0f%%", 100 * target->min_fraction) : "-");
    if (!measured) {
      cells.push_back("NOT RUN");
    } else if (target) {
      cells.push_back(floor_ms / ms >= target->min_fraction ? "met" : "missed");
    } else {
      cells.push_back("info");
    }
    std::optional<double> peer_ms;
    if (r.peer) {
      if (auto it = r.peer->ms_by_case.find(row.c.Name()); it != r.peer->ms_by_case.end()) {
        peer_ms = it->second;
      }
    }
    cells.push_back(peer_ms ? Fmt("%.2f", *peer_ms) : "-");
    cells.push_back(peer_ms && *peer_ms > 0 ? Fmt("%.1f%%", 100 * floor_ms / *peer_ms) : "-");
    cells.push_back(peer_ms && *peer_ms > 0 && measured ? Fmt("%.3f", ms / *peer_ms) : "-");
    cells.push_back(row.sim_ms ? Fmt("%.2f", *row.sim_ms) : "-");
    rows.push_back(std::move(cells));
  }
  out += AlignRows(rows);
  out += "\n";
  for (const MeasuredRow& row : r.rows) {
    if (!row.error.empty()) out += "  " + row.c.Name() + ": " + row.error + "\n";
  }
  out +=
      "Counted (TARGETS.md Definitions, as peer_hf_llama.py): FLOPs = 2*params*tokens + causal "
      "attention 4*layers*heads*head_dim*pairs (prefill T^2/2 pairs, decode batch*context); "
      "bytes = bf16 weights + batch*context*KV bytes/token; floor = max(FLOPs/GEMM rate, "
      "bytes/copy rate) at the measured ceilings. 'of floor' = floor/measured (higher is "
      "better); 'peer of floor' uses the same floor; pdpool/peer = time ratio (< 1: pdpool "
      "faster); sim ms = the sim backend's PerfModel with the calibration in use.\n";
  for (const MeasuredRow& row : r.rows) {
    if (row.c.phase != Phase::kPrefill || !TargetFor(r.preset, row.c)) continue;
    CaseCount exact = CountCase(r.model, row.c);
    exact.flops = exact.exact_flops;
    out += "  " + row.c.Name() + ": params count embedding and LM head for every token, as " +
           "TARGETS.md does; without them the floor would be " +
           Fmt("%.1f", 1e3 * FloorSeconds(exact, r.ceilings)) + " ms.\n";
  }
  for (const std::string& note : r.notes) out += "  note: " + note + "\n";
  if (!r.complete) out += "  INCOMPLETE: the run was cut short; rows marked NOT RUN.\n";
  return out;
}

Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Status::InvalidArgument(path + ": cannot write: " + std::strerror(errno));
    out << text;
    out.flush();
    if (!out) return Status::InvalidArgument(path + ": write failed: " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Status::InvalidArgument(path + ": rename failed: " + ec.message());
  return Status::Ok();
}

Json CalibrationJson(const agent::GpuCalibration& c) {
  return Json{{"matmul_efficiency", c.matmul_efficiency},
              {"hbm_efficiency", c.hbm_efficiency},
              {"attention_efficiency", c.attention_efficiency},
              {"nvlink_efficiency", c.nvlink_efficiency},
              {"step_overhead_us", c.step_overhead_us},
              {"per_sequence_overhead_us", c.per_sequence_overhead_us},
              {"tp_allreduce_latency_us", c.tp_allreduce_latency_us}};
}

}  // namespace pdpool::bench::engine
