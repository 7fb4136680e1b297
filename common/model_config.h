// The shape of a decoder-only policy model (Llama / Qwen2 / Qwen3), read from and written
// to a Hugging Face config.json. Torch-free so that every component can reason about a
// model (vocabulary size for validation, token ids for masking) without linking Torch.
#ifndef PMDRL_COMMON_MODEL_CONFIG_H_
#define PMDRL_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

// Field names and meanings follow Hugging Face transformers' LlamaConfig / Qwen2Config /
// Qwen3Config. Architecture invariants (checked by ValidateModelConfig): qwen2 always has
// q/k/v bias, qwen3 always has q/k norm, llama and qwen2 never have q/k norm -- because
// transformers would otherwise silently drop or randomly initialise those tensors.
struct ModelConfig {
  std::string architecture = "llama";  // llama | qwen2 | qwen3  (config.json "model_type")
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0,
          num_attention_heads = 0, num_key_value_heads = 0;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0;
  bool attention_bias = false;  // q/k/v bias (qwen2 has it)
  bool qk_norm = false;         // per-head RMSNorm on q and k (qwen3)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;  // -1: none
  std::string torch_dtype = "float32";

  // head_dim if set, else hidden_size / num_attention_heads.
  int64_t HeadDim() const;
};

// Sets the fields an architecture fixes (qwen2: attention_bias; qwen3: qk_norm; llama and
// qwen2: no qk_norm), for callers that build a config from an architecture name.
void ApplyArchitectureDefaults(ModelConfig* config);

// OK, or InvalidArgument whose message names the first bad field.
absl::Status ValidateModelConfig(const ModelConfig& config);

// Reads a Hugging Face config.json. Missing optional fields take transformers' defaults
// (num_key_value_heads = num_attention_heads; qwen2 implies attention_bias, qwen3 qk_norm);
// a list-valued eos_token_id (Llama 3) keeps its first entry. Unsupported features
// (rope_scaling, sliding window, an activation other than silu) are errors, as is a
// config that fails ValidateModelConfig.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& config_json_path);

// Writes config.json with transformers' field names, including "architectures"
// (["LlamaForCausalLM"] / ["Qwen2ForCausalLM"] / ["Qwen3ForCausalLM"]) and "model_type".
// Validates first; writes path.tmp and renames.
absl::Status WriteModelConfig(const ModelConfig& config, const std::string& config_json_path);

// Tokens the sampler never emits and the learner masks identically: pad, and bos when it
// differs from eos. (pad equal to eos is not masked: that would make stopping impossible.)
std::vector<int64_t> NeverSampledTokens(const ModelConfig& config);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_MODEL_CONFIG_H_
