// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping each tensor name to its dtype, shape
// and [begin, end) byte range, an optional "__metadata__" string map, then the raw
// little-endian tensor bytes. Used for model weights (Hugging Face model directories).
#ifndef PMDRL_COMMON_NN_SAFETENSORS_H_
#define PMDRL_COMMON_NN_SAFETENSORS_H_

#include <ATen/ATen.h>

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

// Reads every tensor as a contiguous CPU tensor of the file's dtype, in file (offset)
// order. Validates the header (JSON shape, known dtypes, byte ranges inside the file,
// not overlapping, and matching shape * element size); errors name the file and tensor.
absl::StatusOr<NamedTensors> LoadSafetensors(const std::string& path);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_SAFETENSORS_H_
