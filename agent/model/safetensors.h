// Safetensors: reader (and a small writer) for Hugging Face's tensor file format: a u64
// little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets"},
// "__metadata__": {...}}, then the data, offsets relative to its start. BF16, F16 and F32 are
// read into float32, or into bf16 (ReadBf16: BF16 bytes as stored, the others rounded), one
// tensor at a time. A checkpoint is one file or a set of shards named by
// model.safetensors.index.json. Every malformed input is an error naming the file and, where
// there is one, the tensor. Objects are immutable after Open: const methods are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/model/weights.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

enum class SafetensorsDtype { kF32, kF16, kBF16 };

std::string_view SafetensorsDtypeName(SafetensorsDtype dtype);
// "F32", "F16", "BF16"; anything else is InvalidArgument.
StatusOr<SafetensorsDtype> ParseSafetensorsDtype(std::string_view name);

// Bit conversions. Half: IEEE binary16 including subnormals, infinities and NaN. Float → half
// and float → bf16 round to nearest even.
float HalfToFloat(uint16_t h);
float Bf16ToFloat(uint16_t b);
uint16_t FloatToHalf(float f);
uint16_t FloatToBf16(float f);

struct SafetensorsEntry {
  std::string dtype;  // as written: "BF16", "F32", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
};

// One .safetensors file. Open reads and checks the header (dtype sizes against data_offsets,
// offsets within the file); Read reads one tensor's bytes from disk.
class SafetensorsFile {
 public:
  static StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry, std::less<>>& entries() const { return entries_; }
  const Json& metadata() const { return metadata_; }
  bool Contains(std::string_view name) const { return entries_.count(name) != 0; }

  // The tensor as float32; NotFound when absent, InvalidArgument for a dtype other than
  // BF16/F16/F32 or a file changed since Open.
  StatusOr<Tensor> Read(std::string_view name) const;
  // The tensor as bf16 bits in *out (resized to its element count): BF16 bytes as stored, F16
  // and F32 rounded to nearest even. Same errors as Read.
  Status ReadBf16(std::string_view name, std::vector<uint16_t>* out) const;

 private:
  // The entry and its dtype, or Read's errors.
  StatusOr<std::pair<const SafetensorsEntry*, SafetensorsDtype>> Find(std::string_view name) const;
  // The tensor's bytes as stored into dst (e.end − e.begin bytes).
  Status ReadBytes(std::string_view name, const SafetensorsEntry& e, char* dst) const;

  std::string path_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry, std::less<>> entries_;
  Json metadata_;
};

// A checkpoint: a single file, or the shards of an index. Open accepts a directory (holding
// model.safetensors.index.json or model.safetensors), an index .json file, or a .safetensors
// file.
class SafetensorsCheckpoint {
 public:
  static StatusOr<SafetensorsCheckpoint> Open(const std::string& path);

  bool Contains(std::string_view name) const { return where_.count(name) != 0; }
  std::vector<std::string> TensorNames() const;
  // The file or index the checkpoint was opened from (for messages).
  const std::string& source() const { return source_; }

  StatusOr<Tensor> Read(std::string_view name) const;
  // Also checks the shape: "shape [a, b], expected [c, d]".
  StatusOr<Tensor> Read(std::string_view name, std::span<const int64_t> expected_shape) const;
  // SafetensorsFile::ReadBf16, after checking the shape as Read does (before reading).
  Status ReadBf16(std::string_view name, std::span<const int64_t> expected_shape,
                  std::vector<uint16_t>* out) const;

 private:
  // The file holding `name` and the name's entry there, or NotFound.
  StatusOr<std::pair<const SafetensorsFile*, const SafetensorsEntry*>> Locate(
      std::string_view name) const;

  std::string source_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor → index into files_
};

struct NamedTensor {
  std::string name;
  const Tensor* tensor = nullptr;
};

// Writes `tensors` converted to `dtype` (header padded to 8 bytes, as the reference writer).
Status WriteSafetensors(const std::string& path, std::span<const NamedTensor> tensors,
                        SafetensorsDtype dtype, const Json& metadata = Json::object());

// "[2, 3]"
std::string ShapeString(std::span<const int64_t> shape);

}  // namespace pdpool::agent
