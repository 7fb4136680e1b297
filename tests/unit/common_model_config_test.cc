// ModelConfig: config.json reading (real Qwen2.5 / Qwen3 / Llama 3 configs, transformers 4
// and 5 layouts, rope scaling), writing, validation. Torch-free like the code it tests.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/model_config.h"
#include "nlohmann/json.hpp"
#include "tests/tiny_model_config.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) { return FreshTempDir("model_config_test", name); }

absl::StatusOr<ModelConfig> ReadText(const std::string& dir, const std::string& text) {
  const std::string path = dir + "/config.json";
  std::ofstream(path) << text;
  return ReadModelConfig(path);
}

TEST(ModelConfigTest, JsonRoundTrip) {
  const std::string dir = TempDir("config");
  ModelConfig c = TinyModelConfig("qwen3", /*tied=*/true);
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 1e6;
  c.max_position_embeddings = 40960;
  c.torch_dtype = "bfloat16";
  c.pad_token_id = -1;
  ASSERT_TRUE(WriteModelConfig(c, dir + "/config.json").ok());
  auto r = ReadModelConfig(dir + "/config.json");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->architecture, "qwen3");
  EXPECT_EQ(r->vocab_size, 17);
  EXPECT_EQ(r->hidden_size, 32);
  EXPECT_EQ(r->intermediate_size, 48);
  EXPECT_EQ(r->num_hidden_layers, 2);
  EXPECT_EQ(r->num_attention_heads, 4);
  EXPECT_EQ(r->num_key_value_heads, 2);
  EXPECT_EQ(r->head_dim, 16);
  EXPECT_EQ(r->max_position_embeddings, 40960);
  EXPECT_EQ(r->rms_norm_eps, 1e-5);
  EXPECT_EQ(r->rope_theta, 1e6);
  EXPECT_FALSE(r->attention_bias);
  EXPECT_TRUE(r->qk_norm);
  EXPECT_TRUE(r->tie_word_embeddings);
  EXPECT_EQ(r->bos_token_id, 1);
  EXPECT_EQ(r->eos_token_id, 2);
  EXPECT_EQ(r->pad_token_id, -1);
  EXPECT_EQ(r->torch_dtype, "bfloat16");
  std::ifstream in(dir + "/config.json");
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen3ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen3");
  EXPECT_TRUE(j["pad_token_id"].is_null());

  for (const char* arch : {"llama", "qwen2"}) {
    ModelConfig d = TinyModelConfig(arch);
    ASSERT_TRUE(WriteModelConfig(d, dir + "/config.json").ok());
    auto rd = ReadModelConfig(dir + "/config.json");
    ASSERT_TRUE(rd.ok());
    EXPECT_EQ(rd->architecture, arch);
    EXPECT_EQ(rd->attention_bias, std::string(arch) == "qwen2");
    EXPECT_FALSE(rd->qk_norm);
    std::ifstream in2(dir + "/config.json");
    auto j2 = nlohmann::json::parse(in2);
    EXPECT_EQ(j2["architectures"][0],
              std::string(arch) == "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM");
  }
  fs::remove_all(dir);
}

// The string variants: what the coordinator sends actors at registration, no files.
TEST(ModelConfigTest, StringRoundTrip) {
  ModelConfig c = TinyModelConfig("qwen3", /*tied=*/true);
  c.rope_theta = 5e5;
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.high_freq_factor = 2.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  c.torch_dtype = "bfloat16";
  c.pad_token_id = -1;
  absl::StatusOr<std::string> text = ModelConfigToJson(c);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(nlohmann::json::parse(*text)["architectures"][0], "Qwen3ForCausalLM");
  absl::StatusOr<ModelConfig> r = ParseModelConfigJson(*text);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->architecture, "qwen3");
  EXPECT_EQ(r->vocab_size, c.vocab_size);
  EXPECT_EQ(r->hidden_size, c.hidden_size);
  EXPECT_EQ(r->num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(r->head_dim, 16);
  EXPECT_TRUE(r->qk_norm);
  EXPECT_TRUE(r->tie_word_embeddings);
  EXPECT_EQ(r->rope_theta, 5e5);
  EXPECT_EQ(r->rope_scaling.rope_type, "llama3");
  EXPECT_EQ(r->rope_scaling.factor, 8.0);
  EXPECT_EQ(r->rope_scaling.high_freq_factor, 2.0);
  EXPECT_EQ(r->rope_scaling.original_max_position_embeddings, 32);
  EXPECT_EQ(r->torch_dtype, "bfloat16");
  EXPECT_EQ(r->pad_token_id, -1);
  // Writing the parsed config again gives the same text; the file is that text.
  EXPECT_EQ(*ModelConfigToJson(*r), *text);
  const std::string dir = TempDir("string");
  ASSERT_TRUE(WriteModelConfig(c, dir + "/config.json").ok());
  std::ifstream in(dir + "/config.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), *text);
  fs::remove_all(dir);

  // An invalid config is refused before any text is made, naming the field.
  ModelConfig bad = c;
  bad.num_key_value_heads = 3;
  absl::StatusOr<std::string> refused = ModelConfigToJson(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("num_key_value_heads"), std::string::npos)
      << refused.status();
}

TEST(ModelConfigTest, MalformedStringNamesItsOrigin) {
  absl::StatusOr<ModelConfig> truncated =
      ParseModelConfigJson(R"({"model_type": "llama", "vocab_size": )", "from the coordinator");
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StartsWith(truncated.status().message(), "from the coordinator: not valid JSON: "))
      << truncated.status();
  absl::StatusOr<ModelConfig> empty = ParseModelConfigJson("");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("not valid JSON"), std::string::npos) << empty.status();
  absl::StatusOr<ModelConfig> list = ParseModelConfigJson("[1, 2]", "x");
  ASSERT_FALSE(list.ok());
  EXPECT_EQ(list.status().message(), "x: not a JSON object");
  // Well-formed JSON with a bad field: the origin and the field.
  absl::StatusOr<ModelConfig> field = ParseModelConfigJson(
      R"({"model_type": "llama", "vocab_size": "many", "hidden_size": 64})", "sent");
  ASSERT_FALSE(field.ok());
  EXPECT_TRUE(absl::StartsWith(field.status().message(), "sent: ")) << field.status();
  EXPECT_NE(field.status().message().find("vocab_size"), std::string::npos) << field.status();
}

TEST(ModelConfigTest, ReadsRealWorldConfigs) {
  const std::string dir = TempDir("config_real");
  // Abridged Qwen2.5-0.5B-Instruct config: no attention_bias field (Qwen2 implies it).
  std::ofstream(dir + "/qwen.json") << R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
    "vocab_size": 151936})";
  auto q = ReadModelConfig(dir + "/qwen.json");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->attention_bias);
  EXPECT_EQ(q->HeadDim(), 64);
  EXPECT_EQ(q->pad_token_id, -1);
  EXPECT_TRUE(q->tie_word_embeddings);
  // Llama 3 style: eos list, no num_key_value_heads -> defaults to the head count.
  std::ofstream(dir + "/llama.json") << R"({"model_type": "llama", "vocab_size": 300,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "bos_token_id": 1, "eos_token_id": [2, 3], "rope_scaling": null})";
  auto l = ReadModelConfig(dir + "/llama.json");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->eos_token_id, 2);
  EXPECT_EQ(l->num_key_value_heads, 4);
  EXPECT_FALSE(l->tie_word_embeddings);

  auto expect_error = [&](const std::string& text, const std::string& field) {
    std::ofstream(dir + "/bad.json") << text;
    auto r = ReadModelConfig(dir + "/bad.json");
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  const std::string base = R"("model_type": "llama", "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4)";
  expect_error("{" + base + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})",
               "low_freq_factor");  // llama3 without its required fields
  expect_error("{" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
    "original_max_position_embeddings": 32768}})",
               "rope_scaling");
  expect_error("{" + base + R"(, "rope_scaling": {"type": "linear", "factor": 2.0}})", "linear");
  expect_error("{" + base + R"(, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})",
               "rope_parameters");
  expect_error("{" + base + R"(, "rope_scaling": [1, 2]})", "rope_scaling");
  expect_error("{" + base + R"(, "use_sliding_window": true, "sliding_window": 4096})",
               "use_sliding_window");
  expect_error("{" + base + R"(, "layer_types": ["full_attention", "sliding_attention"]})",
               "layer_types");
  expect_error("{" + base + R"(, "mlp_bias": true})", "mlp_bias");
  expect_error("{" + base + R"(, "partial_rotary_factor": 0.5})", "partial_rotary_factor");
  expect_error("{" + base + R"(, "rope_parameters": {"rope_type": "default",
    "partial_rotary_factor": 0.5}})",
               "partial_rotary_factor");
  expect_error("{" + base + R"(, "hidden_act": "gelu"})", "hidden_act");
  expect_error("{" + base + R"(, "num_key_value_heads": 3})", "num_key_value_heads");
  expect_error("{" + base + R"(, "vocab_size": "many"})", "vocab_size");
  expect_error("{" + base + R"(, "pad_token_id": 300})", "pad_token_id");
  expect_error(R"({"model_type": "gpt2", "vocab_size": 3})", "model_type");
  expect_error("{" + base, "JSON");
  EXPECT_EQ(ReadModelConfig(dir + "/none.json").status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(dir);
}

TEST(ModelConfigTest, ValidationNamesTheField) {
  auto expect_field = [](ModelConfig c, const std::string& field) {
    absl::Status s = ValidateModelConfig(c);
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  ModelConfig ok = TinyModelConfig("llama");
  EXPECT_TRUE(ValidateModelConfig(ok).ok());
  ModelConfig c = ok;
  c.vocab_size = 0;
  expect_field(c, "vocab_size");
  c = ok;
  c.hidden_size = 30;
  expect_field(c, "hidden_size");  // 30 % 4 heads
  c = ok;
  c.head_dim = 7;
  expect_field(c, "head_dim");
  c = ok;
  c.rms_norm_eps = 0;
  expect_field(c, "rms_norm_eps");
  c = ok;
  c.architecture = "qwen2";
  expect_field(c, "attention_bias");
  c = ok;
  c.qk_norm = true;
  expect_field(c, "qk_norm");
  c = ok;
  c.architecture = "qwen3";
  expect_field(c, "qk_norm");
  c = ok;
  c.eos_token_id = -5;
  expect_field(c, "eos_token_id");
  c = ok;
  c.torch_dtype = "int8";
  expect_field(c, "torch_dtype");
}

TEST(ModelConfigTest, NeverSampledTokens) {
  ModelConfig c = TinyModelConfig("llama");  // pad 0, bos 1, eos 2
  EXPECT_EQ(NeverSampledTokens(c), (std::vector<int64_t>{0, 1}));
  c.bos_token_id = 2;  // bos == eos (Qwen): only pad
  EXPECT_EQ(NeverSampledTokens(c), (std::vector<int64_t>{0}));
  c.pad_token_id = 2;  // pad == eos: masking it would make stopping impossible
  EXPECT_TRUE(NeverSampledTokens(c).empty());
  c.pad_token_id = -1;
  c.bos_token_id = -1;
  EXPECT_TRUE(NeverSampledTokens(c).empty());
}

// The config.json files of the real checkpoints this project targets, verbatim as
// published (Hugging Face Hub, transformers 4.4x era).
TEST(ModelConfigTest, ReadsPublishedCheckpointConfigs) {
  const std::string dir = TempDir("published");
  auto qwen25 = ReadText(dir, R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1", "use_cache": true, "use_mrope": false,
  "use_sliding_window": false, "vocab_size": 151936})");
  ASSERT_TRUE(qwen25.ok()) << qwen25.status();
  EXPECT_EQ(qwen25->architecture, "qwen2");
  EXPECT_TRUE(qwen25->attention_bias);
  EXPECT_EQ(qwen25->HeadDim(), 64);
  EXPECT_EQ(qwen25->rope_theta, 1e6);
  EXPECT_TRUE(qwen25->rope_scaling.rope_type.empty());
  EXPECT_EQ(qwen25->torch_dtype, "bfloat16");

  auto qwen3 = ReadText(dir, R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
  "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_FALSE(qwen3->attention_bias);
  EXPECT_EQ(qwen3->HeadDim(), 128);   // not hidden / heads = 64
  EXPECT_EQ(qwen3->rope_theta, 1e6);  // an integer in the file

  auto llama = ReadText(dir, R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->eos_token_id, 128001);
  EXPECT_EQ(llama->rope_theta, 500000.0);
  EXPECT_EQ(llama->rope_scaling.rope_type, "llama3");
  EXPECT_EQ(llama->rope_scaling.factor, 32.0);
  EXPECT_EQ(llama->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(llama->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(llama->rope_scaling.original_max_position_embeddings, 8192);
  fs::remove_all(dir);
}

// transformers 5 writes "dtype", moves rope_theta into "rope_parameters" (with rope_type
// "default" when there is no scaling) and adds "layer_types".
TEST(ModelConfigTest, ReadsTransformers5Layout) {
  const std::string dir = TempDir("v5");
  auto plain = ReadText(dir, R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "dtype": "float32",
    "layer_types": ["full_attention", "full_attention"], "max_window_layers": 2,
    "sliding_window": null, "use_sliding_window": false,
    "rope_parameters": {"rope_theta": 123456.0, "rope_type": "default"}})");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->rope_theta, 123456.0);
  EXPECT_TRUE(plain->rope_scaling.rope_type.empty());
  EXPECT_EQ(plain->torch_dtype, "float32");

  auto scaled = ReadText(dir, R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 4096, "rope_theta": 1.0,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0}})");
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_EQ(scaled->rope_theta, 500000.0);  // rope_parameters wins
  EXPECT_EQ(scaled->rope_scaling.rope_type, "llama3");
  EXPECT_EQ(scaled->rope_scaling.factor, 8.0);
  EXPECT_EQ(scaled->rope_scaling.original_max_position_embeddings, 0);  // = max_position

  // Keyed by layer type, one type only.
  auto keyed = ReadText(dir, R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "rope_parameters": {"full_attention": {"rope_theta": 7.0, "rope_type": "default"}}})");
  ASSERT_TRUE(keyed.ok()) << keyed.status();
  EXPECT_EQ(keyed->rope_theta, 7.0);
  fs::remove_all(dir);
}

TEST(ModelConfigTest, RopeScalingRoundTripsAndValidates) {
  const std::string dir = TempDir("rope");
  ModelConfig c = TinyModelConfig("llama");
  c.rope_theta = 500000.0;
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 32.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  ASSERT_TRUE(WriteModelConfig(c, dir + "/config.json").ok());
  {
    std::ifstream in(dir + "/config.json");
    auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
    EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 16);
  }
  auto r = ReadModelConfig(dir + "/config.json");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rope_scaling.rope_type, "llama3");
  EXPECT_EQ(r->rope_scaling.factor, 32.0);
  EXPECT_EQ(r->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(r->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(r->rope_scaling.original_max_position_embeddings, 16);

  // Without scaling, rope_scaling is written as null (transformers' default).
  ASSERT_TRUE(WriteModelConfig(TinyModelConfig("qwen2"), dir + "/config.json").ok());
  {
    std::ifstream in(dir + "/config.json");
    auto j = nlohmann::json::parse(in);
    EXPECT_TRUE(j["rope_scaling"].is_null());
    EXPECT_EQ(j["use_sliding_window"], false);
  }

  auto expect_field = [](ModelConfig bad, const std::string& field) {
    absl::Status s = ValidateModelConfig(bad);
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  ModelConfig bad = c;
  bad.rope_scaling.rope_type = "yarn";
  expect_field(bad, "rope_scaling");
  bad = c;
  bad.rope_scaling.factor = 0;
  expect_field(bad, "rope_scaling");
  bad = c;
  bad.rope_scaling.high_freq_factor = 1.0;  // == low
  expect_field(bad, "rope_scaling");
  EXPECT_FALSE(WriteModelConfig(bad, dir + "/config.json").ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pmdrl
