// The rollout engine against the reference sampler (common/nn/sampler): the same greedy
// tokens, the same sampling distribution, log-probs a fresh forward re-scores, continuous
// batching that keeps every slot busy, and bad requests refused without losing anything.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <vector>

#include "common/model_config.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "common/nn/sampler.h"
#include "engine/generation_engine.h"
#include "tests/rescore_logprobs.h"
#include "tests/tiny_model_config.h"

namespace pmdrl {
namespace {

// The tiny model with weights large enough that its next-token distributions are far
// from uniform (so that frequency tests have something to tell apart).
CausalLM TinyModel(uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  CausalLM model(TinyModelConfig("qwen3"));
  torch::NoGradGuard g;
  for (auto& [name, t] : NamedWeights(model)) {
    if (name.find("norm") == std::string::npos) t.normal_(0.0, 0.3);
  }
  model->eval();
  return model;
}

std::unique_ptr<GenerationEngine> EngineFor(CausalLM& model, EngineOptions o) {
  auto engine = GenerationEngine::Create(model->config(), o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::vector<WeightView> views;
  for (auto& [name, t] : NamedWeights(model)) {
    views.push_back({name, t.sizes().vec(), t.data_ptr<float>()});
  }
  EXPECT_TRUE((*engine)->LoadWeights(3, views).ok());
  return *std::move(engine);
}

// Runs the engine until every submitted group is back; results by request id.
std::map<uint64_t, FinishedGroup> RunAll(GenerationEngine& engine) {
  std::map<uint64_t, FinishedGroup> out;
  for (int guard = 0; !engine.idle() && guard < 100000; ++guard) {
    auto done = engine.Step();
    EXPECT_TRUE(done.ok()) << done.status();
    if (!done.ok()) break;
    for (FinishedGroup& g : *done) out[g.id] = std::move(g);
  }
  return out;
}

const std::vector<std::vector<int32_t>> kPrompts = {
    {3, 4, 5, 6, 7, 8, 9}, {10, 11}, {12}, {13, 14, 15, 16, 3, 3}};

TEST(GenerationEngineTest, GreedyMatchesTheReferenceSampler) {
  CausalLM model = TinyModel(1);
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = 12;
  p.stop_tokens = {2};
  Sampler reference(1);
  auto expected = reference.Generate(model, kPrompts, 2, p);

  EngineOptions o;
  o.temperature = 0;
  o.max_new_tokens = 12;
  o.stop_tokens = {2};
  o.max_rows = 3;  // fewer slots than rows: groups wait and are split across admissions
  o.max_context = 40;
  auto engine = EngineFor(model, o);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    ASSERT_TRUE(engine->Submit({i, kPrompts[i], 2}).ok());
  }
  auto got = RunAll(*engine);
  ASSERT_EQ(got.size(), kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(got[i].version, 3u);
    ASSERT_EQ(got[i].samples.size(), 2u);
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(got[i].samples[j].tokens, expected[i][j].tokens) << "prompt " << i << " row " << j;
      EXPECT_EQ(got[i].samples[j].stopped, expected[i][j].stopped);
      ASSERT_EQ(got[i].samples[j].logprobs.size(), expected[i][j].logprobs.size());
      for (size_t t = 0; t < expected[i][j].logprobs.size(); ++t) {
        EXPECT_NEAR(got[i].samples[j].logprobs[t], expected[i][j].logprobs[t], 1e-4);
      }
    }
  }
}

TEST(GenerationEngineTest, LogProbsEqualAFreshForward) {
  CausalLM model = TinyModel(2);
  for (double temperature : {1.0, 0.7}) {
    for (double top_p : {1.0, 0.8}) {
      EngineOptions o;
      o.temperature = temperature;
      o.top_p = top_p;
      o.max_new_tokens = 10;
      o.stop_tokens = {2};
      o.max_rows = 4;
      o.max_context = 40;
      o.seed = 11;
      auto engine = EngineFor(model, o);
      for (size_t i = 0; i < kPrompts.size(); ++i) {
        ASSERT_TRUE(engine->Submit({i, kPrompts[i], 3}).ok());
      }
      auto got = RunAll(*engine);
      ASSERT_EQ(got.size(), kPrompts.size());
      for (size_t i = 0; i < kPrompts.size(); ++i) {
        for (const RolloutSample& s : got[i].samples) {
          ASSERT_FALSE(s.tokens.empty());
          EXPECT_TRUE(s.stopped || s.tokens.size() == 10u);
          std::vector<float> fresh = Rescore(model, kPrompts[i], s.tokens, temperature);
          for (size_t t = 0; t < fresh.size(); ++t) {
            EXPECT_NEAR(s.logprobs[t], fresh[t], 1e-4) << "T " << temperature << " top_p " << top_p;
          }
        }
      }
    }
  }
}

// Counts of (first, second) token pairs over many draws from one prompt.
std::map<std::pair<int32_t, int32_t>, int> PairCounts(
    const std::vector<std::vector<int32_t>>& draws) {
  std::map<std::pair<int32_t, int32_t>, int> counts;
  for (const auto& d : draws) counts[{d[0], d[1]}]++;
  return counts;
}

TEST(GenerationEngineTest, SamplesTheSameDistributionAsTheReferenceSampler) {
  CausalLM model = TinyModel(3);
  const std::vector<int32_t> prompt = {5, 9, 4, 7};
  constexpr int kDraws = 6000;
  for (double top_p : {1.0, 0.7}) {
    SamplingParams p;
    p.max_new_tokens = 2;
    p.top_p = top_p;
    Sampler reference(5);
    std::vector<std::vector<int32_t>> ref_draws;
    const auto reference_draws = reference.Generate(model, {prompt}, kDraws, p);
    for (const Sample& s : reference_draws[0]) {
      ref_draws.push_back(s.tokens);
    }
    EngineOptions o;
    o.max_new_tokens = 2;
    o.top_p = top_p;
    o.max_rows = 256;
    o.max_context = 16;
    o.seed = 6;
    auto engine = EngineFor(model, o);
    ASSERT_TRUE(engine->Submit({0, prompt, kDraws}).ok());
    auto got = RunAll(*engine);
    std::vector<std::vector<int32_t>> new_draws;
    for (const RolloutSample& s : got[0].samples) new_draws.push_back(s.tokens);
    ASSERT_EQ(new_draws.size(), static_cast<size_t>(kDraws));

    // Two-sample chi-square over the (first, second) token pairs seen at least 10 times in
    // all; rarer pairs pooled into one cell. Threshold: the 1e-6 upper quantile of the
    // chi-square with that many degrees of freedom (Wilson-Hilferty), so a correct engine
    // fails with odds of one in a million while a wrong distribution (a different
    // temperature, a skipped top-p, an off-by-one token) lands far above it.
    auto a = PairCounts(ref_draws), b = PairCounts(new_draws);
    std::map<std::pair<int32_t, int32_t>, std::pair<int, int>> cells;
    for (auto& [k, n] : a) cells[k].first += n;
    for (auto& [k, n] : b) cells[k].second += n;
    std::vector<std::pair<double, double>> table;
    std::pair<double, double> rare{0, 0};
    for (auto& [k, n] : cells) {
      if (top_p < 1.0) {
        // The nucleus never holds tokens outside it: the new engine never draws a pair the
        // reference never drew more than a handful of times.
        EXPECT_FALSE(n.first == 0 && n.second > 5) << "pair " << k.first << "," << k.second;
      }
      if (n.first + n.second >= 10) {
        table.push_back(n);
      } else {
        rare.first += n.first;
        rare.second += n.second;
      }
    }
    if (rare.first + rare.second > 0) table.push_back(rare);
    double chi2 = 0;
    for (auto [x, y] : table) {
      const double e = (x + y) / 2.0;  // equal sample sizes
      chi2 += (x - e) * (x - e) / e + (y - e) * (y - e) / e;
    }
    const double dof = static_cast<double>(table.size()) - 1;
    ASSERT_GT(dof, 5) << "the model's distribution is too peaked for this test";
    const double z = 4.753;  // upper 1e-6 normal quantile
    const double t = 1 - 2 / (9 * dof) + z * std::sqrt(2 / (9 * dof));
    EXPECT_LT(chi2, dof * t * t * t) << "top_p " << top_p << ": " << table.size() << " cells";
  }
}

TEST(GenerationEngineTest, ContinuousBatchingKeepsSlotsBusy) {
  CausalLM model = TinyModel(4);
  EngineOptions o;
  o.max_new_tokens = 40;
  o.stop_tokens = {0, 1, 2, 3, 4, 5, 6};  // rows end after geometric lengths, some at 40
  o.max_rows = 8;
  o.max_context = 48;
  o.seed = 3;
  auto engine = EngineFor(model, o);
  constexpr int kGroups = 16, kN = 4;
  for (int i = 0; i < kGroups; ++i) {
    ASSERT_TRUE(
        engine->Submit({static_cast<uint64_t>(i), {5, 6, static_cast<int32_t>(7 + i % 9)}, kN})
            .ok());
  }
  auto got = RunAll(*engine);
  ASSERT_EQ(got.size(), static_cast<size_t>(kGroups));
  int64_t tokens = 0, longest = 0;
  std::vector<int64_t> lengths;
  for (auto& [id, g] : got) {
    ASSERT_EQ(g.samples.size(), static_cast<size_t>(kN));
    for (const RolloutSample& s : g.samples) {
      tokens += static_cast<int64_t>(s.tokens.size());
      longest = std::max<int64_t>(longest, static_cast<int64_t>(s.tokens.size()));
      lengths.push_back(static_cast<int64_t>(s.tokens.size()));
    }
  }
  const EngineStats& st = engine->stats();
  ASSERT_GT(longest, 2 * tokens / (kGroups * kN)) << "lengths should be very uneven";
  // Each row's first token comes from its prefill; every other token is one row-step.
  EXPECT_EQ(st.row_steps, tokens - kGroups * kN);
  // Static batching of 8 rows would take the sum over batches of the longest row.
  int64_t static_steps = 0;
  for (size_t b = 0; b < lengths.size(); b += 8) {
    static_steps += *std::max_element(lengths.begin() + b, lengths.begin() + b + 8) - 1;
  }
  const int64_t ideal = (st.row_steps + o.max_rows - 1) / o.max_rows;
  EXPECT_LE(st.steps, ideal + longest) << "static batching would take " << static_steps;
  EXPECT_LT(st.steps, static_steps);
  std::printf(
      "continuous batching: %lld steps for %lld row-steps on %lld slots (ideal %lld, static "
      "%lld)\n",
      (long long)st.steps, (long long)st.row_steps, (long long)o.max_rows, (long long)ideal,
      (long long)static_steps);
}

TEST(GenerationEngineTest, RefusesBadRequestsWithoutLosingOthers) {
  CausalLM model = TinyModel(5);
  EngineOptions o;
  o.max_new_tokens = 4;
  o.max_rows = 2;
  o.max_context = 12;  // prompts of up to 12 - 4 - 1 = 7 tokens
  auto engine = EngineFor(model, o);
  EXPECT_EQ(engine->longest_prompt(), 7);
  absl::Status too_long = engine->Submit({7, std::vector<int32_t>(8, 4), 2});
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("request 7"), std::string::npos) << too_long;
  EXPECT_NE(too_long.message().find("actor.max_context"), std::string::npos) << too_long;
  EXPECT_EQ(engine->Submit({8, {}, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit({9, {3, 99}, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit({10, {3}, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine->idle());
  ASSERT_TRUE(engine->Submit({11, std::vector<int32_t>(7, 4), 3}).ok());
  // Weights cannot change under a group in flight.
  EXPECT_EQ(engine->LoadWeights(4, {}).code(), absl::StatusCode::kFailedPrecondition);
  auto got = RunAll(*engine);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[11].samples.size(), 3u);
  EXPECT_EQ(got[11].version, 3u);
  // Cancel drops what is in flight and leaves every slot free for the next group.
  ASSERT_TRUE(engine->Submit({12, {3, 4}, 5}).ok());
  ASSERT_TRUE(engine->Step().ok());
  engine->Cancel();
  EXPECT_TRUE(engine->idle());
  EXPECT_EQ(engine->active_rows(), 0);
  ASSERT_TRUE(engine->Submit({13, {3, 4}, 2}).ok());
  got = RunAll(*engine);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[13].samples.size(), 2u);
}

TEST(GenerationEngineTest, OptionsAreCheckedByName) {
  const ModelConfig c = TinyModelConfig("llama");
  EngineOptions o;
  o.max_rows = 0;
  absl::Status s = GenerationEngine::Create(c, o).status();
  EXPECT_NE(s.message().find("actor.max_rows"), std::string::npos) << s;
  o.max_rows = 1 << 30;
  s = GenerationEngine::Create(c, o).status();
  EXPECT_NE(s.message().find("actor.max_rows"), std::string::npos) << s;
  o.max_rows = 4;
  o.dtype = "int8";
  s = GenerationEngine::Create(c, o).status();
  EXPECT_NE(s.message().find("actor.dtype"), std::string::npos) << s;
  o.dtype = "bfloat16";
  o.max_context = 5;
  o.max_new_tokens = 8;
  s = GenerationEngine::Create(c, o).status();
  EXPECT_NE(s.message().find("actor.max_context"), std::string::npos) << s;
  o.max_context = 0;
  o.device = "tpu";
  s = GenerationEngine::Create(c, o).status();
  EXPECT_NE(s.message().find("actor.device"), std::string::npos) << s;
  o.device = "cpu";
  auto engine = GenerationEngine::Create(c, o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Step().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(GenerationEngineTest, HalfPrecisionSamplesWithExactFloat32LogProbsOfItsOwnWeights) {
  // bfloat16 on the CPU: the engine's log-probs are those of the bf16 model it ran.
  CausalLM model = TinyModel(6);
  EngineOptions o;
  o.dtype = "bfloat16";
  o.temperature = 0;
  o.max_new_tokens = 6;
  o.max_rows = 4;
  o.max_context = 20;
  auto engine = EngineFor(model, o);
  ASSERT_TRUE(engine->Submit({0, kPrompts[0], 2}).ok());
  auto got = RunAll(*engine);
  ASSERT_EQ(got[0].samples.size(), 2u);
  EXPECT_EQ(got[0].samples[0].tokens, got[0].samples[1].tokens);  // greedy
  CausalLM bf16 = TinyModel(6);
  bf16->to(at::kBFloat16);
  std::vector<float> fresh = Rescore(bf16, kPrompts[0], got[0].samples[0].tokens, 1.0);
  for (size_t t = 0; t < fresh.size(); ++t) {
    EXPECT_NEAR(got[0].samples[0].logprobs[t], fresh[t], 0.05);
  }
}

}  // namespace
}  // namespace pmdrl
