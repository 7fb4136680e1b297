// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping each tensor name to its dtype, shape
// and [begin, end) byte range, an optional "__metadata__" string map, then the raw
// little-endian tensor bytes. Used for model weights (Hugging Face model directories).
#ifndef PMDRL_COMMON_NN_SAFETENSORS_H_
#define PMDRL_COMMON_NN_SAFETENSORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes the tensors (any device; copied to contiguous CPU) in the given order, with
// metadata {"format": "pt"} as transformers requires. Dtypes: F32, F16, BF16, F64, I64,
// I32, I16, I8, U8, BOOL. Names must be unique and not "__metadata__". Writes path.tmp
// then renames, so a reader never sees a half-written file.
absl::Status SaveSafetensors(const NamedTensors& tensors, const std::string& path);

struct SafetensorsWriteOptions {
  // Floating-point tensors are written in this dtype (converted one tensor at a time, so
  // at most one converted tensor exists at once); others as they are. nullopt: as they are.
  std::optional<at::ScalarType> float_dtype;
  // Extra "__metadata__" entries besides {"format": "pt"}.
  std::map<std::string, std::string> metadata;
};
absl::Status SaveSafetensors(const NamedTensors& tensors, const std::string& path,
                             const SafetensorsWriteOptions& options);

// Bytes a tensor of this shape takes when written in `dtype`.
uint64_t SafetensorsBytes(const at::Tensor& tensor, at::ScalarType dtype);

// A safetensors file opened for reading one tensor at a time: Open parses and validates
// the header (as LoadSafetensors does) and keeps the file descriptor; no tensor data is
// read until asked for, so a caller can load a checkpoint while holding at most one
// tensor beyond its destination. Movable, not copyable; reads are positional (pread), so
// const methods may run from several threads.
class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range inside the data section
  };

  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // In file (offset) order.
  const std::vector<Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor as a new contiguous CPU tensor of the file's dtype.
  absl::StatusOr<at::Tensor> Read(const Entry& entry) const;
  // Reads the tensor into `dest` (same shape; any floating dtype and device when the file's
  // dtype is floating, converted as Tensor::copy_ does). When dest is a contiguous CPU
  // tensor of the file's dtype the bytes go straight into it; otherwise through one
  // temporary CPU tensor of this entry's size. Errors name the file and tensor.
  absl::Status ReadInto(const Entry& entry, at::Tensor& dest) const;

 private:
  SafetensorsFile() = default;
  absl::Status ReadBytes(const Entry& entry, void* out) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Reads every tensor as a contiguous CPU tensor of the file's dtype, in file (offset)
// order. Validates the header (JSON shape, known dtypes, byte ranges inside the file,
// not overlapping, and matching shape * element size); errors name the file and tensor.
absl::StatusOr<NamedTensors> LoadSafetensors(const std::string& path);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_SAFETENSORS_H_
