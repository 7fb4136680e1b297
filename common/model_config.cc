#include "common/model_config.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("model config: ", field, " ", what));
}

// Reads j[key] into *out if present and not null; errors name the file and the field.
template <typename T>
absl::Status Get(const json& j, const char* key, const std::string& path, T* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  try {
    if constexpr (std::is_same_v<T, int64_t>) {
      if (!it->is_number_integer()) throw std::runtime_error("not an integer");
    } else if constexpr (std::is_same_v<T, double>) {
      if (!it->is_number()) throw std::runtime_error("not a number");
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw std::runtime_error("not a boolean");
    } else {
      if (!it->is_string()) throw std::runtime_error("not a string");
    }
    *out = it->get<T>();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field \"", key, "\": ", e.what(), " (", it->dump(), ")"));
  }
  return absl::OkStatus();
}

// Token ids may be an integer, null, or (eos in Llama 3) a list of integers.
absl::Status GetTokenId(const json& j, const char* key, const std::string& path, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_array()) {
    if (it->empty()) return absl::OkStatus();
    if (!(*it)[0].is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": field \"", key, "\": not an integer list"));
    }
    *out = (*it)[0].get<int64_t>();
    return absl::OkStatus();
  }
  return Get(j, key, path, out);
}

const char* ArchitectureClass(const std::string& arch) {
  if (arch == "qwen2") return "Qwen2ForCausalLM";
  if (arch == "qwen3") return "Qwen3ForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

int64_t ModelConfig::HeadDim() const {
  if (head_dim > 0) return head_dim;
  return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0;
}

void ApplyArchitectureDefaults(ModelConfig* config) {
  if (config->architecture == "qwen2") config->attention_bias = true;
  config->qk_norm = config->architecture == "qwen3";
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  if (c.architecture != "llama" && c.architecture != "qwen2" && c.architecture != "qwen3") {
    return Invalid("model_type",
                   absl::StrCat("\"", c.architecture, "\" is not one of llama, qwen2, qwen3"));
  }
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [name, value] : positive) {
    if (value <= 0) return Invalid(name, absl::StrCat("must be > 0, got ", value));
  }
  if (c.head_dim < 0) return Invalid("head_dim", absl::StrCat("must be >= 0, got ", c.head_dim));
  if (c.head_dim == 0 && c.hidden_size % c.num_attention_heads != 0) {
    return Invalid("hidden_size",
                   absl::StrCat(c.hidden_size, " is not divisible by num_attention_heads ",
                                c.num_attention_heads, " (and head_dim is unset)"));
  }
  if (c.HeadDim() % 2 != 0) {
    return Invalid("head_dim", absl::StrCat("must be even for RoPE, got ", c.HeadDim()));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid("num_key_value_heads",
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads ",
                                c.num_attention_heads));
  }
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    return Invalid("rms_norm_eps", absl::StrCat("must be finite and > 0, got ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    return Invalid("rope_theta", absl::StrCat("must be finite and > 0, got ", c.rope_theta));
  }
  if (c.architecture == "qwen2" && !c.attention_bias) {
    return Invalid("attention_bias", "must be true for qwen2 (Qwen2 always has q/k/v bias)");
  }
  if (c.architecture == "qwen3" && !c.qk_norm) {
    return Invalid("qk_norm", "must be true for qwen3 (Qwen3 always has q/k norm)");
  }
  if (c.architecture != "qwen3" && c.qk_norm) {
    return Invalid("qk_norm", absl::StrCat("is only supported by qwen3, not ", c.architecture));
  }
  const std::pair<const char*, int64_t> tokens[] = {{"bos_token_id", c.bos_token_id},
                                                    {"eos_token_id", c.eos_token_id},
                                                    {"pad_token_id", c.pad_token_id}};
  for (const auto& [name, value] : tokens) {
    if (value < -1 || value >= c.vocab_size) {
      return Invalid(name, absl::StrCat(value, " is outside [0, vocab_size=", c.vocab_size,
                                        ") (use -1 for none)"));
    }
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16") {
    return Invalid("torch_dtype", absl::StrCat("\"", c.torch_dtype,
                                               "\" is not one of float32, bfloat16, float16"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));

  ModelConfig c;
  c.torch_dtype = "float32";
  c.tie_word_embeddings = false;  // LlamaConfig / Qwen2Config / Qwen3Config default
  absl::Status s;
#define PMDRL_GET(key, field) \
  if (s = Get(j, key, path, &c.field); !s.ok()) return s;
  PMDRL_GET("model_type", architecture);
  PMDRL_GET("vocab_size", vocab_size);
  PMDRL_GET("hidden_size", hidden_size);
  PMDRL_GET("intermediate_size", intermediate_size);
  PMDRL_GET("num_hidden_layers", num_hidden_layers);
  PMDRL_GET("num_attention_heads", num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  PMDRL_GET("num_key_value_heads", num_key_value_heads);
  PMDRL_GET("head_dim", head_dim);
  PMDRL_GET("max_position_embeddings", max_position_embeddings);
  PMDRL_GET("rms_norm_eps", rms_norm_eps);
  PMDRL_GET("rope_theta", rope_theta);
  PMDRL_GET("attention_bias", attention_bias);
  PMDRL_GET("tie_word_embeddings", tie_word_embeddings);
  PMDRL_GET("dtype", torch_dtype);  // newer transformers
  PMDRL_GET("torch_dtype", torch_dtype);
#undef PMDRL_GET
  if (s = GetTokenId(j, "bos_token_id", path, &c.bos_token_id); !s.ok()) return s;
  if (s = GetTokenId(j, "eos_token_id", path, &c.eos_token_id); !s.ok()) return s;
  if (s = GetTokenId(j, "pad_token_id", path, &c.pad_token_id); !s.ok()) return s;
  if (c.architecture == "qwen2") c.attention_bias = true;
  c.qk_norm = c.architecture == "qwen3";

  // Features that would change the computation but that this model does not implement:
  // refuse rather than load a checkpoint that silently computes something else.
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return absl::UnimplementedError(
        absl::StrCat(path, ": field \"rope_scaling\" is not supported (", it->dump(), ")"));
  }
  if (auto it = j.find("use_sliding_window");
      it != j.end() && it->is_boolean() && it->get<bool>()) {
    return absl::UnimplementedError(absl::StrCat(
        path, ": field \"use_sliding_window\": sliding-window attention is not supported"));
  }
  std::string act = "silu";
  if (s = Get(j, "hidden_act", path, &act); !s.ok()) return s;
  if (act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(path, ": field \"hidden_act\": \"", act, "\" is not supported (only silu)"));
  }
  if (s = ValidateModelConfig(c); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  }
  return c;
}

absl::Status WriteModelConfig(const ModelConfig& c, const std::string& path) {
  if (absl::Status s = ValidateModelConfig(c); !s.ok()) return s;
  auto token = [](int64_t id) { return id < 0 ? json(nullptr) : json(id); };
  json j = {
      {"architectures", json::array({ArchitectureClass(c.architecture)})},
      {"model_type", c.architecture},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.HeadDim()},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"attention_bias", c.attention_bias},
      {"attention_dropout", 0.0},
      {"hidden_act", "silu"},
      {"initializer_range", 0.02},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", token(c.bos_token_id)},
      {"eos_token_id", token(c.eos_token_id)},
      {"pad_token_id", token(c.pad_token_id)},
      {"torch_dtype", c.torch_dtype},
      {"use_cache", true},
  };
  if (c.architecture != "llama") j["use_sliding_window"] = false;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write model config ", tmp));
    out << j.dump(2) << "\n";
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write model config ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

std::vector<int64_t> NeverSampledTokens(const ModelConfig& c) {
  std::vector<int64_t> out;
  if (c.pad_token_id >= 0 && c.pad_token_id != c.eos_token_id) out.push_back(c.pad_token_id);
  if (c.bos_token_id >= 0 && c.bos_token_id != c.eos_token_id && c.bos_token_id != c.pad_token_id) {
    out.push_back(c.bos_token_id);
  }
  return out;
}

}  // namespace pmdrl
