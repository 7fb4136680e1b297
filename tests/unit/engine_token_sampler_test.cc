// The engine's token sampler on a vocabulary of several 1024-token blocks and a partial
// one: draw frequencies match the softmax (two-level inverse CDF), never-sampled ids
// are never drawn, top-p keeps exactly the nucleus, and log-probs are the full
// distribution's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "common/nn/logprobs.h"
#include "engine/token_sampler.h"

namespace pmdrl {
namespace {

constexpr int64_t kVocab = 2500;  // 2 full blocks and a tail of 452
constexpr int64_t kDraws = 20000;

// kDraws draws from one row of logits, 1000 rows per call (bounded memory).
std::pair<at::Tensor, at::Tensor> DrawMany(TokenSampler& sampler, const at::Tensor& logits) {
  std::vector<at::Tensor> tokens, logprobs;
  for (int64_t done = 0; done < kDraws; done += 1000) {
    auto [t, lp] = sampler.Sample(logits.unsqueeze(0).expand({1000, kVocab}));
    tokens.push_back(t);
    logprobs.push_back(lp);
  }
  return {at::cat(tokens), at::cat(logprobs)};
}

// Upper 1e-6 quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty).
double ChiSquareLimit(double dof) {
  const double z = 4.753, t = 1 - 2 / (9 * dof) + z * std::sqrt(2 / (9 * dof));
  return dof * t * t * t;
}

// Pearson chi-square of the counts against expected probabilities, pooling cells
// expected below 5 draws.
std::pair<double, double> ChiSquare(const at::Tensor& counts, const at::Tensor& probs) {
  double chi2 = 0, pooled_obs = 0, pooled_exp = 0;
  int cells = 0;
  auto c = counts.accessor<int64_t, 1>();
  auto p = probs.accessor<double, 1>();
  for (int64_t i = 0; i < counts.size(0); ++i) {
    const double e = p[i] * kDraws;
    if (e < 5) {
      pooled_obs += c[i];
      pooled_exp += e;
      continue;
    }
    chi2 += (c[i] - e) * (c[i] - e) / e;
    ++cells;
  }
  if (pooled_exp > 0) {
    chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++cells;
  }
  return {chi2, cells - 1.0};
}

TEST(TokenSamplerTest, DrawsFollowTheSoftmaxAcrossBlocks) {
  torch::manual_seed(3);
  // Mass spread over every block, a few heavy tokens in the tail block.
  at::Tensor logits = torch::randn({kVocab}) * 1.5;
  logits.narrow(0, kVocab - 50, 10).add_(4.0);
  const std::vector<int64_t> never = {7, 1500, kVocab - 1};
  TokenSampler sampler({1.0, 1.0, never, 11}, at::kCPU);
  auto [tokens, logprobs] = DrawMany(sampler, logits);
  at::Tensor expected_lp = SamplingLogProbs(logits.unsqueeze(0), 1.0, never)[0];
  at::Tensor probs = expected_lp.exp().to(at::kDouble);
  at::Tensor counts = at::bincount(tokens, {}, kVocab);
  for (int64_t id : never) EXPECT_EQ(counts[id].item<int64_t>(), 0) << id;
  auto [chi2, dof] = ChiSquare(counts, probs);
  EXPECT_LT(chi2, ChiSquareLimit(dof)) << dof << " degrees of freedom";
  // Each draw's log-prob is the full distribution's at that token.
  EXPECT_TRUE(at::allclose(logprobs, expected_lp.index_select(0, tokens), 1e-5, 1e-5));
}

TEST(TokenSamplerTest, TopPKeepsTheNucleusAndRenormalises) {
  torch::manual_seed(4);
  at::Tensor logits = torch::randn({kVocab}) * 3.0;
  const double top_p = 0.6;
  TokenSampler sampler({0.8, top_p, {}, 12}, at::kCPU);
  auto [tokens, logprobs] = DrawMany(sampler, logits);
  at::Tensor lp = SamplingLogProbs(logits.unsqueeze(0), 0.8, {})[0].to(at::kDouble);
  auto [sorted, order] = lp.exp().sort(/*stable=*/true, 0, /*descending=*/true);
  at::Tensor before = sorted.cumsum(0) - sorted;
  at::Tensor keep = before.lt(top_p);
  at::Tensor nucleus = at::zeros({kVocab}, at::kDouble).index_put_({order}, sorted * keep);
  nucleus /= nucleus.sum();
  at::Tensor counts = at::bincount(tokens, {}, kVocab);
  EXPECT_EQ((counts.gt(0) & nucleus.eq(0)).sum().item<int64_t>(), 0)
      << "a token outside the nucleus was drawn";
  auto [chi2, dof] = ChiSquare(counts, nucleus);
  EXPECT_LT(chi2, ChiSquareLimit(dof)) << dof << " degrees of freedom";
  EXPECT_TRUE(at::allclose(logprobs, lp.to(at::kFloat).index_select(0, tokens), 1e-5, 1e-5));
}

TEST(TokenSamplerTest, GreedyTakesTheArgmaxWithTemperatureOneLogProbs) {
  at::Tensor logits = torch::randn({3, kVocab});
  TokenSampler sampler({0.0, 1.0, {}, 1}, at::kCPU);
  auto [tokens, logprobs] = sampler.Sample(logits);
  EXPECT_TRUE(tokens.equal(logits.argmax(-1)));
  at::Tensor lp = SamplingLogProbs(logits, 1.0, {});
  EXPECT_TRUE(at::allclose(logprobs, lp.gather(1, tokens.unsqueeze(1)).squeeze(1), 1e-5, 1e-5));
}

}  // namespace
}  // namespace pmdrl
