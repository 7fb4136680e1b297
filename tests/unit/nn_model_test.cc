// The policy model, its file formats (config.json, safetensors, model directories) and
// the sampling log-prob definition.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "common/nn/safetensors.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

ModelConfig TinyConfig(const std::string& arch, bool tied = false) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 17;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;             // grouped-query
  if (arch == "qwen3") c.head_dim = 16;  // != hidden/heads, as in real Qwen3
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.pad_token_id = 0;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  ApplyArchitectureDefaults(&c);
  return c;
}

std::string TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() /
               ("pmdrl_nn_model_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::vector<std::string> Names(CausalLM& model) {
  std::vector<std::string> out;
  for (auto& [name, t] : NamedWeights(model)) out.push_back(name);
  return out;
}

std::vector<std::string> ExpectedNames(const ModelConfig& c) {
  std::vector<std::string> out = {"model.embed_tokens.weight"};
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* proj : {"q", "k", "v"}) {
      out.push_back(p + "self_attn." + proj + "_proj.weight");
      if (c.attention_bias) out.push_back(p + "self_attn." + proj + "_proj.bias");
    }
    out.push_back(p + "self_attn.o_proj.weight");
    if (c.qk_norm) {
      out.push_back(p + "self_attn.q_norm.weight");
      out.push_back(p + "self_attn.k_norm.weight");
    }
    out.push_back(p + "mlp.gate_proj.weight");
    out.push_back(p + "mlp.up_proj.weight");
    out.push_back(p + "mlp.down_proj.weight");
    out.push_back(p + "input_layernorm.weight");
    out.push_back(p + "post_attention_layernorm.weight");
  }
  out.push_back("model.norm.weight");
  if (!c.tie_word_embeddings) out.push_back("lm_head.weight");
  return out;
}

at::Tensor Param(CausalLM& model, const std::string& name) {
  for (auto& [n, t] : NamedWeights(model)) {
    if (n == name) return t;
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

// ---------------------------------------------------------------- names and init

TEST(ModelTest, ParameterNamesMatchHuggingFace) {
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    for (bool tied : {false, true}) {
      SCOPED_TRACE(std::string(arch) + (tied ? " tied" : ""));
      ModelConfig c = TinyConfig(arch, tied);
      CausalLM model(c);
      EXPECT_EQ(Names(model), ExpectedNames(c));
    }
  }
}

TEST(ModelTest, ShapesFollowConfig) {
  ModelConfig c = TinyConfig("qwen3");
  CausalLM model(c);
  EXPECT_EQ(Param(model, "model.layers.0.self_attn.q_proj.weight").sizes(),
            (at::IntArrayRef{4 * 16, 32}));
  EXPECT_EQ(Param(model, "model.layers.0.self_attn.k_proj.weight").sizes(),
            (at::IntArrayRef{2 * 16, 32}));
  EXPECT_EQ(Param(model, "model.layers.0.self_attn.o_proj.weight").sizes(),
            (at::IntArrayRef{32, 4 * 16}));
  EXPECT_EQ(Param(model, "model.layers.1.self_attn.k_norm.weight").sizes(), (at::IntArrayRef{16}));
  EXPECT_EQ(Param(model, "model.layers.1.mlp.down_proj.weight").sizes(), (at::IntArrayRef{32, 48}));
  EXPECT_EQ(Param(model, "lm_head.weight").sizes(), (at::IntArrayRef{17, 32}));
}

TEST(ModelTest, InitIsDeterministicAndFollowsHfConventions) {
  ModelConfig c = TinyConfig("qwen2");
  torch::manual_seed(7);
  CausalLM a(c);
  torch::manual_seed(7);
  CausalLM b(c);
  auto wa = NamedWeights(a), wb = NamedWeights(b);
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i)
    EXPECT_TRUE(torch::equal(wa[i].second, wb[i].second)) << wa[i].first;
  EXPECT_TRUE(torch::equal(Param(a, "model.norm.weight"), torch::ones({32})));
  EXPECT_TRUE(torch::equal(Param(a, "model.layers.0.self_attn.q_proj.bias"), torch::zeros({32})));
  const double std = Param(a, "model.embed_tokens.weight").std().item<double>();
  EXPECT_NEAR(std, 0.02, 0.005);
}

TEST(ModelTest, TiedHeadUsesEmbedding) {
  ModelConfig c = TinyConfig("llama", /*tied=*/true);
  torch::manual_seed(1);
  CausalLM model(c);
  at::Tensor ids = torch::tensor({{3, 4, 5}}, torch::kLong);
  at::Tensor pos = torch::arange(3).view({1, 3});
  at::Tensor valid = torch::ones({1, 3}, torch::kBool);
  at::Tensor before = model->forward(ids, pos, valid);
  EXPECT_EQ(before.sizes(), (at::IntArrayRef{1, 3, 17}));
  EXPECT_EQ(before.scalar_type(), at::kFloat);
  {
    torch::NoGradGuard g;
    Param(model, "model.embed_tokens.weight")[9].add_(1.0);  // token 9 is not in the input
  }
  at::Tensor after = model->forward(ids, pos, valid);
  // Only the logit of token 9 moves: the head reads the embedding matrix.
  at::Tensor diff = (after - before).abs().sum(at::IntArrayRef{0, 1});
  EXPECT_GT(diff[9].item<float>(), 1e-3);
  diff[9] = 0;
  EXPECT_LT(diff.max().item<float>(), 1e-6);
}

TEST(ModelTest, ConstructorRejectsInvalidConfig) {
  ModelConfig c = TinyConfig("llama");
  c.num_key_value_heads = 3;
  EXPECT_THROW(CausalLM model(c), c10::Error);
}

// ---------------------------------------------------------------- KV cache

// Three rows of different prompt lengths, left-padded: prefill + one-token decode steps
// must reproduce a full forward over the whole sequence, and padding must not change a
// row's logits.
void CheckIncrementalMatchesFull(const std::string& arch) {
  SCOPED_TRACE(arch);
  ModelConfig c = TinyConfig(arch);
  torch::manual_seed(3);
  CausalLM model(c);
  model->eval();
  torch::NoGradGuard no_grad;
  const std::vector<std::vector<int64_t>> prompts = {{3, 4, 5, 6, 7}, {8, 9}, {10, 11, 12}};
  const std::vector<std::vector<int64_t>> gen = {{5, 6, 7, 8}, {9, 10, 11, 12}, {13, 14, 15, 16}};
  const int64_t b = 3, lp = 5, steps = 4;
  at::Tensor ids = torch::zeros({b, lp + steps}, torch::kLong);
  at::Tensor pos = torch::zeros({b, lp + steps}, torch::kLong);
  at::Tensor valid = torch::zeros({b, lp + steps}, torch::kBool);
  for (int64_t r = 0; r < b; ++r) {
    const int64_t off = lp - static_cast<int64_t>(prompts[r].size());
    std::vector<int64_t> seq = prompts[r];
    seq.insert(seq.end(), gen[r].begin(), gen[r].end());
    for (size_t j = 0; j < seq.size(); ++j) {
      ids[r][off + j] = seq[j];
      pos[r][off + j] = static_cast<int64_t>(j);
      valid[r][off + j] = true;
    }
  }
  at::Tensor full = model->forward(ids, pos, valid);

  KvCache cache;
  at::Tensor pre =
      model->forward(ids.narrow(1, 0, lp), pos.narrow(1, 0, lp), valid.narrow(1, 0, lp), &cache);
  EXPECT_EQ(cache.Length(), lp);
  ASSERT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.keys[0].sizes(), (at::IntArrayRef{b, 2, lp, c.HeadDim()}));
  at::Tensor pre_valid = valid.narrow(1, 0, lp);
  EXPECT_TRUE(
      torch::allclose(pre.index({pre_valid}), full.narrow(1, 0, lp).index({pre_valid}), 0, 1e-5));
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor step = model->forward(ids.narrow(1, lp + s, 1), pos.narrow(1, lp + s, 1),
                                     valid.narrow(1, lp + s, 1), &cache);
    EXPECT_TRUE(torch::allclose(step, full.narrow(1, lp + s, 1), 0, 1e-5))
        << "step " << s << " max diff " << (step - full.narrow(1, lp + s, 1)).abs().max();
  }
  EXPECT_EQ(cache.Length(), lp + steps);

  // Two tokens at once on top of the prefill gives the same logits too.
  KvCache cache2;
  model->forward(ids.narrow(1, 0, lp), pos.narrow(1, 0, lp), valid.narrow(1, 0, lp), &cache2);
  at::Tensor two =
      model->forward(ids.narrow(1, lp, 2), pos.narrow(1, lp, 2), valid.narrow(1, lp, 2), &cache2);
  EXPECT_TRUE(torch::allclose(two, full.narrow(1, lp, 2), 0, 1e-5));

  // Row 1 alone, unpadded, equals row 1 of the padded batch.
  const int64_t off = lp - 2;
  at::Tensor alone = model->forward(ids[1].narrow(0, off, 2 + steps).unsqueeze(0),
                                    torch::arange(2 + steps).unsqueeze(0),
                                    torch::ones({1, 2 + steps}, torch::kBool));
  EXPECT_TRUE(torch::allclose(alone[0], full[1].narrow(0, off, 2 + steps), 0, 1e-5));
  EXPECT_TRUE(torch::isfinite(full).all().item<bool>());  // padding query rows too
}

TEST(ModelTest, IncrementalDecodingMatchesFullForwardLlama) {
  CheckIncrementalMatchesFull("llama");
}
TEST(ModelTest, IncrementalDecodingMatchesFullForwardQwen2) {
  CheckIncrementalMatchesFull("qwen2");
}
TEST(ModelTest, IncrementalDecodingMatchesFullForwardQwen3) {
  CheckIncrementalMatchesFull("qwen3");
}

TEST(ModelTest, CausalAndPositionSensitive) {
  ModelConfig c = TinyConfig("llama");
  torch::manual_seed(4);
  CausalLM model(c);
  at::Tensor valid = torch::ones({1, 4}, torch::kBool);
  at::Tensor pos = torch::arange(4).view({1, 4});
  at::Tensor a = model->forward(torch::tensor({{3, 4, 5, 6}}), pos, valid);
  at::Tensor b = model->forward(torch::tensor({{3, 4, 5, 9}}), pos, valid);
  // Changing the last token leaves earlier positions' logits untouched ...
  EXPECT_TRUE(torch::equal(a.narrow(1, 0, 3), b.narrow(1, 0, 3)));
  EXPECT_FALSE(torch::allclose(a[0][3], b[0][3]));
  // ... RoPE is relative: shifting every position leaves the logits (nearly) unchanged,
  // while changing the distances between positions changes them.
  at::Tensor shifted = model->forward(torch::tensor({{3, 4, 5, 6}}), pos + 5, valid);
  EXPECT_TRUE(torch::allclose(a, shifted, 0, 1e-4));
  at::Tensor spread = model->forward(torch::tensor({{3, 4, 5, 6}}), pos * 3, valid);
  EXPECT_FALSE(torch::allclose(a.narrow(1, 1, 3), spread.narrow(1, 1, 3), 0, 1e-4));
}

// ---------------------------------------------------------------- LoadWeights

TEST(ModelTest, LoadWeightsChecksNamesAndShapes) {
  ModelConfig c = TinyConfig("qwen2");
  torch::manual_seed(5);
  CausalLM src(c);
  torch::manual_seed(6);
  CausalLM dst(c);
  auto weights = NamedWeights(src);
  ASSERT_TRUE(LoadWeights(dst, weights).ok());
  for (auto& [name, t] : NamedWeights(dst)) EXPECT_TRUE(torch::equal(t, Param(src, name))) << name;

  auto missing = weights;
  missing.erase(missing.begin() + 2);
  absl::Status s = LoadWeights(dst, missing);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(weights[2].first), std::string::npos) << s;

  auto bad_shape = weights;
  bad_shape[3].second = torch::zeros({3, 3});
  s = LoadWeights(dst, bad_shape);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(weights[3].first), std::string::npos) << s;

  auto extra = weights;
  extra.emplace_back("model.layers.0.self_attn.q_norm.weight", torch::ones({8}));
  s = LoadWeights(dst, extra);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("q_norm"), std::string::npos) << s;

  // Converts dtype (a bf16 checkpoint into an fp32 model).
  NamedTensors half;
  for (auto& [n, t] : weights) half.emplace_back(n, t.to(torch::kBFloat16));
  ASSERT_TRUE(LoadWeights(dst, half).ok());
  EXPECT_TRUE(torch::equal(Param(dst, "lm_head.weight"),
                           Param(src, "lm_head.weight").to(torch::kBFloat16).to(torch::kFloat)));
  EXPECT_EQ(Param(dst, "lm_head.weight").scalar_type(), torch::kFloat);
}

// ---------------------------------------------------------------- safetensors

TEST(SafetensorsTest, RoundTripIsBitIdentical) {
  const std::string dir = TempDir("st_roundtrip");
  torch::manual_seed(8);
  NamedTensors in = {
      {"z.f32", torch::randn({3, 5})},
      {"a.bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"m.f16", torch::randn({2, 2, 3}).to(torch::kHalf)},
      {"i64", torch::tensor(std::vector<int64_t>{-1, 0, int64_t{1} << 40})},
      {"i32", torch::tensor({1, 2, 3}, torch::kInt)},
      {"empty", torch::zeros({0, 4})},
      {"scalar", torch::tensor(3.5f)},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input
  };
  const std::string path = dir + "/x.safetensors";
  ASSERT_TRUE(SaveSafetensors(in, path).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  auto out = LoadSafetensors(path);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    SCOPED_TRACE(in[i].first);
    EXPECT_EQ((*out)[i].first, in[i].first);  // file order = save order
    const at::Tensor& t = (*out)[i].second;
    EXPECT_EQ(t.scalar_type(), in[i].second.scalar_type());
    EXPECT_EQ(t.sizes(), in[i].second.sizes());
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_TRUE(torch::equal(t, in[i].second));
  }
  // The header is 8-byte aligned JSON with the metadata transformers requires.
  std::ifstream f(path, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  std::string header(n, '\0');
  f.read(header.data(), n);
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["a.bf16"]["dtype"], "BF16");
  EXPECT_EQ(j["m.f16"]["shape"], nlohmann::json::array({2, 2, 3}));
  fs::remove_all(dir);
}

TEST(SafetensorsTest, RejectsBadNames) {
  const std::string dir = TempDir("st_names");
  EXPECT_FALSE(
      SaveSafetensors({{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}, dir + "/x").ok());
  EXPECT_FALSE(SaveSafetensors({{"__metadata__", torch::zeros({1})}}, dir + "/x").ok());
  fs::remove_all(dir);
}

void WriteRaw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

TEST(SafetensorsTest, MalformedFilesGiveErrors) {
  const std::string dir = TempDir("st_bad");
  const std::string good = dir + "/good.safetensors";
  ASSERT_TRUE(SaveSafetensors({{"w", torch::randn({4, 4})}, {"b", torch::randn({4})}}, good).ok());
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expect_error = [&](const std::string& file, const std::string& mention) {
    auto r = LoadSafetensors(file);
    ASSERT_FALSE(r.ok()) << file;
    EXPECT_NE(r.status().message().find(file), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(mention), std::string::npos) << r.status();
  };
  // Truncated at several points: inside the length, the header and the data.
  for (size_t cut : {size_t{0}, size_t{5}, size_t{20}, bytes.size() - 1}) {
    const std::string p = dir + "/cut" + std::to_string(cut);
    std::ofstream(p, std::ios::binary) << bytes.substr(0, cut);
    expect_error(p, "");
  }
  const std::string p = dir + "/bad.safetensors";
  const std::string data(64, '\0');
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,80]}})", data);
  expect_error(p, "w");  // end past the data
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}})", data);
  expect_error(p, "w");  // size does not match the shape
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data);
  expect_error(p, "w");  // begin > end
  WriteRaw(p, R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", data);
  expect_error(p, "dtype");
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data);
  expect_error(p, "w");
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4611686018427387904, 4],"data_offsets":[0,8]}})",
           data);
  expect_error(p, "w");  // numel overflow
  WriteRaw(p,
           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
           R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
           data);
  expect_error(p, "overlaps");
  WriteRaw(p, R"({"w":{"dtype":"F32")", data);
  expect_error(p, "JSON");
  WriteRaw(p, R"([1,2])", data);
  expect_error(p, "object");
  {  // header length larger than the file
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    uint64_t n = 1ull << 40;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  expect_error(p, "header length");
  auto missing = LoadSafetensors(dir + "/nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- model directories

at::Tensor Logits(CausalLM& m) {
  at::Tensor ids = torch::tensor({{0, 3, 4, 5, 6, 7}, {2, 8, 9, 10, 11, 16}});
  at::Tensor pos = torch::tensor({{0, 0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5}});
  at::Tensor valid =
      torch::tensor({{false, true, true, true, true, true}, {true, true, true, true, true, true}});
  return m->forward(ids, pos, valid);
}

TEST(ModelDirTest, RoundTripGivesIdenticalLogits) {
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    for (bool tied : {false, true}) {
      SCOPED_TRACE(std::string(arch) + (tied ? " tied" : ""));
      const std::string dir = TempDir(std::string("dir_") + arch + (tied ? "_tied" : "")) + "/sub";
      ModelConfig c = TinyConfig(arch, tied);
      torch::manual_seed(9);
      CausalLM model(c);
      ASSERT_TRUE(SaveModelDir(model, dir).ok());
      EXPECT_TRUE(fs::exists(dir + "/config.json"));
      torch::manual_seed(10);  // a different init, to be overwritten
      auto loaded = LoadModelDir(dir);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      EXPECT_EQ(Names(*loaded), ExpectedNames(c));
      EXPECT_TRUE(torch::equal(Logits(model), Logits(*loaded)));
      auto saved = LoadSafetensors(dir + "/model.safetensors");
      ASSERT_TRUE(saved.ok());
      for (auto& [n, t] : *saved) EXPECT_EQ(t.scalar_type(), at::kFloat) << n;
      EXPECT_EQ(saved->size(), ExpectedNames(c).size());
      fs::remove_all(fs::path(dir).parent_path());
    }
  }
}

TEST(ModelDirTest, LoadsShardedBf16Checkpoint) {
  const std::string dir = TempDir("sharded");
  ModelConfig c = TinyConfig("qwen2");
  c.torch_dtype = "bfloat16";
  torch::manual_seed(11);
  CausalLM model(c);
  ASSERT_TRUE(WriteModelConfig(c, dir + "/config.json").ok());
  auto weights = NamedWeights(model);
  NamedTensors shard1, shard2;
  nlohmann::json map = nlohmann::json::object();
  for (size_t i = 0; i < weights.size(); ++i) {
    const bool first = i < weights.size() / 2;
    const std::string file =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    (first ? shard1 : shard2)
        .emplace_back(weights[i].first, weights[i].second.to(torch::kBFloat16));
    map[weights[i].first] = file;
  }
  ASSERT_TRUE(SaveSafetensors(shard1, dir + "/model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(SaveSafetensors(shard2, dir + "/model-00002-of-00002.safetensors").ok());
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump();
  auto loaded = LoadModelDir(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (auto& [n, t] : NamedWeights(*loaded)) {
    EXPECT_EQ(t.scalar_type(), at::kFloat);
    EXPECT_TRUE(torch::equal(t, Param(model, n).to(torch::kBFloat16).to(torch::kFloat))) << n;
  }
  // A shard missing from disk is an error that names it.
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  auto broken = LoadModelDir(dir);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("model-00002-of-00002"), std::string::npos);
  fs::remove_all(dir);
}

TEST(ModelDirTest, ArchitectureMismatchIsAnError) {
  const std::string dir = TempDir("mismatch");
  torch::manual_seed(12);
  CausalLM qwen2(TinyConfig("qwen2"));
  ASSERT_TRUE(SaveModelDir(qwen2, dir).ok());
  ASSERT_TRUE(WriteModelConfig(TinyConfig("llama"), dir + "/config.json").ok());
  auto loaded = LoadModelDir(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("bias"), std::string::npos) << loaded.status();
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- ModelConfig

TEST(ModelConfigTest, JsonRoundTrip) {
  const std::string dir = TempDir("config");
  ModelConfig c = TinyConfig("qwen3", /*tied=*/true);
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
    ModelConfig d = TinyConfig(arch);
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
               "rope_scaling");
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
  ModelConfig ok = TinyConfig("llama");
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
  ModelConfig c = TinyConfig("llama");  // pad 0, bos 1, eos 2
  EXPECT_EQ(NeverSampledTokens(c), (std::vector<int64_t>{0, 1}));
  c.bos_token_id = 2;  // bos == eos (Qwen): only pad
  EXPECT_EQ(NeverSampledTokens(c), (std::vector<int64_t>{0}));
  c.pad_token_id = 2;  // pad == eos: masking it would make stopping impossible
  EXPECT_TRUE(NeverSampledTokens(c).empty());
  c.pad_token_id = -1;
  c.bos_token_id = -1;
  EXPECT_TRUE(NeverSampledTokens(c).empty());
}

// ---------------------------------------------------------------- SamplingLogProbs

TEST(LogProbsTest, MasksNeverSampledAndAppliesTemperature) {
  torch::manual_seed(13);
  at::Tensor logits = torch::randn({2, 3, 17});
  at::Tensor lp = SamplingLogProbs(logits, 0.5, {0, 1, 99});
  EXPECT_EQ(lp.sizes(), logits.sizes());
  EXPECT_TRUE(torch::isinf(lp.select(-1, 0)).all().item<bool>());
  EXPECT_TRUE(torch::isinf(lp.select(-1, 1)).all().item<bool>());
  EXPECT_TRUE(torch::allclose(lp.exp().sum(-1), torch::ones({2, 3}), 0, 1e-5));
  at::Tensor masked = logits.clone();
  masked.narrow(-1, 0, 2).fill_(-std::numeric_limits<float>::infinity());
  EXPECT_TRUE(torch::allclose(lp, torch::log_softmax(masked / 0.5, -1)));
  // temperature <= 0 means 1.
  EXPECT_TRUE(torch::allclose(SamplingLogProbs(logits, 0, {}), torch::log_softmax(logits, -1)));
  EXPECT_TRUE(torch::equal(SamplingLogProbs(logits, -1, {}), SamplingLogProbs(logits, 1, {})));
  // Differentiable, with zero gradient on masked tokens.
  at::Tensor x = logits.clone().requires_grad_(true);
  SamplingLogProbs(x, 1.0, {0}).select(-1, 5).sum().backward();
  EXPECT_EQ(x.grad().select(-1, 0).abs().max().item<float>(), 0.0f);
  EXPECT_GT(x.grad().select(-1, 5).abs().max().item<float>(), 0.0f);
}

}  // namespace
}  // namespace pmdrl
