// The policy model (names, init, RoPE, KV cache, dtypes), the safetensors format and
// the sampling log-prob definition. Model directories: nn_model_dir_test.cc.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "common/nn/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/tiny_model_config.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) { return FreshTempDir("nn_model_test", name); }

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
    if (c.attention_bias && c.architecture != "qwen2") out.push_back(p + "self_attn.o_proj.bias");
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
      ModelConfig c = TinyModelConfig(arch, tied);
      CausalLM model(c);
      EXPECT_EQ(Names(model), ExpectedNames(c));
    }
  }
}

TEST(ModelTest, ShapesFollowConfig) {
  ModelConfig c = TinyModelConfig("qwen3");
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
  ModelConfig c = TinyModelConfig("qwen2");
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
  ModelConfig c = TinyModelConfig("llama", /*tied=*/true);
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
  ModelConfig c = TinyModelConfig("llama");
  c.num_key_value_heads = 3;
  EXPECT_THROW(CausalLM model(c), c10::Error);
}

TEST(ModelTest, AttentionBiasFollowsTransformersPerArchitecture) {
  // transformers: Llama and Qwen3 put attention_bias on q/k/v and o_proj; Qwen2 always
  // has q/k/v bias and never an o_proj bias.
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = TinyModelConfig(arch);
    c.attention_bias = true;
    CausalLM model(c);
    std::vector<std::string> names = Names(model);
    EXPECT_EQ(names, ExpectedNames(c));
    const bool o_bias = std::find(names.begin(), names.end(),
                                  "model.layers.0.self_attn.o_proj.bias") != names.end();
    EXPECT_EQ(o_bias, std::string(arch) != "qwen2");
  }
}

TEST(ModelTest, BuildsInTheRequestedDtype) {
  ModelConfig c = TinyModelConfig("qwen3");
  torch::manual_seed(14);
  CausalLM model(c, CausalLMOptions{at::kBFloat16});
  for (auto& [n, t] : NamedWeights(model)) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << n;
  EXPECT_TRUE(torch::equal(Param(model, "model.norm.weight"), torch::ones({32}, torch::kBFloat16)));
  CausalLM raw(c, CausalLMOptions{at::kFloat, at::kCPU, /*random_init=*/false});
  EXPECT_EQ(Names(raw), ExpectedNames(c));
  EXPECT_THROW(CausalLM(c, CausalLMOptions{at::kLong}), c10::Error);
}

// A bf16 model computes in bf16 with norms / softmax / RoPE in float32, so it stays close
// to the fp32 model it was cast from, and stays finite.
TEST(ModelTest, Bf16ForwardTracksFloat32) {
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = TinyModelConfig(arch);
    torch::manual_seed(15);
    CausalLM model(c);
    {
      torch::NoGradGuard g;  // larger weights than the init, so that errors would show
      for (auto& [n, t] : NamedWeights(model)) {
        if (n.find("norm") == std::string::npos) t.mul_(10);
      }
    }
    torch::NoGradGuard no_grad;
    at::Tensor ids = torch::tensor({{3, 4, 5, 6, 7, 8, 9, 10}});
    at::Tensor pos = torch::arange(8).view({1, 8});
    at::Tensor valid = torch::ones({1, 8}, torch::kBool);
    at::Tensor f32 = model->forward(ids, pos, valid);
    model->to(at::kBFloat16);
    at::Tensor bf16 = model->forward(ids, pos, valid);
    EXPECT_EQ(bf16.scalar_type(), at::kFloat);
    EXPECT_TRUE(torch::isfinite(bf16).all().item<bool>());
    const float scale = f32.abs().max().item<float>();
    EXPECT_GT(scale, 0.5);
    EXPECT_LT((bf16 - f32).abs().max().item<float>(), 0.05 * scale);
    // The same top token nearly everywhere.
    EXPECT_GE(bf16.argmax(-1).eq(f32.argmax(-1)).sum().item<int64_t>(), 6);
    // Incremental decoding in bf16 agrees with the full bf16 forward.
    KvCache cache;
    model->forward(ids.narrow(1, 0, 7), pos.narrow(1, 0, 7), valid.narrow(1, 0, 7), &cache);
    at::Tensor last =
        model->forward(ids.narrow(1, 7, 1), pos.narrow(1, 7, 1), valid.narrow(1, 7, 1), &cache);
    EXPECT_LT((last - bf16.narrow(1, 7, 1)).abs().max().item<float>(), 0.05 * scale);
  }
}

// ---------------------------------------------------------------- RoPE

TEST(RopeTest, DefaultFrequencies) {
  ModelConfig c = TinyModelConfig("qwen3");  // head_dim 16
  c.rope_theta = 1e6;
  at::Tensor f = RopeInverseFrequencies(c);
  ASSERT_EQ(f.sizes(), (at::IntArrayRef{8}));
  EXPECT_EQ(f.scalar_type(), at::kFloat);
  for (int i = 0; i < 8; ++i) {
    const double want = std::pow(1e6, -2.0 * i / 16);
    EXPECT_NEAR(f[i].item<double>(), want, 1e-6 * want);
  }
}

// Llama 3.2's rope_scaling (factor 32, low 1, high 4, original context 8192, theta 5e5,
// head_dim 64): high frequencies untouched, low ones divided by the factor, the band in
// between interpolated -- against a float64 evaluation of transformers' formula.
TEST(RopeTest, Llama3ScalingMatchesTransformersFormula) {
  ModelConfig c = TinyModelConfig("llama");
  c.hidden_size = 128;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 131072;
  c.rope_theta = 500000.0;
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 32.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  ASSERT_EQ(c.HeadDim(), 64);
  at::Tensor scaled = RopeInverseFrequencies(c);
  ModelConfig plain = c;
  plain.rope_scaling = RopeScaling{};
  at::Tensor base = RopeInverseFrequencies(plain);
  ASSERT_EQ(scaled.sizes(), (at::IntArrayRef{32}));
  int high = 0, low = 0, mid = 0;
  for (int i = 0; i < 32; ++i) {
    const double inv = std::pow(500000.0, -2.0 * i / 64);
    const double wavelen = 2 * M_PI / inv;
    double want = inv;
    if (wavelen > 8192.0) {
      want = inv / 32;
      ++low;
      EXPECT_EQ(scaled[i].item<float>(), base[i].item<float>() / 32.0f) << i;
    } else if (wavelen >= 2048.0) {
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      want = (1 - smooth) * inv / 32 + smooth * inv;
      ++mid;
    } else {
      ++high;
      EXPECT_EQ(scaled[i].item<float>(), base[i].item<float>()) << i;
    }
    EXPECT_NEAR(scaled[i].item<double>(), want, 1e-5 * want) << i;
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);

  // And the model uses them: the same weights give other logits than plain RoPE.
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.rope_scaling.original_max_position_embeddings = 4;  // so that tiny heads scale
  plain = c;
  plain.rope_scaling = RopeScaling{};
  torch::manual_seed(16);
  CausalLM a(c);
  CausalLM b(plain);
  {
    torch::NoGradGuard g;
    for (auto& [n, t] : NamedWeights(b)) t.copy_(Param(a, n));
  }
  at::Tensor ids = torch::tensor({{3, 4, 5, 6, 7, 8}});
  at::Tensor pos = torch::arange(6).view({1, 6}) * 7;
  at::Tensor valid = torch::ones({1, 6}, torch::kBool);
  EXPECT_FALSE(torch::allclose(a->forward(ids, pos, valid), b->forward(ids, pos, valid), 0, 1e-5));
}

// ---------------------------------------------------------------- KV cache

// Three rows of different prompt lengths, left-padded: prefill + one-token decode steps
// must reproduce a full forward over the whole sequence, and padding must not change a
// row's logits.
void CheckIncrementalMatchesFull(const std::string& arch) {
  SCOPED_TRACE(arch);
  ModelConfig c = TinyModelConfig(arch);
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
  ModelConfig c = TinyModelConfig("llama");
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
  ModelConfig c = TinyModelConfig("qwen2");
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
  // A dimension past int64 next to a 0 (zero bytes, so the size checks out) was taken as
  // a negative one (fuzz/safetensors_fuzz).
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}})",
           data);
  expect_error(p, "shape is too large");
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

TEST(SafetensorsTest, FileReadsOneTensorAtATime) {
  const std::string dir = TempDir("st_file");
  torch::manual_seed(17);
  at::Tensor w = torch::randn({4, 6}).to(torch::kBFloat16);
  at::Tensor ids = torch::arange(5);
  SafetensorsWriteOptions opts;
  opts.metadata["note"] = "hi";
  ASSERT_TRUE(SaveSafetensors({{"w", w}, {"ids", ids}}, dir + "/a.safetensors", opts).ok());
  auto file = SafetensorsFile::Open(dir + "/a.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->entries().size(), 2u);
  EXPECT_EQ(file->entries()[0].name, "w");  // file order
  EXPECT_EQ(file->entries()[0].dtype, at::kBFloat16);
  EXPECT_EQ(file->metadata().at("note"), "hi");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const auto& we = file->entries()[0];
  at::Tensor direct = torch::empty({4, 6}, torch::kBFloat16);
  ASSERT_TRUE(file->ReadInto(we, direct).ok());
  EXPECT_TRUE(torch::equal(direct, w));
  at::Tensor widened = torch::empty({4, 6});
  ASSERT_TRUE(file->ReadInto(we, widened).ok());
  EXPECT_TRUE(torch::equal(widened, w.to(torch::kFloat)));
  at::Tensor strided = torch::empty({6, 4}, torch::kBFloat16).t();  // not contiguous
  ASSERT_TRUE(file->ReadInto(we, strided).ok());
  EXPECT_TRUE(torch::equal(strided, w));
  at::Tensor wrong = torch::empty({4, 5}, torch::kBFloat16);
  absl::Status s = file->ReadInto(we, wrong);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("w"), std::string::npos);
  at::Tensor as_float = torch::empty({5});
  EXPECT_FALSE(file->ReadInto(file->entries()[1], as_float).ok());  // integer into float
  auto read = file->Read(file->entries()[1]);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(torch::equal(*read, ids));
  // Moving keeps the file readable.
  SafetensorsFile moved = *std::move(file);
  EXPECT_TRUE(moved.ReadInto(moved.entries()[0], direct).ok());

  // Write-time conversion of floating tensors only.
  SafetensorsWriteOptions half;
  half.float_dtype = at::kHalf;
  ASSERT_TRUE(SaveSafetensors({{"w", w}, {"ids", ids}}, dir + "/b.safetensors", half).ok());
  auto b = LoadSafetensors(dir + "/b.safetensors");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)[0].second.scalar_type(), at::kHalf);
  EXPECT_TRUE(torch::equal((*b)[0].second, w.to(at::kHalf)));
  EXPECT_EQ((*b)[1].second.scalar_type(), at::kLong);
  EXPECT_EQ(SafetensorsBytes(w, at::kFloat), 96u);
  fs::remove_all(dir);
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
