// A Hugging Face model directory: config.json + model.safetensors (or shards listed in
// model.safetensors.index.json). Real Qwen2.5 / Qwen3 / Llama 3 checkpoints load as they
// are, and what SaveModelDir writes opens in transformers.
#ifndef PMDRL_COMMON_NN_MODEL_DIR_H_
#define PMDRL_COMMON_NN_MODEL_DIR_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/nn/model.h"

namespace pmdrl {

// How SaveModelDir writes the weights.
struct SaveOptions {
  at::ScalarType dtype = at::kFloat;  // kFloat, kBFloat16 or kHalf; also config.json's torch_dtype
  // Shard size limit, as transformers' max_shard_size (5 GB = 5e9 bytes by default): past
  // it, model-0000i-of-0000N.safetensors + model.safetensors.index.json. A tensor larger
  // than the limit gets a shard of its own.
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

// Creates `dir` (and parents) and writes config.json (torch_dtype float32) and a single
// model.safetensors in float32 (sharded past 5 GB). Same as SaveModelDir(model, dir, {}).
absl::Status SaveModelDir(CausalLM& model, const std::string& dir);

// Writes config.json (torch_dtype = options.dtype) and the weights in options.dtype:
// model.safetensors when they fit in one shard, else model-00001-of-0000N.safetensors ...
// and model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}), sharded
// greedily in parameter order as transformers does. A tied lm_head is not written (as
// transformers). Each file is written to a temporary and renamed, tensors converted one at
// a time; weight files of an earlier save in another layout are removed afterwards (the
// directory as a whole is not replaced atomically: save into a fresh one for that).
absl::Status SaveModelDir(CausalLM& model, const std::string& dir, const SaveOptions& options);

// Where and in what dtype LoadModelDir builds the model.
struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // kFloat, kBFloat16, or kHalf
  at::Device device = at::kCPU;
};

// Reads config.json and the weights (model.safetensors.index.json's shards when that
// file exists, else model.safetensors) into a float32 CPU model, whatever the file's dtype.
absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir);

// The same, building the parameters directly in options.dtype on options.device and
// reading the files tensor by tensor straight into them: the peak host memory is the
// model's parameters (when on the CPU) plus at most one tensor in its file dtype, never a
// second copy of the model. Every parameter must be present exactly once with its shape;
// "lm_head.weight" of a tied model and "*.rotary_emb.inv_freq" are ignored, any other
// unknown tensor is an error. Errors name the directory, file and tensor.
absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir, const LoadOptions& options);

// "float32" / "bfloat16" / "float16" <-> dtype (config.json's torch_dtype names).
absl::StatusOr<at::ScalarType> DtypeFromName(const std::string& name);
const char* DtypeName(at::ScalarType dtype);  // nullptr for other dtypes

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_MODEL_DIR_H_
