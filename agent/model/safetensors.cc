// Safetensors reader and writer: header parsing and checking, dtype conversion to float32,
// sharded checkpoints.
#include "agent/model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <utility>

namespace pdpool::agent {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader copies bytes as they are");

namespace fs = std::filesystem;

// The reference implementation refuses headers over 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Shapes beyond this many elements are certainly corrupt (and would overflow byte counts).
constexpr uint64_t kMaxElements = uint64_t{1} << 48;

// Byte size of one element of each dtype the format defines (0: unknown dtype).
int DtypeBytes(std::string_view dtype) {
  static const std::map<std::string, int, std::less<>> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

Status ParseEntry(const std::string& path, const std::string& name, const Json& v,
                  uint64_t data_bytes, SafetensorsEntry* out) {
  const std::string where = "tensor " + Quote(name) + " in " + path;
  if (!v.is_object()) return Status::InvalidArgument(where + ": header entry is not an object");
  const Json* dtype = JsonChild(v, "dtype");
  if (dtype == nullptr || !dtype->is_string()) {
    return Status::InvalidArgument(where + ": dtype missing or not a string");
  }
  out->dtype = dtype->get<std::string>();
  const int elem = DtypeBytes(out->dtype);
  if (elem == 0) {
    return Status::InvalidArgument(where + ": unsupported dtype " + Quote(out->dtype) +
                                   " (supported: BF16, F16, F32)");
  }
  const Json* shape = JsonChild(v, "shape");
  if (shape == nullptr || !shape->is_array()) {
    return Status::InvalidArgument(where + ": shape missing or not an array");
  }
  uint64_t numel = 1;
  for (const Json& d : *shape) {
    if (!d.is_number_unsigned()) {
      return Status::InvalidArgument(where + ": shape " + shape->dump() +
                                     " has a dimension that is not a non-negative integer");
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim != 0 && numel > kMaxElements / dim) {
      return Status::InvalidArgument(where + ": shape " + shape->dump() + " is too large");
    }
    numel *= dim;
    out->shape.push_back(static_cast<int64_t>(dim));
  }
  const Json* offs = JsonChild(v, "data_offsets");
  if (offs == nullptr || !offs->is_array() || offs->size() != 2 ||
      !(*offs)[0].is_number_unsigned() || !(*offs)[1].is_number_unsigned()) {
    return Status::InvalidArgument(where + ": data_offsets must be [begin, end] (non-negative)");
  }
  out->begin = (*offs)[0].get<uint64_t>();
  out->end = (*offs)[1].get<uint64_t>();
  if (out->begin > out->end || out->end > data_bytes) {
    return Status::InvalidArgument(where + ": data_offsets [" + std::to_string(out->begin) + ", " +
                                   std::to_string(out->end) +
                                   "] out of range of the data section (" +
                                   std::to_string(data_bytes) + " bytes; file truncated?)");
  }
  const uint64_t want = numel * static_cast<uint64_t>(elem);
  if (out->end - out->begin != want) {
    return Status::InvalidArgument(
        where + ": data_offsets [" + std::to_string(out->begin) + ", " + std::to_string(out->end) +
        "] hold " + std::to_string(out->end - out->begin) + " bytes, but shape " +
        ShapeString(out->shape) + " of " + out->dtype + " needs " + std::to_string(want));
  }
  return Status::Ok();
}

StatusOr<Json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot open " + path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Status::InvalidArgument("cannot read " + path);
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument(path + ": not valid JSON");
  return j;
}

}  // namespace

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string_view SafetensorsDtypeName(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF32:
      return "F32";
    case SafetensorsDtype::kF16:
      return "F16";
    case SafetensorsDtype::kBF16:
      return "BF16";
  }
  return "F32";
}

StatusOr<SafetensorsDtype> ParseSafetensorsDtype(std::string_view name) {
  if (name == "F32") return SafetensorsDtype::kF32;
  if (name == "F16") return SafetensorsDtype::kF16;
  if (name == "BF16") return SafetensorsDtype::kBF16;
  return Status::InvalidArgument("unsupported dtype " + Quote(name) +
                                 " (supported: BF16, F16, F32)");
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant · 2^-24, exact in float.
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign != 0 ? -mag : mag;
  }
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

float Bf16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN (keep NaN quiet and non-zero)
    if (abs == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // ≥ 65520 rounds to infinity
  if (abs < 0x38800000u) {                        // below 2^-14: subnormal half (or zero)
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // exact: power of two
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  uint32_t h = (((abs >> 23) - 112u) << 10) | ((abs >> 13) & 0x3ffu);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0)) ++h;
  return static_cast<uint16_t>(sign | h);
}

uint16_t FloatToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return Status::NotFound("safetensors file " + path + " not found");
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return Status::InvalidArgument("cannot stat " + path + ": " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot open " + path);
  if (size < 8) {
    return Status::InvalidArgument(path + ": file too short (" + std::to_string(size) +
                                   " bytes) for the 8-byte header length");
  }
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  if (!in) return Status::InvalidArgument(path + ": cannot read the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > size - 8) {
    return Status::InvalidArgument(path + ": header length " + std::to_string(header_len) +
                                   " is beyond the file size (" + std::to_string(size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    return Status::InvalidArgument(path + ": header length " + std::to_string(header_len) +
                                   " exceeds the 100 MB limit");
  }
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  if (!in) return Status::InvalidArgument(path + ": cannot read the header");
  Json j = Json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(path + ": header is not a JSON object");
  }
  SafetensorsFile f;
  f.path_ = path;
  f.data_start_ = 8 + header_len;
  const uint64_t data_bytes = size - f.data_start_;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      f.metadata_ = it.value();
      continue;
    }
    SafetensorsEntry e;
    if (Status s = ParseEntry(path, it.key(), it.value(), data_bytes, &e); !s.ok()) return s;
    f.entries_.emplace(it.key(), std::move(e));
  }
  return f;
}

StatusOr<std::pair<const SafetensorsEntry*, SafetensorsDtype>> SafetensorsFile::Find(
    std::string_view name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return Status::NotFound("tensor " + Quote(name) + " not found in " + path_);
  }
  StatusOr<SafetensorsDtype> dtype = ParseSafetensorsDtype(it->second.dtype);
  if (!dtype.ok()) {
    return Status::InvalidArgument("tensor " + Quote(name) + " in " + path_ + ": " +
                                   dtype.status().message());
  }
  return std::make_pair(&it->second, *dtype);
}

Status SafetensorsFile::ReadBytes(std::string_view name, const SafetensorsEntry& e,
                                  char* dst) const {
  const uint64_t nbytes = e.end - e.begin;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return Status::NotFound("cannot open " + path_ + " to read " + Quote(name));
  in.seekg(static_cast<std::streamoff>(data_start_ + e.begin));
  in.read(dst, static_cast<std::streamsize>(nbytes));
  if (!in || static_cast<uint64_t>(in.gcount()) != nbytes) {
    return Status::InvalidArgument("tensor " + Quote(name) + " in " + path_ +
                                   ": data truncated (file changed since it was opened?)");
  }
  return Status::Ok();
}

StatusOr<Tensor> SafetensorsFile::Read(std::string_view name) const {
  auto found = Find(name);
  if (!found.ok()) return found.status();
  const auto [e, dtype] = *found;
  const uint64_t nbytes = e->end - e->begin;
  std::string raw(nbytes, '\0');
  if (Status s = ReadBytes(name, *e, raw.data()); !s.ok()) return s;
  Tensor t;
  t.shape = e->shape;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(raw.data());
  switch (dtype) {
    case SafetensorsDtype::kF32:
      t.data.resize(nbytes / 4);
      if (nbytes > 0) std::memcpy(t.data.data(), p, nbytes);
      break;
    case SafetensorsDtype::kF16:
      t.data.resize(nbytes / 2);
      for (size_t i = 0; i < t.data.size(); ++i) {
        t.data[i] = HalfToFloat(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
      }
      break;
    case SafetensorsDtype::kBF16:
      t.data.resize(nbytes / 2);
      for (size_t i = 0; i < t.data.size(); ++i) {
        t.data[i] = Bf16ToFloat(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
      }
      break;
  }
  return t;
}

Status SafetensorsFile::ReadBf16(std::string_view name, std::vector<uint16_t>* out) const {
  static_assert(std::endian::native == std::endian::little,
                "BF16 bytes are copied as they are stored: little-endian");
  auto found = Find(name);
  if (!found.ok()) return found.status();
  const auto [e, dtype] = *found;
  const uint64_t nbytes = e->end - e->begin;
  if (dtype == SafetensorsDtype::kBF16) {
    out->resize(nbytes / 2);
    return ReadBytes(name, *e, reinterpret_cast<char*>(out->data()));
  }
  std::string raw(nbytes, '\0');
  if (Status s = ReadBytes(name, *e, raw.data()); !s.ok()) return s;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(raw.data());
  if (dtype == SafetensorsDtype::kF32) {
    out->resize(nbytes / 4);
    for (size_t i = 0; i < out->size(); ++i) {
      float f;
      std::memcpy(&f, p + 4 * i, sizeof f);
      (*out)[i] = FloatToBf16(f);
    }
  } else {
    out->resize(nbytes / 2);
    for (size_t i = 0; i < out->size(); ++i) {
      (*out)[i] = FloatToBf16(HalfToFloat(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8))));
    }
  }
  return Status::Ok();
}

StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& path) {
  std::error_code ec;
  std::string index_path;
  std::string single_path;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::exists(dir / "model.safetensors.index.json", ec)) {
      index_path = (dir / "model.safetensors.index.json").string();
    } else if (fs::exists(dir / "model.safetensors", ec)) {
      single_path = (dir / "model.safetensors").string();
    } else {
      return Status::NotFound("directory " + path +
                              " holds neither model.safetensors nor model.safetensors.index.json");
    }
  } else if (fs::exists(path, ec)) {
    if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
      index_path = path;
    } else {
      single_path = path;
    }
  } else {
    return Status::NotFound("weights path " + path + " not found");
  }

  SafetensorsCheckpoint c;
  if (!single_path.empty()) {
    StatusOr<SafetensorsFile> f = SafetensorsFile::Open(single_path);
    if (!f.ok()) return f.status();
    c.source_ = single_path;
    for (const auto& [name, entry] : f->entries()) c.where_.emplace(name, 0);
    c.files_.push_back(std::move(f).value());
    return c;
  }

  c.source_ = index_path;
  StatusOr<Json> index = ReadJsonFile(index_path);
  if (!index.ok()) return index.status();
  const Json* map = JsonChild(*index, "weight_map");
  if (map == nullptr || !map->is_object()) {
    return Status::InvalidArgument(index_path + ": weight_map missing or not an object");
  }
  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> file_index;  // shard file name → index into files_
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return Status::InvalidArgument(index_path + ": weight_map entry for tensor " +
                                     Quote(it.key()) + " is not a file name");
    }
    const std::string shard = it.value().get<std::string>();
    auto fi = file_index.find(shard);
    if (fi == file_index.end()) {
      const std::string shard_path = (dir / shard).string();
      if (!fs::is_regular_file(shard_path, ec)) {
        return Status::NotFound(index_path + " references shard " + shard_path + " (for tensor " +
                                Quote(it.key()) + "), which does not exist");
      }
      StatusOr<SafetensorsFile> f = SafetensorsFile::Open(shard_path);
      if (!f.ok()) return f.status();
      fi = file_index.emplace(shard, c.files_.size()).first;
      c.files_.push_back(std::move(f).value());
    }
    if (!c.files_[fi->second].Contains(it.key())) {
      return Status::NotFound("tensor " + Quote(it.key()) + " listed in " + index_path +
                              " is not in shard " + c.files_[fi->second].path());
    }
    c.where_.emplace(it.key(), fi->second);
  }
  return c;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, i] : where_) names.push_back(name);
  return names;
}

StatusOr<std::pair<const SafetensorsFile*, const SafetensorsEntry*>>
SafetensorsCheckpoint::Locate(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return Status::NotFound("tensor " + Quote(name) + " not found in " + source_);
  }
  const SafetensorsFile& file = files_[it->second];
  return std::make_pair(&file, &file.entries().find(name)->second);
}

namespace {

Status CheckShape(std::string_view name, const SafetensorsFile& file,
                  std::span<const int64_t> shape, std::span<const int64_t> expected_shape) {
  if (std::equal(shape.begin(), shape.end(), expected_shape.begin(), expected_shape.end())) {
    return Status::Ok();
  }
  return Status::InvalidArgument("tensor " + Quote(name) + " in " + file.path() + ": shape " +
                                 ShapeString(shape) + ", expected " +
                                 ShapeString(expected_shape));
}

}  // namespace

StatusOr<Tensor> SafetensorsCheckpoint::Read(std::string_view name) const {
  auto located = Locate(name);
  if (!located.ok()) return located.status();
  return located->first->Read(name);
}

StatusOr<Tensor> SafetensorsCheckpoint::Read(std::string_view name,
                                             std::span<const int64_t> expected_shape) const {
  auto located = Locate(name);
  if (!located.ok()) return located.status();
  const auto [file, entry] = *located;
  if (Status s = CheckShape(name, *file, entry->shape, expected_shape); !s.ok()) return s;
  return file->Read(name);
}

Status SafetensorsCheckpoint::ReadBf16(std::string_view name,
                                       std::span<const int64_t> expected_shape,
                                       std::vector<uint16_t>* out) const {
  auto located = Locate(name);
  if (!located.ok()) return located.status();
  const auto [file, entry] = *located;
  if (Status s = CheckShape(name, *file, entry->shape, expected_shape); !s.ok()) return s;
  return file->ReadBf16(name, out);
}

Status WriteSafetensors(const std::string& path, std::span<const NamedTensor> tensors,
                        SafetensorsDtype dtype, const Json& metadata) {
  const uint64_t elem = dtype == SafetensorsDtype::kF32 ? 4 : 2;
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  std::set<std::string> seen;
  for (const NamedTensor& nt : tensors) {
    if (nt.tensor == nullptr)
      return Status::InvalidArgument("tensor " + Quote(nt.name) + " is null");
    if (nt.name == "__metadata__" || !seen.insert(nt.name).second) {
      return Status::InvalidArgument("tensor name " + Quote(nt.name) + " is reserved or repeated");
    }
    const Tensor& t = *nt.tensor;
    if (t.NumElements() != static_cast<int64_t>(t.data.size())) {
      return Status::InvalidArgument("tensor " + Quote(nt.name) + ": shape " +
                                     ShapeString(t.shape) + " does not match its " +
                                     std::to_string(t.data.size()) + " values");
    }
    const uint64_t begin = data.size();
    for (float v : t.data) {
      if (dtype == SafetensorsDtype::kF32) {
        const uint32_t b = std::bit_cast<uint32_t>(v);
        for (int k = 0; k < 4; ++k) data.push_back(static_cast<char>((b >> (8 * k)) & 0xff));
      } else {
        const uint16_t b = dtype == SafetensorsDtype::kF16 ? FloatToHalf(v) : FloatToBf16(v);
        data.push_back(static_cast<char>(b & 0xff));
        data.push_back(static_cast<char>(b >> 8));
      }
    }
    header[nt.name] = {{"dtype", SafetensorsDtypeName(dtype)},
                       {"shape", t.shape},
                       {"data_offsets", {begin, begin + t.data.size() * elem}}};
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return Status::InvalidArgument("cannot create " + path);
  const uint64_t n = h.size();
  for (int k = 0; k < 8; ++k) out.put(static_cast<char>((n >> (8 * k)) & 0xff));
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return Status::InvalidArgument("cannot write " + path);
  return Status::Ok();
}

}  // namespace pdpool::agent
