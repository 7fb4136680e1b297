// The loss family (learner/training/policy_loss.h): every loss's gradient against a central
// finite difference, on a float64 bigram policy (precise) and on the tiny transformer
// through the trainer's own float32 log-prob path (SamplingLogProbs); PMD-part's
// stability at τ = 0.001; GRPO/GSPO advantages and the gradient at θ = θ_old;
// importance weights; and Trainer::Update with each loss.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/arith_task.h"
#include "common/config.h"
#include "common/model_config.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "learner/training/grpo_loss.h"
#include "learner/training/pmd_part_advantage.h"
#include "learner/training/policy_loss.h"
#include "learner/training/sequence_logprobs.h"
#include "learner/training/trainer.h"
#include "tests/tiny_model_config.h"
#include "tests/weight_diff.h"

namespace pmdrl {
namespace {

using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

constexpr int64_t kVocab = 17;

// Groups of completions for a few prompts: prompt tokens, responses (ids 3..16 of
// varied lengths) and rewards ±1, one all-equal group among them.
struct Batch {
  std::vector<std::vector<int32_t>> prompts, responses;
  std::vector<double> rewards;
  std::vector<int> group_of;  // row -> group
  int groups = 0;
};

Batch MakeBatch(int groups, int k, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  b.groups = groups;
  for (int g = 0; g < groups; ++g) {
    std::vector<int32_t> prompt = {1, 3 + g, 5 + (g % 3), 4};
    for (int j = 0; j < k; ++j) {
      std::vector<int32_t> response;
      const int len = 1 + static_cast<int>(rng() % 5);
      for (int t = 0; t < len; ++t) response.push_back(3 + static_cast<int32_t>(rng() % 14));
      b.prompts.push_back(prompt);
      b.responses.push_back(response);
      // Group 1 is all correct: zero advantages under every loss.
      b.rewards.push_back(g == 1 ? 1.0 : (j % 2 == 0) == (g % 2 == 0) ? 1.0 : -1.0);
      b.group_of.push_back(g);
    }
  }
  return b;
}

PackedRows PackBatch(const Batch& b) {
  std::vector<const std::vector<int32_t>*> p, r;
  for (size_t i = 0; i < b.prompts.size(); ++i) {
    p.push_back(&b.prompts[i]);
    r.push_back(&b.responses[i]);
  }
  return Pack(p, r, /*pad=*/0);
}

// Advantages of every row under `kind`, group by group.
std::vector<double> Advantages(const Batch& b, LossKind kind, Baseline baseline, double tau) {
  std::vector<double> adv(b.rewards.size());
  for (int g = 0; g < b.groups; ++g) {
    std::vector<double> r;
    std::vector<size_t> rows;
    for (size_t i = 0; i < b.rewards.size(); ++i) {
      if (b.group_of[i] == g) {
        r.push_back(b.rewards[i]);
        rows.push_back(i);
      }
    }
    absl::StatusOr<std::vector<double>> a = LossAdvantages(r, kind, baseline, tau);
    EXPECT_TRUE(a.ok()) << a.status();
    for (size_t j = 0; j < rows.size(); ++j) adv[rows[j]] = (*a)[j];
  }
  return adv;
}

torch::Tensor Lengths(const PackedRows& packed) {
  std::vector<double> v(packed.response_lengths.begin(), packed.response_lengths.end());
  return torch::tensor(v, torch::kFloat64);
}

// A tiny float64 policy: next-token logits = W[current token] (a bigram table). The
// transformer computes softmax, norms and logits in float32, which caps a finite
// difference at ~1e-4; this one is float64 throughout, so 1e-6 is a real check.
struct Bigram {
  torch::Tensor w;
  explicit Bigram(uint64_t seed) {
    torch::manual_seed(seed);
    w = torch::randn({kVocab, kVocab}, torch::kFloat64).requires_grad_(true);
  }
  torch::Tensor TokenLogProbs(const PackedRows& packed, const torch::Tensor& weights) const {
    torch::Tensor logp = torch::log_softmax(torch::embedding(weights, packed.input), -1);
    return NextTokenLogProbs(logp, packed.input, packed.response_mask);
  }
};

struct Case {
  std::string name;
  PolicyLossOptions opt;
  Baseline baseline = Baseline::kMean;
  bool weighted = false;
};

std::vector<Case> Cases(int64_t n, double max_length) {
  auto make = [&](std::string name, LossKind kind) {
    Case c;
    c.name = std::move(name);
    c.opt.kind = kind;
    c.opt.tau = 0.5;
    c.opt.clip_eps = 0.2;
    c.opt.seq_clip_eps = 0.05;   // larger than the default so both branches occur here
    c.opt.global_count = n + 3;  // as if other ranks held 3 more completions
    c.opt.max_length = max_length;
    return c;
  };
  std::vector<Case> cases = {make("pmd_mean", LossKind::kPmdMean),
                             make("pmd_mean_loo", LossKind::kPmdMean),
                             make("pmd_mean_max", LossKind::kPmdMean),
                             make("pmd_part", LossKind::kPmdPart),
                             make("grpo", LossKind::kGrpo),
                             make("gspo", LossKind::kGspo),
                             make("pmd_mean_weighted", LossKind::kPmdMean),
                             make("grpo_weighted", LossKind::kGrpo),
                             make("gspo_weighted", LossKind::kGspo)};
  cases[1].baseline = Baseline::kLeaveOneOut;
  cases[2].opt.norm = LengthNorm::kMax;
  for (size_t i = 6; i < cases.size(); ++i) cases[i].weighted = true;
  return cases;
}

double RelErr(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

TEST(PolicyLossTest, GradientMatchesFiniteDifferenceFloat64) {
  const Batch batch = MakeBatch(/*groups=*/3, /*k=*/4, /*seed=*/5);
  const PackedRows packed = PackBatch(batch);
  const int64_t n = static_cast<int64_t>(batch.rewards.size());
  Bigram policy(7);
  // π_old: the same policy at perturbed weights, so that Δ ≠ 0 and token ratios spread
  // well past GRPO's clip range on both sides.
  torch::Tensor w_old = policy.w.detach() + 0.3 * torch::randn_like(policy.w);
  const torch::Tensor lp_old = policy.TokenLogProbs(packed, w_old).detach();
  const torch::Tensor direction = torch::randn_like(policy.w);
  const torch::Tensor weights = torch::tensor(
      {0.5, 1.0, 2.0, 0.0, 1.5, 0.25, 1.0, 0.75, 1.25, 2.0, 0.1, 1.0}, torch::kFloat64);
  ASSERT_EQ(weights.size(0), n);
  const double max_length = Lengths(packed).max().item<double>();

  for (const Case& c : Cases(n, max_length)) {
    SCOPED_TRACE(c.name);
    PolicyLossInputs in;
    in.token_logp_old = lp_old;
    in.mask = packed.response_mask;
    in.advantages =
        torch::tensor(Advantages(batch, c.opt.kind, c.baseline, c.opt.tau), torch::kFloat64);
    in.lengths = Lengths(packed);
    if (c.weighted) in.weights = weights;
    auto loss_at = [&](const torch::Tensor& w) {
      PolicyLossInputs x = in;
      x.token_logp_new = policy.TokenLogProbs(packed, w);
      EXPECT_TRUE(ValidatePolicyLossInputs(x, c.opt).ok()) << ValidatePolicyLossInputs(x, c.opt);
      return PolicyLoss(x, c.opt);
    };

    // Both sides of the clip occur, and no ratio lies within 1e-4 of a boundary (where
    // the loss has a kink and a finite difference means nothing).
    {
      torch::NoGradGuard no_grad;
      const torch::Tensor lp_new = policy.TokenLogProbs(packed, policy.w);
      const torch::Tensor mask = packed.response_mask > 0;
      const torch::Tensor adv = in.advantages.unsqueeze(1).expand_as(lp_new);
      if (c.opt.kind == LossKind::kGrpo) {
        const torch::Tensor rho = (lp_new - lp_old).exp().masked_select(mask);
        const torch::Tensor a = adv.masked_select(mask);
        const double eps = c.opt.clip_eps;
        EXPECT_GT(torch::min((rho - (1 + eps)).abs(), (rho - (1 - eps)).abs()).min().item<double>(),
                  1e-4);
        const torch::Tensor clipped = ((rho > 1 + eps) & (a > 0)) | ((rho < 1 - eps) & (a < 0));
        EXPECT_GE(clipped.sum().item<int64_t>(), 2);
        EXPECT_GE((~clipped & (a != 0)).sum().item<int64_t>(), 2);
      }
      if (c.opt.kind == LossKind::kGspo) {
        const torch::Tensor s =
            (MaskedRowSums(lp_new - lp_old, packed.response_mask) / in.lengths).exp();
        const double eps = c.opt.seq_clip_eps;
        EXPECT_GT(torch::min((s - (1 + eps)).abs(), (s - (1 - eps)).abs()).min().item<double>(),
                  1e-4);
        const torch::Tensor clipped =
            ((s > 1 + eps) & (in.advantages > 0)) | ((s < 1 - eps) & (in.advantages < 0));
        EXPECT_GE(clipped.sum().item<int64_t>(), 1);
        EXPECT_GE((~clipped & (in.advantages != 0)).sum().item<int64_t>(), 1);
      }
    }

    if (policy.w.grad().defined()) policy.w.mutable_grad().zero_();
    torch::Tensor loss = loss_at(policy.w);
    ASSERT_EQ(loss.dim(), 0);
    ASSERT_TRUE(std::isfinite(loss.item<double>()));
    loss.backward();
    const double analytic = (policy.w.grad() * direction).sum().item<double>();
    const double h = 1e-5;
    torch::NoGradGuard no_grad;
    const double plus = loss_at(policy.w + h * direction).item<double>();
    const double minus = loss_at(policy.w - h * direction).item<double>();
    const double numeric = (plus - minus) / (2 * h);
    EXPECT_GT(std::abs(analytic), 1e-3) << "a vanishing gradient would make the check vacuous";
    EXPECT_LT(RelErr(analytic, numeric), 1e-6) << analytic << " vs " << numeric;
    std::printf("%s float64: directional derivative %.6g, relative error %.2g\n", c.name.c_str(),
                analytic, RelErr(analytic, numeric));
  }
}

// The same check through the trainer's float32 path: the tiny transformer, its logits
// through SamplingLogProbs and NextTokenLogProbs. float32 limits the agreement to ~1e-3.
TEST(PolicyLossTest, GradientMatchesFiniteDifferenceOnTinyTransformer) {
  const Batch batch = MakeBatch(/*groups=*/2, /*k=*/4, /*seed=*/9);
  const PackedRows packed = PackBatch(batch);
  const int64_t n = static_cast<int64_t>(batch.rewards.size());
  torch::manual_seed(3);
  const ModelConfig mc = TinyModelConfig("llama");
  CausalLM model(mc);
  const std::vector<int64_t> never = NeverSampledTokens(mc);
  std::vector<torch::Tensor> params = model->parameters();
  auto token_lp = [&] {
    torch::Tensor logits = model->forward(packed.input, packed.positions, packed.valid);
    return NextTokenLogProbs(SamplingLogProbs(logits, 1.0, never), packed.input,
                             packed.response_mask);
  };
  auto add = [&](const std::vector<torch::Tensor>& dirs, double scale) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].add_(dirs[i], scale);
  };
  std::vector<torch::Tensor> saved, noise, direction;
  double dir_norm2 = 0;
  for (const torch::Tensor& p : params) {
    saved.push_back(p.detach().clone());
    noise.push_back(torch::randn_like(p));
    direction.push_back(torch::randn_like(p));
    dir_norm2 += direction.back().square().sum().item<double>();
  }
  for (torch::Tensor& d : direction) d /= std::sqrt(dir_norm2);  // unit length
  auto restore = [&] {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
  };
  // π_old a little away from θ: Δ ≠ 0, ratios near 1 and far from every clip boundary.
  add(noise, 1e-4);
  torch::Tensor lp_old;
  {
    torch::NoGradGuard no_grad;
    lp_old = token_lp();
  }
  restore();
  {
    // Ratios within 1% of 1: far inside every clip range below, even after the
    // finite-difference steps.
    torch::NoGradGuard no_grad;
    const double max_log_ratio = (token_lp() - lp_old).abs().max().item<double>();
    EXPECT_GT(max_log_ratio, 0.0);
    EXPECT_LT(max_log_ratio, 0.01);
  }

  for (const Case& c : Cases(n, 5.0)) {
    if (c.weighted) continue;
    SCOPED_TRACE(c.name);
    PolicyLossInputs in;
    in.token_logp_old = lp_old;
    in.mask = packed.response_mask;
    in.advantages = torch::tensor(Advantages(batch, c.opt.kind, c.baseline, c.opt.tau));
    in.lengths = Lengths(packed).to(torch::kFloat32);
    auto loss = [&] {
      PolicyLossInputs x = in;
      x.token_logp_new = token_lp();
      EXPECT_TRUE(ValidatePolicyLossInputs(x, c.opt).ok());
      return PolicyLoss(x, c.opt);
    };
    model->zero_grad();
    torch::Tensor l = loss();
    l.backward();
    double analytic = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].grad().defined()) {
        analytic += (params[i].grad() * direction[i]).sum().item<double>();
      }
    }
    const double h = 1e-2;
    double plus, minus;
    {
      torch::NoGradGuard no_grad;
      add(direction, h);
      plus = loss().item<double>();
      restore();
      add(direction, -h);
      minus = loss().item<double>();
      restore();
    }
    const double numeric = (plus - minus) / (2 * h);
    EXPECT_GT(std::abs(analytic), 1e-4);
    EXPECT_LT(RelErr(analytic, numeric), 1e-2) << analytic << " vs " << numeric;
    std::printf("%s float32: directional derivative %.6g, relative error %.2g\n", c.name.c_str(),
                analytic, RelErr(analytic, numeric));
  }
}

TEST(PolicyLossTest, ClippedGrpoTokenHasZeroGradient) {
  // Two sequences of 2 tokens, A = (+1, −1), ε = 0.2, log-ratios chosen per token:
  // row 0: ρ = e^0.5 (> 1.2, A > 0: clipped) and e^0.1 (inside: live);
  // row 1: ρ = e^-0.5 (< 0.8, A < 0: clipped) and e^0.5 (A < 0, unclipped branch is the
  // min: live, the pessimistic side of PPO).
  torch::Tensor old = torch::zeros({2, 3}, torch::kFloat64);
  torch::Tensor lp = torch::tensor({0.5, 0.1, 0.0, -0.5, 0.5, 0.0}, torch::kFloat64)
                         .view({2, 3})
                         .requires_grad_(true);
  PolicyLossInputs in;
  in.token_logp_new = lp;
  in.token_logp_old = old;
  in.mask = torch::tensor({1.f, 1.f, 0.f, 1.f, 1.f, 0.f}).view({2, 3});
  in.advantages = torch::tensor({1.0, -1.0}, torch::kFloat64);
  in.lengths = torch::tensor({2.0, 2.0}, torch::kFloat64);
  PolicyLossOptions opt;
  opt.kind = LossKind::kGrpo;
  opt.global_count = 2;
  ASSERT_TRUE(ValidatePolicyLossInputs(in, opt).ok());
  PolicyLoss(in, opt).backward();
  auto g = lp.grad().accessor<double, 2>();
  EXPECT_EQ(g[0][0], 0.0);
  EXPECT_EQ(g[1][0], 0.0);
  EXPECT_EQ(g[0][2], 0.0);  // outside the mask
  // d/dlp of −ρA/(L·N) = −ρA/4.
  EXPECT_NEAR(g[0][1], -std::exp(0.1) / 4, 1e-15);
  EXPECT_NEAR(g[1][1], std::exp(0.5) / 4, 1e-15);
}

TEST(PolicyLossTest, PmdPartIsStableAtSmallTau) {
  const double tau = 0.001;
  for (int k = 2; k <= 16; ++k) {
    for (int n_plus = 0; n_plus <= k; ++n_plus) {
      std::vector<double> r(k, -1.0);
      for (int i = 0; i < n_plus; ++i) r[i] = 1.0;
      // The correct ones anywhere in the group, not only at the front.
      std::shuffle(r.begin(), r.end(), std::mt19937(31 * k + n_plus));
      int count = 0;
      for (double x : r) count += x > 0;
      ASSERT_EQ(count, n_plus);
      absl::StatusOr<std::vector<double>> adv = PmdPartAdvantages(r, tau);
      ASSERT_TRUE(adv.ok()) << adv.status();
      for (int j = 0; j < k; ++j) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n_plus=" << count << " j=" << j);
        const double a = (*adv)[j];
        ASSERT_TRUE(std::isfinite(a));
        if (count == 0 || count == k) {
          EXPECT_EQ(a, 0.0);
          continue;
        }
        const int others = count - (r[j] > 0 ? 1 : 0);
        // exp(−2/τ) = exp(−2000) is 0 in double: only the correct others count.
        const double want = others > 0
                                ? r[j] - 1 - tau * std::log(static_cast<double>(others) / (k - 1))
                                : r[j] + 1;
        EXPECT_NEAR(a, want, 1e-12);
      }
    }
  }
  // The loss and its gradient stay finite with those advantages.
  const Batch batch = MakeBatch(3, 6, 13);
  const PackedRows packed = PackBatch(batch);
  Bigram policy(21);
  const torch::Tensor lp_old =
      policy.TokenLogProbs(packed, policy.w.detach() + 0.1 * torch::randn_like(policy.w)).detach();
  PolicyLossInputs in;
  in.token_logp_new = policy.TokenLogProbs(packed, policy.w);
  in.token_logp_old = lp_old;
  in.mask = packed.response_mask;
  in.advantages =
      torch::tensor(Advantages(batch, LossKind::kPmdPart, Baseline::kMean, tau), torch::kFloat64);
  in.lengths = Lengths(packed);
  PolicyLossOptions opt;
  opt.kind = LossKind::kPmdPart;
  opt.tau = tau;
  opt.global_count = static_cast<int64_t>(batch.rewards.size());
  ASSERT_TRUE(ValidatePolicyLossInputs(in, opt).ok());
  torch::Tensor loss = PolicyLoss(in, opt);
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_TRUE(torch::isfinite(policy.w.grad()).all().item<bool>());
  EXPECT_GT(policy.w.grad().abs().max().item<double>(), 0.0);
  // k < 2 and τ <= 0 are errors.
  EXPECT_FALSE(PmdPartAdvantages({1.0}, tau).ok());
  EXPECT_FALSE(PmdPartAdvantages({1.0, -1.0}, 0.0).ok());
}

TEST(PolicyLossTest, GroupNormalizedAdvantages) {
  // r = (1, −1, −1, −1): mean −0.5, sample variance (2.25 + 3·0.25)/3 = 1.
  auto a = GroupNormalizedAdvantages({1, -1, -1, -1});
  ASSERT_TRUE(a.ok());
  const double d = 1.0 + 1e-6;
  EXPECT_THAT(*a, Pointwise(DoubleNear(1e-15), {1.5 / d, -0.5 / d, -0.5 / d, -0.5 / d}));
  // r = (1, 0): mean 0.5, sample std sqrt(0.5) (the population std would be 0.5).
  auto b = GroupNormalizedAdvantages({1, 0});
  ASSERT_TRUE(b.ok());
  const double s = std::sqrt(0.5) + 1e-6;
  EXPECT_THAT(*b, Pointwise(DoubleNear(1e-15), {0.5 / s, -0.5 / s}));
  // All equal: exactly zero (not a rounding residue divided by 1e-6).
  EXPECT_THAT(*GroupNormalizedAdvantages({0.1, 0.1, 0.1}), ::testing::Each(0.0));
  EXPECT_FALSE(GroupNormalizedAdvantages({1.0}).ok());
  EXPECT_FALSE(GroupNormalizedAdvantages({1.0, NAN}).ok());
  // Dispatch: every kind gives zeros for an all-equal group.
  for (LossKind kind : {LossKind::kPmdMean, LossKind::kPmdPart, LossKind::kGrpo, LossKind::kGspo}) {
    auto z = LossAdvantages({-1, -1, -1}, kind, Baseline::kLeaveOneOut, 0.01);
    ASSERT_TRUE(z.ok());
    EXPECT_THAT(*z, ::testing::Each(0.0));
  }
  EXPECT_THAT(*LossAdvantages({1, -1}, LossKind::kGspo, Baseline::kMean, 1.0),
              Pointwise(DoubleNear(1e-12), *GroupNormalizedAdvantages({1, -1})));
}

TEST(PolicyLossTest, AtOldPolicyEveryLossIsReinforceWithOneOverL) {
  // At θ = θ_old (ratio 1, Δ = 0) GRPO and GSPO have value −Σ_j A_j/N, PMD-mean has
  // Σ_j A_j²/(2τL_j)/N, and all three have gradient −A_j/(L_j·N) per response token.
  const std::vector<double> adv = {1.5, -0.5, 0.0};
  const std::vector<double> len = {1, 2, 3};
  const int64_t n = 4;  // global count, larger than the local 3
  for (LossKind kind : {LossKind::kPmdMean, LossKind::kGrpo, LossKind::kGspo}) {
    torch::Tensor lp =
        torch::tensor({-1.0, 0.0, 0.0, -0.5, -2.0, 0.0, -0.1, -0.2, -0.3}, torch::kFloat64)
            .view({3, 3})
            .requires_grad_(true);
    PolicyLossInputs in;
    in.token_logp_new = lp;
    in.token_logp_old = lp.detach().clone();
    in.mask = torch::tensor({1.f, 0.f, 0.f, 1.f, 1.f, 0.f, 1.f, 1.f, 1.f}).view({3, 3});
    in.advantages = torch::tensor(adv, torch::kFloat64);
    in.lengths = torch::tensor(len, torch::kFloat64);
    PolicyLossOptions opt;
    opt.kind = kind;
    opt.tau = 0.5;
    opt.global_count = n;
    ASSERT_TRUE(ValidatePolicyLossInputs(in, opt).ok());
    torch::Tensor loss = PolicyLoss(in, opt);
    double want = 0;
    for (int j = 0; j < 3; ++j) {
      want += kind == LossKind::kPmdMean ? adv[j] * adv[j] / (2 * 0.5 * len[j]) : -adv[j];
    }
    EXPECT_NEAR(loss.item<double>(), want / n, 1e-15);
    loss.backward();
    auto g = lp.grad().accessor<double, 2>();
    auto m = in.mask.accessor<float, 2>();
    for (int j = 0; j < 3; ++j) {
      for (int t = 0; t < 3; ++t) {
        EXPECT_NEAR(g[j][t], m[j][t] > 0 ? -adv[j] / (len[j] * n) : 0.0, 1e-15)
            << static_cast<int>(kind) << " " << j << "," << t;
      }
    }
  }
}

TEST(PolicyLossTest, WeightsScaleEachSequenceBeforeTheMean) {
  const Batch batch = MakeBatch(2, 3, 17);
  const PackedRows packed = PackBatch(batch);
  const int64_t n = static_cast<int64_t>(batch.rewards.size());
  Bigram policy(4);
  const torch::Tensor lp_new = policy.TokenLogProbs(packed, policy.w).detach();
  const torch::Tensor lp_old =
      policy.TokenLogProbs(packed, policy.w.detach() + 0.2 * torch::randn_like(policy.w)).detach();
  const torch::Tensor w = torch::tensor({0.5, 2.0, 1.0, 0.0, 1.25, 0.75}, torch::kFloat64);
  for (const Case& c : Cases(n, 5.0)) {
    if (c.weighted) continue;
    SCOPED_TRACE(c.name);
    PolicyLossInputs in;
    in.token_logp_new = lp_new;
    in.token_logp_old = lp_old;
    in.mask = packed.response_mask;
    in.advantages =
        torch::tensor(Advantages(batch, c.opt.kind, c.baseline, c.opt.tau), torch::kFloat64);
    in.lengths = Lengths(packed);
    const double unweighted = PolicyLoss(in, c.opt).item<double>();
    // ℓ_j / global_count, one completion at a time.
    double expected = 0, sum_parts = 0;
    for (int64_t j = 0; j < n; ++j) {
      PolicyLossInputs one = in;
      one.weights = torch::zeros({n}, torch::kFloat64);
      one.weights[j] = 1.0;
      const double part = PolicyLoss(one, c.opt).item<double>();
      expected += w[j].item<double>() * part;
      sum_parts += part;
    }
    EXPECT_NEAR(sum_parts, unweighted, 1e-12);
    in.weights = w;
    ASSERT_TRUE(ValidatePolicyLossInputs(in, c.opt).ok());
    EXPECT_NEAR(PolicyLoss(in, c.opt).item<double>(), expected, 1e-12);
    in.weights = torch::tensor({1.0, 1.0, -1.0, 1.0, 1.0, 1.0}, torch::kFloat64);
    EXPECT_FALSE(ValidatePolicyLossInputs(in, c.opt).ok());
  }
}

TEST(PolicyLossTest, ValidateChecksOptionsAndShapes) {
  PolicyLossInputs in;
  in.token_logp_new = torch::zeros({2, 3}, torch::kFloat64);
  in.token_logp_old = torch::zeros({2, 3}, torch::kFloat64);
  in.mask = torch::tensor({1.f, 1.f, 0.f, 0.f, 1.f, 0.f}).view({2, 3});
  in.advantages = torch::zeros({2}, torch::kFloat64);
  in.lengths = torch::tensor({2.0, 1.0}, torch::kFloat64);
  PolicyLossOptions opt;
  opt.kind = LossKind::kGrpo;
  opt.global_count = 2;
  EXPECT_TRUE(ValidatePolicyLossInputs(in, opt).ok());
  PolicyLossOptions o = opt;
  o.clip_eps = 1.0;
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(in, o).message()), HasSubstr("clip_eps"));
  o = opt;
  o.kind = LossKind::kGspo;
  o.seq_clip_eps = 0;
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(in, o).message()), HasSubstr("seq_clip_eps"));
  o = opt;
  o.global_count = 1;
  EXPECT_FALSE(ValidatePolicyLossInputs(in, o).ok());
  o = opt;
  o.kind = LossKind::kPmdPart;
  o.norm = LengthNorm::kMax;
  EXPECT_FALSE(ValidatePolicyLossInputs(in, o).ok());  // max_length 0
  PolicyLossInputs x = in;
  x.lengths = torch::tensor({2.0, 2.0}, torch::kFloat64);  // row 1 has one masked token
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, opt).message()), HasSubstr("mask"));
  x = in;
  x.token_logp_old = torch::zeros({2, 2}, torch::kFloat64);
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, opt).message()), HasSubstr("token_logp_old"));
  x = in;
  x.token_logp_old = torch::Tensor();
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, opt).message()), HasSubstr("token_logp_old"));
  // What the PMD losses need (PmdMeanLoss's preconditions).
  o = opt;
  o.kind = LossKind::kPmdMean;
  EXPECT_TRUE(ValidatePolicyLossInputs(in, o).ok());
  o.tau = 0;
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(in, o).message()), HasSubstr("tau"));
  o.tau = 1;
  x = in;
  x.advantages = torch::zeros({1}, torch::kFloat64);
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, o).message()), HasSubstr("advantages"));
  x = in;
  x.weights = torch::ones({1}, torch::kFloat64);
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, o).message()), HasSubstr("weights"));
  x = in;
  x.lengths = torch::tensor({2.0, 0.0}, torch::kFloat64);
  EXPECT_THAT(std::string(ValidatePolicyLossInputs(x, o).message()), HasSubstr("length"));
}

TEST(SequenceLogProbsTest, PackAndResponseValues) {
  std::vector<int32_t> p0 = {1, 5}, r0 = {7, 2}, p1 = {1, 6, 6}, r1 = {9};
  PackedRows packed = Pack({&p0, &p1}, {&r0, &r1}, 0);
  EXPECT_EQ(packed.tokens, 8);
  EXPECT_EQ(packed.response_mask.sum(1).to(torch::kFloat64).sum().item<double>(), 3.0);
  absl::StatusOr<at::Tensor> v = ResponseTokenValues(packed, {{-0.5f, -1.5f}, {-2.0f}});
  ASSERT_TRUE(v.ok()) << v.status();
  auto a = v->accessor<float, 2>();
  EXPECT_EQ(a[0][1], -0.5f);  // token 2 of row 0 is scored at position 1
  EXPECT_EQ(a[0][2], -1.5f);
  EXPECT_EQ(a[1][2], -2.0f);
  EXPECT_EQ(a[0][0], 0.0f);
  EXPECT_FALSE(ResponseTokenValues(packed, {{-0.5f}, {-2.0f}}).ok());
  // Masked-out -inf does not poison the row sums.
  torch::Tensor t = torch::full({2, 3}, -INFINITY);
  t.masked_fill_(packed.response_mask > 0, 1.0);
  EXPECT_TRUE(torch::equal(MaskedRowSums(t, packed.response_mask), torch::tensor({2.f, 1.f})));
}

// Trainer::Update with each loss on the tiny transformer.
std::vector<v1::Group> TrainerGroups(const Tokenizer& tok, float actor_logprob) {
  std::mt19937 rng(3);
  ArithTask task({2, "+"}, 5, 10);
  std::vector<v1::Group> groups;
  for (int g = 0; g < 4; ++g) {
    ArithProblem p = task.Train(3, g);
    v1::Group group;
    for (int32_t t : ArithPromptTokens(tok, p)) group.add_prompt_tokens(t);
    for (int c = 0; c < 4; ++c) {
      v1::Completion* comp = group.add_completions();
      const int len = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < len; ++i) {
        comp->add_tokens(i + 1 == len ? tok.EosId() : 3 + static_cast<int>(rng() % 10));
        comp->add_logprobs(actor_logprob);
      }
      comp->set_reward(g == 3 ? 1.f : (c + g) % 3 == 0 ? 1.f : -1.f);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

Config TrainerConfig(const std::vector<std::string>& extra) {
  std::vector<std::string> o = {"model.hidden_size=32",   "model.intermediate_size=64",
                                "model.num_layers=2",     "model.num_heads=4",
                                "model.num_kv_heads=2",   "model.max_position=32",
                                "learner.mini_batches=2", "learner.lr=0.001",
                                "learner.warmup_steps=0", "learner.tau=0.5",
                                "task.digits=2"};
  o.insert(o.end(), extra.begin(), extra.end());
  absl::StatusOr<Config> c = LoadConfig("", o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(PolicyLossTrainerTest, EveryLossTrains) {
  CharTokenizer tok;
  for (std::string loss : {"pmd_mean", "pmd_part", "grpo", "gspo"}) {
    SCOPED_TRACE(loss);
    Config config = TrainerConfig({"learner.loss=" + loss, "learner.old_logprobs=recompute"});
    auto trainer = Trainer::Create(config, tok, "");
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    auto before = (*trainer)->Snapshot(0);
    auto stats = (*trainer)->Update(TrainerGroups(tok, -1.0f), 0);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(std::isfinite(stats->loss));
    EXPECT_EQ(stats->equal_reward_groups, 1);
    EXPECT_EQ(stats->importance_weight_mean, 1.0);
    EXPECT_GT(LargestChange(*before, *(*trainer)->Snapshot(1)), 1e-5);
  }
  // An unknown loss name is refused when the configuration is loaded.
  absl::StatusOr<Config> bad = LoadConfig("", {"learner.loss=ppo"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("learner.loss"));
}

TEST(PolicyLossTrainerTest, ImportanceWeightsAreTruncated) {
  CharTokenizer tok;
  // The actor reported log-prob −20 per token: π_learner/π_actor is huge, so every
  // weight is the cap.
  {
    Config config = TrainerConfig({"learner.importance_weights=truncated", "learner.is_cap=1.5",
                                   "learner.old_logprobs=recompute"});
    auto trainer = Trainer::Create(config, tok, "");
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    auto stats = (*trainer)->Update(TrainerGroups(tok, -20.0f), 0);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->importance_weight_mean, 1.5);
    EXPECT_TRUE(std::isfinite(stats->loss));
  }
  // The actor reported probability 1 for every token: every weight is π_learner < 1.
  {
    Config config = TrainerConfig({"learner.importance_weights=truncated", "learner.loss=grpo",
                                   "learner.old_logprobs=recompute"});
    auto trainer = Trainer::Create(config, tok, "");
    ASSERT_TRUE(trainer.ok());
    auto before = (*trainer)->Snapshot(0);
    auto stats = (*trainer)->Update(TrainerGroups(tok, 0.0f), 0);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_GT(stats->importance_weight_mean, 0.0);
    EXPECT_LT(stats->importance_weight_mean, 1.0);
    EXPECT_GT(LargestChange(*before, *(*trainer)->Snapshot(1)), 1e-6);
  }
}

}  // namespace
}  // namespace pmdrl
