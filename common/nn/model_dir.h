// A Hugging Face model directory: config.json + model.safetensors (or shards listed in
// model.safetensors.index.json). Real Qwen2.5 / Qwen3 / Llama 3 checkpoints load as they
// are, and what SaveModelDir writes opens in transformers.
#ifndef PMDRL_COMMON_NN_MODEL_DIR_H_
#define PMDRL_COMMON_NN_MODEL_DIR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/nn/model.h"

namespace pmdrl {

// Creates `dir` (and parents) and writes config.json (torch_dtype float32) and a single
// model.safetensors in float32. Each file is written to a temporary and renamed.
absl::Status SaveModelDir(CausalLM& model, const std::string& dir);

// Reads config.json and the weights (model.safetensors.index.json's shards when that
// file exists, else model.safetensors). The model's parameters are float32 on the CPU
// whatever the file's dtype; move or cast it afterwards as needed.
absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_MODEL_DIR_H_
