// Model directories: save (dtypes, sharding, tied heads) and load (dtypes, shards,
// memory bound) round trips, bit for bit.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "common/nn/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/tiny_model_config.h"

extern char** environ;

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string TempDir(const std::string& name) { return FreshTempDir("nn_model_dir_test", name); }

std::vector<std::string> Names(CausalLM& model) {
  std::vector<std::string> out;
  for (auto& [name, t] : NamedWeights(model)) out.push_back(name);
  return out;
}

at::Tensor Param(CausalLM& model, const std::string& name) {
  for (auto& [n, t] : NamedWeights(model)) {
    if (n == name) return t;
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

at::Tensor Logits(CausalLM& m) {
  torch::NoGradGuard no_grad;
  at::Tensor ids = torch::tensor({{0, 3, 4, 5, 6, 7}, {2, 8, 9, 10, 11, 16}});
  at::Tensor pos = torch::tensor({{0, 0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5}});
  at::Tensor valid =
      torch::tensor({{false, true, true, true, true, true}, {true, true, true, true, true, true}});
  return m->forward(ids, pos, valid);
}

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

std::set<std::string> Files(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// ---------------------------------------------------------------- round trips

// Every architecture, tied and untied: an fp32 file reloads to exactly the same logits; a
// bf16 file loaded in bf16 gives exactly the logits of the original model cast to bf16
// (and loaded in fp32, those of the model rounded through bf16).
TEST(ModelDirTest, RoundTripIsBitIdenticalInEveryDtype) {
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    for (bool tied : {false, true}) {
      SCOPED_TRACE(std::string(arch) + (tied ? " tied" : ""));
      const std::string root = TempDir(std::string("rt_") + arch + (tied ? "_tied" : ""));
      ModelConfig c = TinyModelConfig(arch, tied);
      if (std::string(arch) == "llama") {  // exercise llama3 RoPE through the files too
        c.rope_scaling.rope_type = "llama3";
        c.rope_scaling.factor = 8.0;
        c.rope_scaling.original_max_position_embeddings = 8;
      }
      torch::manual_seed(9);
      CausalLM model(c);
      const at::Tensor want32 = Logits(model);

      const std::string f32 = root + "/f32/sub";
      ASSERT_TRUE(SaveModelDir(model, f32).ok());
      EXPECT_EQ(Files(f32), (std::set<std::string>{"config.json", "model.safetensors"}));
      EXPECT_EQ(ReadJson(f32 + "/config.json")["torch_dtype"], "float32");
      auto saved = LoadSafetensors(f32 + "/model.safetensors");
      ASSERT_TRUE(saved.ok());
      for (auto& [n, t] : *saved) EXPECT_EQ(t.scalar_type(), at::kFloat) << n;
      EXPECT_EQ(saved->size(), Names(model).size());  // no lm_head.weight when tied
      torch::manual_seed(10);                         // a different init, to be overwritten
      auto loaded = LoadModelDir(f32);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      EXPECT_EQ(Names(*loaded), Names(model));
      EXPECT_EQ((*loaded)->config().rope_scaling.rope_type, c.rope_scaling.rope_type);
      EXPECT_TRUE(torch::equal(Logits(*loaded), want32));

      const std::string bf16 = root + "/bf16";
      ASSERT_TRUE(SaveModelDir(model, bf16, SaveOptions{at::kBFloat16}).ok());
      EXPECT_EQ(ReadJson(bf16 + "/config.json")["torch_dtype"], "bfloat16");
      auto saved16 = LoadSafetensors(bf16 + "/model.safetensors");
      ASSERT_TRUE(saved16.ok());
      for (auto& [n, t] : *saved16) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << n;
      auto in16 = LoadModelDir(bf16, LoadOptions{at::kBFloat16});
      ASSERT_TRUE(in16.ok()) << in16.status();
      for (auto& [n, t] : NamedWeights(*in16)) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << n;
      auto in32 = LoadModelDir(bf16);
      ASSERT_TRUE(in32.ok()) << in32.status();

      CausalLM cast(c);
      {
        torch::NoGradGuard no_grad;
        for (auto& [n, t] : NamedWeights(cast)) t.copy_(Param(model, n));
      }
      cast->to(at::kBFloat16);
      const at::Tensor want16 = Logits(cast);
      const at::Tensor got16 = Logits(*in16);
      EXPECT_EQ(got16.scalar_type(), at::kFloat);
      EXPECT_TRUE(torch::equal(got16, want16));
      EXPECT_TRUE(torch::isfinite(got16).all().item<bool>());
      // bf16 is a rounding of the fp32 model, not something else.
      EXPECT_LT((got16 - want32).abs().max().item<float>(), 0.05);
      cast->to(at::kFloat);
      EXPECT_TRUE(torch::equal(Logits(*in32), Logits(cast)));
      fs::remove_all(root);
    }
  }
}

TEST(ModelDirTest, ShardsPastTheLimitWithAnIndex) {
  const std::string dir = TempDir("shards");
  ModelConfig c = TinyModelConfig("qwen3");
  torch::manual_seed(21);
  CausalLM model(c);
  // embed_tokens is 17*32*2 = 1088 bf16 bytes: over the limit, so a shard of its own.
  SaveOptions options{at::kBFloat16, /*max_shard_bytes=*/1024};
  ASSERT_TRUE(SaveModelDir(model, dir, options).ok());
  json index = ReadJson(dir + "/model.safetensors.index.json");
  const json& map = index["weight_map"];
  uint64_t total = 0;
  std::set<std::string> shard_files;
  for (auto& [name, t] : NamedWeights(model)) {
    ASSERT_TRUE(map.contains(name)) << name;
    shard_files.insert(map[name].get<std::string>());
    total += t.numel() * 2;
  }
  EXPECT_EQ(map.size(), NamedWeights(model).size());
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  const size_t n = shard_files.size();
  ASSERT_GT(n, 3u);
  char first[64], last[64];
  std::snprintf(first, sizeof(first), "model-00001-of-%05zu.safetensors", n);
  std::snprintf(last, sizeof(last), "model-%05zu-of-%05zu.safetensors", n, n);
  EXPECT_TRUE(shard_files.count(first));
  EXPECT_TRUE(shard_files.count(last));
  EXPECT_EQ(map["model.embed_tokens.weight"], first);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  // Each shard within the limit unless it is a single oversized tensor; names in shards
  // agree with the index.
  for (const std::string& f : shard_files) {
    auto file = SafetensorsFile::Open(dir + "/" + f);
    ASSERT_TRUE(file.ok()) << file.status();
    uint64_t bytes = 0;
    for (const auto& e : file->entries()) {
      bytes += e.end - e.begin;
      EXPECT_EQ(map[e.name], f);
      EXPECT_EQ(e.dtype, at::kBFloat16);
    }
    if (file->entries().size() > 1) {
      EXPECT_LE(bytes, 1024u) << f;
    }
    EXPECT_EQ(file->metadata().at("format"), "pt");
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_FALSE(e.path().extension() == ".tmp") << e.path();
  }
  auto loaded = LoadModelDir(dir, LoadOptions{at::kBFloat16});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (auto& [name, t] : NamedWeights(*loaded)) {
    EXPECT_TRUE(torch::equal(t, Param(model, name).to(at::kBFloat16))) << name;
  }

  // Saving again unsharded replaces the layout: no stale index or shards remain (a stale
  // index would win over the new file).
  ASSERT_TRUE(SaveModelDir(model, dir).ok());
  EXPECT_EQ(Files(dir), (std::set<std::string>{"config.json", "model.safetensors"}));
  // And back to shards: the single file goes.
  ASSERT_TRUE(SaveModelDir(model, dir, options).ok());
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_EQ(Files(dir).size(), n + 2);
  fs::remove_all(dir);
}

TEST(ModelDirTest, LoadsShardedBf16CheckpointIntoEveryDtype) {
  const std::string dir = TempDir("sharded");
  ModelConfig c = TinyModelConfig("qwen2", /*tied=*/true);
  c.torch_dtype = "bfloat16";
  torch::manual_seed(11);
  CausalLM model(c);
  ASSERT_TRUE(WriteModelConfig(c, dir + "/config.json").ok());
  auto weights = NamedWeights(model);
  NamedTensors shard1, shard2;
  json map = json::object();
  for (size_t i = 0; i < weights.size(); ++i) {
    const bool first = i < weights.size() / 2;
    const std::string file =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    (first ? shard1 : shard2)
        .emplace_back(weights[i].first, weights[i].second.to(torch::kBFloat16));
    map[weights[i].first] = file;
  }
  // Some tied checkpoints carry lm_head.weight anyway, and old ones rotary buffers.
  shard2.emplace_back("lm_head.weight",
                      Param(model, "model.embed_tokens.weight").to(at::kBFloat16));
  shard2.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({4}));
  map["lm_head.weight"] = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(SaveSafetensors(shard1, dir + "/model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(SaveSafetensors(shard2, dir + "/model-00002-of-00002.safetensors").ok());
  std::ofstream(dir + "/model.safetensors.index.json")
      << json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto loaded = LoadModelDir(dir, LoadOptions{dtype});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    for (auto& [n, t] : NamedWeights(*loaded)) {
      EXPECT_EQ(t.scalar_type(), dtype);
      EXPECT_TRUE(t.device().is_cpu());
      EXPECT_TRUE(torch::equal(t, Param(model, n).to(torch::kBFloat16).to(dtype))) << n;
    }
  }
  // A shard missing from disk is an error that names it.
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  auto broken = LoadModelDir(dir);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("model-00002-of-00002"), std::string::npos);
  fs::remove_all(dir);
}

TEST(ModelDirTest, MismatchesAreErrorsThatNameTheTensor) {
  const std::string dir = TempDir("mismatch");
  torch::manual_seed(12);
  CausalLM qwen2(TinyModelConfig("qwen2"));
  ASSERT_TRUE(SaveModelDir(qwen2, dir).ok());
  ASSERT_TRUE(WriteModelConfig(TinyModelConfig("llama"), dir + "/config.json").ok());
  auto loaded = LoadModelDir(dir, LoadOptions{at::kBFloat16});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("bias"), std::string::npos) << loaded.status();

  // Untied config, tied checkpoint: lm_head.weight is missing.
  CausalLM tied(TinyModelConfig("llama", /*tied=*/true));
  ASSERT_TRUE(SaveModelDir(tied, dir).ok());
  ASSERT_TRUE(WriteModelConfig(TinyModelConfig("llama"), dir + "/config.json").ok());
  loaded = LoadModelDir(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("missing tensor lm_head.weight"), std::string::npos)
      << loaded.status();

  // A shape mismatch.
  ModelConfig wide = TinyModelConfig("llama", /*tied=*/true);
  wide.intermediate_size = 64;
  ASSERT_TRUE(WriteModelConfig(wide, dir + "/config.json").ok());
  loaded = LoadModelDir(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("mlp"), std::string::npos) << loaded.status();
  EXPECT_NE(loaded.status().message().find("shape"), std::string::npos) << loaded.status();

  // Unsupported dtypes.
  EXPECT_FALSE(LoadModelDir(dir, LoadOptions{at::kLong}).ok());
  EXPECT_FALSE(SaveModelDir(tied, dir, SaveOptions{at::kInt}).ok());
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- memory bound

// Kilobytes of a /proc/self/status field ("VmRSS", "VmHWM"), or -1.
int64_t StatusKb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream s(line.substr(field.size() + 1));
      int64_t kb = -1;
      s >> kb;
      return kb;
    }
  }
  return -1;
}

// Runs in a child process (started by LoadStaysWithinOneAndAHalfModelSizes): loads the
// bf16 checkpoint in bf16 and writes "<rss before> <peak after> <ok>" in KB. The peak is
// reset first (clear_refs 5 sets VmHWM to the current RSS), so only the load counts.
TEST(ModelDirMemoryChild, LoadAndReportPeak) {
  const char* dir = std::getenv("PMDRL_MEMTEST_DIR");
  const char* out = std::getenv("PMDRL_MEMTEST_OUT");
  if (dir == nullptr || out == nullptr) GTEST_SKIP() << "helper for the memory-bound test";
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const int64_t before = StatusKb("VmRSS");
  auto loaded = LoadModelDir(dir, LoadOptions{at::kBFloat16});
  const int64_t peak = StatusKb("VmHWM");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  bool all_bf16 = true;
  for (auto& [n, t] : NamedWeights(*loaded)) all_bf16 &= t.scalar_type() == at::kBFloat16;
  std::ofstream(out) << before << " " << peak << " " << (all_bf16 ? 1 : 0) << "\n";
}

// Loading a ~100 MB sharded bf16 checkpoint in bf16 raises the peak RSS by at most 1.5x
// its tensor bytes (the parameters themselves plus at most one tensor in flight), and by
// at least 0.9x (so the measurement sees the load at all). Measured in a fresh process so
// that nothing this test allocated counts; memory, not time, so a busy machine is fine.
TEST(ModelDirMemoryTest, LoadStaysWithinOneAndAHalfModelSizes) {
  const std::string dir = TempDir("memory");
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 32000;
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.max_position_embeddings = 128;
  uint64_t tensor_bytes = 0;
  {
    torch::manual_seed(31);
    CausalLM model(c, CausalLMOptions{at::kBFloat16});
    for (auto& [n, t] : NamedWeights(model)) tensor_bytes += t.numel() * 2;
    ASSERT_TRUE(SaveModelDir(model, dir, SaveOptions{at::kBFloat16, 30'000'000}).ok());
  }
  ASSERT_GT(tensor_bytes, 100'000'000u);
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));

  const std::string out = dir + "/peak.txt";
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args = {exe, "--gtest_filter=ModelDirMemoryChild.LoadAndReportPeak"};
  std::vector<std::string> env_strings = {"PMDRL_MEMTEST_DIR=" + dir, "PMDRL_MEMTEST_OUT=" + out,
                                          "OMP_NUM_THREADS=1"};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("PMDRL_MEMTEST_", 0) != 0) env_strings.push_back(*e);
  }
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  std::ifstream in(out);
  int64_t before_kb = -1, peak_kb = -1, all_bf16 = 0;
  ASSERT_TRUE(in >> before_kb >> peak_kb >> all_bf16) << "no report from the child";
  EXPECT_EQ(all_bf16, 1);
  const double growth = static_cast<double>(peak_kb - before_kb) * 1024.0;
  const double ratio = growth / static_cast<double>(tensor_bytes);
  std::printf("checkpoint %.1f MB, peak RSS growth %.1f MB, ratio %.3f\n", tensor_bytes / 1e6,
              growth / 1e6, ratio);
  RecordProperty("peak_ratio", std::to_string(ratio));
  EXPECT_LE(ratio, 1.5);
  EXPECT_GE(ratio, 0.9);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pmdrl
