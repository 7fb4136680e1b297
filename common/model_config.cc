#include "common/model_config.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>

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

// The dict that describes RoPE: transformers 4's "rope_scaling" or transformers 5's
// "rope_parameters" (which may also be keyed by layer type, {"full_attention": {...}}).
// Null when neither is present.
absl::StatusOr<const json*> RopeDict(const json& j, const std::string& path, std::string* field) {
  // As transformers 5 does, a non-null rope_scaling wins over rope_parameters.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    *field = key;
    if (!it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": field \"", key, "\": not an object (", it->dump(), ")"));
    }
    if (auto full = it->find("full_attention"); full != it->end()) {
      for (auto e = it->begin(); e != it->end(); ++e) {
        if (e.key() != "full_attention" && e.value() != *full) {
          return absl::UnimplementedError(absl::StrCat(path, ": field \"", key,
                                                       "\": per-layer-type RoPE is not supported (",
                                                       it->dump(), ")"));
        }
      }
      return &*full;
    }
    return &*it;
  }
  return nullptr;
}

// Reads rope_theta (also from inside the rope dict, where transformers 5 puts it) and the
// Llama 3 scaling parameters; any scaling other than llama3 is refused.
absl::Status ReadRope(const json& j, const std::string& path, ModelConfig* c) {
  std::string field;
  absl::StatusOr<const json*> dict = RopeDict(j, path, &field);
  if (!dict.ok()) return dict.status();
  if (*dict == nullptr) return absl::OkStatus();
  const json& d = **dict;
  const std::string where = path + " (" + field + ")";
  absl::Status s;
  if (s = Get(d, "rope_theta", where, &c->rope_theta); !s.ok()) return s;
  double partial = 1.0;
  if (s = Get(d, "partial_rotary_factor", where, &partial); !s.ok()) return s;
  if (partial != 1.0) {
    return absl::UnimplementedError(absl::StrCat(path, ": field \"", field,
                                                 "\": partial_rotary_factor ", partial,
                                                 " is not supported (only 1)"));
  }
  std::string type = "default";
  if (s = Get(d, "type", where, &type); !s.ok()) return s;  // transformers < 4.43
  if (s = Get(d, "rope_type", where, &type); !s.ok()) return s;
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat(path, ": field \"", field, "\": rope type \"", type,
                     "\" is not supported (only llama3 and default): ", d.dump()));
  }
  RopeScaling r;
  r.rope_type = "llama3";
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor"}) {
    if (!d.contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": field \"", field, "\": llama3 needs \"", key, "\""));
    }
  }
  if (s = Get(d, "factor", where, &r.factor); !s.ok()) return s;
  if (s = Get(d, "low_freq_factor", where, &r.low_freq_factor); !s.ok()) return s;
  if (s = Get(d, "high_freq_factor", where, &r.high_freq_factor); !s.ok()) return s;
  // transformers 5 defaults it to max_position_embeddings; 0 here means the same.
  if (s = Get(d, "original_max_position_embeddings", where, &r.original_max_position_embeddings);
      !s.ok()) {
    return s;
  }
  c->rope_scaling = r;
  return absl::OkStatus();
}

// Fields that real checkpoints carry and that would change the computation if set: OK
// when they have their harmless value, else Unimplemented naming the field.
absl::Status CheckUnsupported(const json& j, const std::string& path) {
  auto unsupported = [&path](const char* field, const std::string& why) {
    return absl::UnimplementedError(absl::StrCat(path, ": field \"", field, "\": ", why));
  };
  // sliding_window and max_window_layers only matter when use_sliding_window is true
  // (Qwen2.5 ships "sliding_window": 32768 with "use_sliding_window": false); transformers
  // ignores them otherwise.
  if (auto it = j.find("use_sliding_window");
      it != j.end() && it->is_boolean() && it->get<bool>()) {
    return unsupported("use_sliding_window", "sliding-window attention is not supported");
  }
  // transformers 5 writes layer_types; anything but full attention is a sliding window.
  if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return unsupported("layer_types", "not a list");
    for (const json& t : *it) {
      if (t != "full_attention") {
        return unsupported("layer_types", absl::StrCat("layer type ", t.dump(),
                                                       " is not supported (only "
                                                       "full_attention)"));
      }
    }
  }
  if (auto it = j.find("mlp_bias"); it != j.end() && it->is_boolean() && it->get<bool>()) {
    return unsupported("mlp_bias", "MLP biases are not supported");
  }
  if (auto it = j.find("use_mrope"); it != j.end() && it->is_boolean() && it->get<bool>()) {
    return unsupported("use_mrope", "multimodal RoPE is not supported");
  }
  if (auto it = j.find("partial_rotary_factor");
      it != j.end() && it->is_number() && it->get<double>() != 1.0) {
    return unsupported("partial_rotary_factor", "only 1 is supported");
  }
  return absl::OkStatus();
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
  if (const RopeScaling& r = c.rope_scaling; !r.rope_type.empty()) {
    if (r.rope_type != "llama3") {
      return Invalid("rope_scaling",
                     absl::StrCat("type \"", r.rope_type, "\" is not supported (only llama3)"));
    }
    if (!(r.factor > 0) || !std::isfinite(r.factor)) {
      return Invalid("rope_scaling", absl::StrCat("factor must be finite and > 0, got ", r.factor));
    }
    if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) ||
        !std::isfinite(r.high_freq_factor)) {
      return Invalid("rope_scaling",
                     absl::StrCat("needs 0 < low_freq_factor < high_freq_factor, got ",
                                  r.low_freq_factor, " and ", r.high_freq_factor));
    }
    if (r.original_max_position_embeddings < 0) {
      return Invalid("rope_scaling",
                     absl::StrCat("original_max_position_embeddings must be >= 0, got ",
                                  r.original_max_position_embeddings));
    }
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
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read model config ", path));
  return ParseModelConfigJson(text, path);
}

absl::StatusOr<ModelConfig> ParseModelConfigJson(std::string_view text, std::string_view origin) {
  const std::string path(origin);
  json j;
  try {
    j = json::parse(text);
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

  if (s = ReadRope(j, path, &c); !s.ok()) return s;
  if (s = CheckUnsupported(j, path); !s.ok()) return s;
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

absl::StatusOr<std::string> ModelConfigToJson(const ModelConfig& c) {
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
  if (c.rope_scaling.rope_type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    const RopeScaling& r = c.rope_scaling;
    j["rope_scaling"] = {
        {"rope_type", r.rope_type},
        {"factor", r.factor},
        {"low_freq_factor", r.low_freq_factor},
        {"high_freq_factor", r.high_freq_factor},
        // transformers 4 requires it: write the effective value.
        {"original_max_position_embeddings", r.original_max_position_embeddings > 0
                                                 ? r.original_max_position_embeddings
                                                 : c.max_position_embeddings},
    };
  }
  return j.dump(2) + "\n";
}

absl::Status WriteModelConfig(const ModelConfig& c, const std::string& path) {
  absl::StatusOr<std::string> text = ModelConfigToJson(c);
  if (!text.ok()) return text.status();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write model config ", tmp));
    out << *text;
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
