// The shape of a decoder-only policy model (Llama / Qwen2 / Qwen3), read from and written
// to a Hugging Face config.json. Torch-free so that every component can reason about a
// model (vocabulary size for validation, token ids for masking) without linking Torch.
#ifndef PMDRL_COMMON_MODEL_CONFIG_H_
#define PMDRL_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

// config.json "rope_scaling" (transformers 4) / "rope_parameters" (transformers 5). Only
// Llama 3's scheme is implemented ("rope_type": "llama3", as Llama 3.1 / 3.2 / 3.3 use);
// every other scaling type is refused when reading, since it changes the computation.
struct RopeScaling {
  std::string rope_type;  // "" (none: plain RoPE) or "llama3"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // 0: max_position_embeddings
};

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
  RopeScaling rope_scaling;
  // q/k/v bias (qwen2 always has it). As in transformers, llama and qwen3 also give o_proj a
  // bias when it is set; qwen2 never does.
  bool attention_bias = false;
  bool qk_norm = false;  // per-head RMSNorm on q and k (qwen3)
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

// Parses the text of a Hugging Face config.json. Missing optional fields take transformers'
// defaults (num_key_value_heads = num_attention_heads; qwen2 implies attention_bias, qwen3
// qk_norm); a list-valued eos_token_id (Llama 3) keeps its first entry. "rope_scaling" (or
// transformers 5's "rope_parameters", whose rope_theta wins over the top-level one) of type
// llama3 is read, "default" means none. Fields real Qwen2.5 / Qwen3 / Llama 3 configs carry
// that do not change the computation are accepted: sliding_window and max_window_layers
// when use_sliding_window is false, layer_types when every layer is "full_attention",
// mlp_bias false, pretraining_tp (it only slices the same matrix products), use_mrope
// false. Whatever would change the computation and is not implemented is an error naming
// the field: another rope type, sliding-window attention, mlp_bias true,
// partial_rotary_factor != 1, an activation other than silu. So is a config that fails
// ValidateModelConfig. Errors start with `origin` (a file name, or where the text came
// from); text that is not JSON is InvalidArgument "<origin>: not valid JSON: ...".
absl::StatusOr<ModelConfig> ParseModelConfigJson(std::string_view text,
                                                 std::string_view origin = "model config JSON");
// ParseModelConfigJson of a file, `origin` being its path; NotFound when it cannot be opened.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& config_json_path);

// The text of config.json with transformers' field names, including "architectures"
// (["LlamaForCausalLM"] / ["Qwen2ForCausalLM"] / ["Qwen3ForCausalLM"]) and "model_type",
// and "rope_scaling" in transformers 4's form (transformers 5 converts it on reading).
// InvalidArgument when the config fails ValidateModelConfig.
absl::StatusOr<std::string> ModelConfigToJson(const ModelConfig& config);
// Writes ModelConfigToJson's text to path.tmp and renames it to the path.
absl::Status WriteModelConfig(const ModelConfig& config, const std::string& config_json_path);

// Tokens the sampler never emits and the learner masks identically: pad, and bos when it
// differs from eos. (pad equal to eos is not masked: that would make stopping impossible.)
std::vector<int64_t> NeverSampledTokens(const ModelConfig& config);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_MODEL_CONFIG_H_
