#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "learner/training/pmd_mean_loss.h"

namespace pmdrl {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::Pointwise;

torch::Tensor T(const std::vector<double>& v, bool requires_grad = false) {
  return torch::tensor(v, torch::kFloat64).requires_grad_(requires_grad);
}

std::vector<double> V(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Loss value and d loss / d logp_new.
struct LossAndGrad {
  double loss;
  std::vector<double> grad;
};

LossAndGrad Eval(const std::vector<double>& logp_new, const std::vector<double>& logp_old,
                 const std::vector<double>& adv, const std::vector<double>& len, double tau,
                 LengthNorm norm, double max_length, int64_t global_count) {
  PmdMeanInputs in{T(logp_new, true), T(logp_old), T(adv), T(len), {}};
  torch::Tensor loss = PmdMeanLoss(in, tau, norm, max_length, global_count);
  EXPECT_EQ(loss.dim(), 0);
  loss.backward();
  return {loss.item<double>(), V(in.logp_new.grad())};
}

TEST(PmdMeanLossTest, GroupAdvantages) {
  // r = (1, -1, -1). mean: b = -1/3, A = (4/3, -2/3, -2/3).
  auto mean = GroupAdvantages({1, -1, -1}, Baseline::kMean);
  ASSERT_TRUE(mean.ok());
  EXPECT_THAT(*mean, Pointwise(DoubleNear(1e-15), {4.0 / 3, -2.0 / 3, -2.0 / 3}));
  // loo: b_0 = (-1 - 1)/2 = -1, b_1 = b_2 = (1 - 1)/2 = 0: A = (2, -1, -1).
  auto loo = GroupAdvantages({1, -1, -1}, Baseline::kLeaveOneOut);
  ASSERT_TRUE(loo.ok());
  EXPECT_THAT(*loo, Pointwise(DoubleNear(1e-15), {2.0, -1.0, -1.0}));
  // loo = k/(k-1) * mean-advantage: (0.5, 0.25, 0) mean 0.25 -> (0.25, 0, -0.25) * 3/2.
  auto loo2 = GroupAdvantages({0.5, 0.25, 0.0}, Baseline::kLeaveOneOut);
  EXPECT_THAT(*loo2, Pointwise(DoubleNear(1e-15), {0.375, 0.0, -0.375}));
}

TEST(PmdMeanLossTest, AdvantageErrors) {
  EXPECT_FALSE(GroupAdvantages({}, Baseline::kMean).ok());
  absl::StatusOr<std::vector<double>> one = GroupAdvantages({1.0}, Baseline::kLeaveOneOut);
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(one.status().message()), ::testing::HasSubstr("loo"));
  EXPECT_THAT(*GroupAdvantages({1.0}, Baseline::kMean), ElementsAre(0.0));
  EXPECT_FALSE(GroupAdvantages({1.0, std::nan("")}, Baseline::kMean).ok());
}

TEST(PmdMeanLossTest, EqualRewardsGiveExactlyZeroAdvantagesAndGradient) {
  // 0.1 + 0.1 + 0.1 = 0.30000000000000004 in double, so a naive mean baseline would
  // leave advantages of about 1e-17: the group must be exactly neutral.
  const std::vector<double> r = {0.1, 0.1, 0.1};
  EXPECT_TRUE(AllRewardsEqual(r));
  EXPECT_TRUE(AllRewardsEqual({-1, -1}));
  EXPECT_FALSE(AllRewardsEqual({1, -1, 1}));
  for (Baseline b : {Baseline::kMean, Baseline::kLeaveOneOut}) {
    auto adv = GroupAdvantages(r, b);
    ASSERT_TRUE(adv.ok());
    EXPECT_THAT(*adv, ElementsAre(0.0, 0.0, 0.0));
    // At Δ = 0 (first step on the batch) such a group must not move θ.
    LossAndGrad lg =
        Eval({-1, -2, -3}, {-1, -2, -3}, *adv, {1, 2, 3}, 0.5, LengthNorm::kTokens, 0, 3);
    EXPECT_EQ(lg.loss, 0.0);
    EXPECT_THAT(lg.grad, ElementsAre(0.0, 0.0, 0.0));
  }
}

// Shared case: τ = 2, logp_new = (-1, -2, -1.25), logp_old = (-1.5, -2, -1),
// so Δ = (0.5, 0, -0.25) and τΔ = (1, 0, -0.5); L = (2, 4, 1); N = 3; 2τ = 4.
// d ℓ_j / d logp_new_j = 2·resid_j·(−τ) / (2τ·norm_j) = −resid_j / norm_j, then / N.
const std::vector<double> kNew = {-1.0, -2.0, -1.25};
const std::vector<double> kOld = {-1.5, -2.0, -1.0};
const std::vector<double> kLen = {2, 4, 1};
constexpr double kTau = 2.0;

TEST(PmdMeanLossTest, MeanBaselineTokenNorm) {
  // A = (4/3, -2/3, -2/3) (mean baseline of r = (1, -1, -1)).
  // resid = A − τΔ = (1/3, −2/3, −1/6).
  // ℓ = resid² / (4·L) = (1/9)/8, (4/9)/16, (1/36)/4 = 1/72, 1/36, 1/144 -> Σ = 7/144.
  // loss = 7/144 / 3 = 7/432.  grad = −resid/L/3 = (−1/18, 1/18, 1/18).
  std::vector<double> adv = *GroupAdvantages({1, -1, -1}, Baseline::kMean);
  LossAndGrad lg = Eval(kNew, kOld, adv, kLen, kTau, LengthNorm::kTokens, 0, 3);
  EXPECT_NEAR(lg.loss, 7.0 / 432, 1e-15);
  EXPECT_THAT(lg.grad, Pointwise(DoubleNear(1e-15), {-1.0 / 18, 1.0 / 18, 1.0 / 18}));
}

TEST(PmdMeanLossTest, MeanBaselineMaxNorm) {
  // Same resid; norm = max length 4 for all: ℓ = resid² / 16 = 1/144, 4/144, 1/576
  // -> Σ = 21/576, loss = 7/576.  grad = −resid/4/3 = (−1/36, 1/18, 1/72).
  std::vector<double> adv = *GroupAdvantages({1, -1, -1}, Baseline::kMean);
  LossAndGrad lg = Eval(kNew, kOld, adv, kLen, kTau, LengthNorm::kMax, 4, 3);
  EXPECT_NEAR(lg.loss, 7.0 / 576, 1e-15);
  EXPECT_THAT(lg.grad, Pointwise(DoubleNear(1e-15), {-1.0 / 36, 1.0 / 18, 1.0 / 72}));
}

TEST(PmdMeanLossTest, LooBaselineTokenNorm) {
  // A = (2, −1, −1); resid = (1, −1, −1/2).
  // ℓ = resid² / (4·L) = 1/8, 1/16, 1/16 -> Σ = 1/4, loss = 1/12.
  // grad = −resid/L/3 = (−1/6, 1/12, 1/6).
  std::vector<double> adv = *GroupAdvantages({1, -1, -1}, Baseline::kLeaveOneOut);
  LossAndGrad lg = Eval(kNew, kOld, adv, kLen, kTau, LengthNorm::kTokens, 0, 3);
  EXPECT_NEAR(lg.loss, 1.0 / 12, 1e-15);
  EXPECT_THAT(lg.grad, Pointwise(DoubleNear(1e-15), {-1.0 / 6, 1.0 / 12, 1.0 / 6}));
}

TEST(PmdMeanLossTest, LooBaselineMaxNorm) {
  // ℓ = resid² / 16 = 1/16, 1/16, 1/64 -> Σ = 9/64, loss = 3/64.
  // grad = −resid/4/3 = (−1/12, 1/12, 1/24).
  std::vector<double> adv = *GroupAdvantages({1, -1, -1}, Baseline::kLeaveOneOut);
  LossAndGrad lg = Eval(kNew, kOld, adv, kLen, kTau, LengthNorm::kMax, 4, 3);
  EXPECT_NEAR(lg.loss, 3.0 / 64, 1e-15);
  EXPECT_THAT(lg.grad, Pointwise(DoubleNear(1e-15), {-1.0 / 12, 1.0 / 12, 1.0 / 24}));
}

TEST(PmdMeanLossTest, AtZeroDeltaGradientIsLengthWeightedReinforce) {
  // Δ = 0: ∇ℓ_j = −(A_j/L_j)·∇logp_new_j (then / N), whatever τ is.
  const std::vector<double> adv = {1.5, -0.5, -1.0, 0.0};
  const std::vector<double> len = {3, 5, 2, 7};
  for (double tau : {0.01, 1.0, 3.0}) {
    LossAndGrad lg =
        Eval({-4, -1, -2, -3}, {-4, -1, -2, -3}, adv, len, tau, LengthNorm::kTokens, 0, 4);
    EXPECT_THAT(lg.grad,
                Pointwise(DoubleNear(1e-15), {-1.5 / 3 / 4, 0.5 / 5 / 4, 1.0 / 2 / 4, 0.0}));
    // loss = Σ A²/(2τL) / N.
    const double want = (1.5 * 1.5 / 3 + 0.25 / 5 + 1.0 / 2) / (2 * tau) / 4;
    EXPECT_NEAR(lg.loss, want, 1e-12 * want);
  }
}

TEST(PmdMeanLossTest, NoGradientIntoOldLogProbs) {
  PmdMeanInputs in{T({-1.0}, true), T({-2.0}, true), T({1.0}), T({2.0}), {}};
  PmdMeanLoss(in, 1.0, LengthNorm::kTokens, 0, 1).backward();
  EXPECT_TRUE(in.logp_new.grad().defined());
  EXPECT_FALSE(in.logp_old.grad().defined());
}

TEST(PmdMeanLossTest, FloatInputsMixWithDoubleAdvantages) {
  PmdMeanInputs in{torch::tensor({-1.0f, -2.0f, -1.25f}).requires_grad_(true),
                   torch::tensor({-1.5f, -2.0f, -1.0f}),
                   T({4.0 / 3, -2.0 / 3, -2.0 / 3}),
                   torch::tensor({2.0f, 4.0f, 1.0f}),
                   {}};
  torch::Tensor loss = PmdMeanLoss(in, kTau, LengthNorm::kTokens, 0, 3);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(loss.item<double>(), 7.0 / 432, 1e-7);
}

TEST(PmdMeanLossTest, SharesOfTheGlobalBatchSumToTheWhole) {
  const std::vector<double> nw = {-1.0, -2.0, -1.25, -0.5};
  const std::vector<double> od = {-1.5, -2.0, -1.0, -0.75};
  const std::vector<double> adv = {1.0, -1.0, 0.5, -0.5};
  const std::vector<double> len = {2, 4, 1, 3};
  for (LengthNorm norm : {LengthNorm::kTokens, LengthNorm::kMax}) {
    LossAndGrad whole = Eval(nw, od, adv, len, 0.7, norm, 4, 4);
    LossAndGrad a =
        Eval({nw[0], nw[1]}, {od[0], od[1]}, {adv[0], adv[1]}, {len[0], len[1]}, 0.7, norm, 4, 4);
    LossAndGrad b =
        Eval({nw[2], nw[3]}, {od[2], od[3]}, {adv[2], adv[3]}, {len[2], len[3]}, 0.7, norm, 4, 4);
    EXPECT_NEAR(a.loss + b.loss, whole.loss, 1e-15);
    EXPECT_GT(a.loss, 0);
    EXPECT_GT(b.loss, 0);
    EXPECT_THAT(whole.grad,
                Pointwise(DoubleNear(1e-15), {a.grad[0], a.grad[1], b.grad[0], b.grad[1]}));
    // A share divided by its own size would be twice as large: the count matters.
    LossAndGrad a_local =
        Eval({nw[0], nw[1]}, {od[0], od[1]}, {adv[0], adv[1]}, {len[0], len[1]}, 0.7, norm, 4, 2);
    EXPECT_NEAR(a_local.loss, 2 * a.loss, 1e-15);
  }
}

// logp_new_j = Σ_t log_softmax(logits_j,t)[token_j,t] over the first L_j steps, through
// a real (tiny) graph; the autograd gradient wrt the logits must match central
// differences of the loss.
TEST(PmdMeanLossTest, GradientThroughLogSoftmaxMatchesFiniteDifferences) {
  torch::manual_seed(3);
  const int64_t n = 3, steps = 4, vocab = 5;
  torch::Tensor logits = torch::randn({n, steps, vocab}, torch::kFloat64).requires_grad_(true);
  torch::Tensor tokens = torch::randint(vocab, {n, steps}, torch::kLong);
  torch::Tensor lengths = torch::tensor({4.0, 2.0, 3.0}, torch::kFloat64);
  torch::Tensor mask =
      (torch::arange(steps).unsqueeze(0) < lengths.unsqueeze(1)).to(torch::kFloat64);
  torch::Tensor adv = torch::tensor({1.0, -0.5, -0.5}, torch::kFloat64);

  auto sum_logp = [&](const torch::Tensor& lg) {
    return (torch::log_softmax(lg, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask).sum(-1);
  };
  // π_old: the logits before a small perturbation, so that Δ ≠ 0.
  torch::Tensor logp_old = sum_logp(logits.detach() - 0.1).detach();

  for (LengthNorm norm : {LengthNorm::kTokens, LengthNorm::kMax}) {
    auto loss_of = [&](const torch::Tensor& lg) {
      return PmdMeanLoss({sum_logp(lg), logp_old, adv, lengths, {}}, 0.3, norm, 4.0, n);
    };
    torch::Tensor grad = torch::autograd::grad({loss_of(logits)}, {logits})[0];
    ASSERT_GT(grad.abs().max().item<double>(), 1e-3);

    const double eps = 1e-6;
    torch::NoGradGuard no_grad;
    torch::Tensor base = logits.detach().clone();
    torch::Tensor flat = base.view({-1});
    std::vector<double> fd;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double x = flat[i].item<double>();
      flat[i] = x + eps;
      const double up = loss_of(base).item<double>();
      flat[i] = x - eps;
      const double down = loss_of(base).item<double>();
      flat[i] = x;
      fd.push_back((up - down) / (2 * eps));
    }
    EXPECT_THAT(V(grad.view({-1})), Pointwise(DoubleNear(1e-8), fd));
  }
}

// PmdMeanLoss's own checks (the full precondition check is ValidatePolicyLossInputs,
// tests/unit/learner_policy_loss_test.cc).
TEST(PmdMeanLossTest, ThrowsOnBadOptions) {
  PmdMeanInputs ok{T({-1, -2}, true), T({-1, -2}), T({1, -1}), T({2, 3}), {}};
  EXPECT_NO_THROW(PmdMeanLoss(ok, 1.0, LengthNorm::kTokens, 0, 2));
  EXPECT_THROW(PmdMeanLoss(ok, 0.0, LengthNorm::kTokens, 0, 2), c10::Error);
  EXPECT_THROW(PmdMeanLoss(ok, 1.0, LengthNorm::kTokens, 0, 0), c10::Error);
  EXPECT_THROW(PmdMeanLoss(ok, 1.0, LengthNorm::kMax, 0, 2), c10::Error);
  EXPECT_NO_THROW(PmdMeanLoss(ok, 1.0, LengthNorm::kMax, 3, 2));
}

// Importance weights scale each completion's term and carry no gradient.
TEST(PmdMeanLossTest, WeightsScaleEachCompletion) {
  PmdMeanInputs in{T({-1.0, -2.0}, true), T({-1.5, -2.0}), T({1.0, -1.0}), T({2.0, 4.0}),
                   T({2.0, 0.5}, true)};
  torch::Tensor loss = PmdMeanLoss(in, 0.5, LengthNorm::kTokens, 0, 2);
  // ℓ_0 = (1 − 0.5·0.5)²/(2·0.5·2) = 0.28125, ℓ_1 = (−1)²/(2·0.5·4) = 0.25.
  EXPECT_NEAR(loss.item<double>(), (2.0 * 0.28125 + 0.5 * 0.25) / 2, 1e-15);
  loss.backward();
  EXPECT_FALSE(in.weights.grad().defined());
  EXPECT_NEAR(in.logp_new.grad()[0].item<double>(), 2.0 * -(1 - 0.25) / 2 / 2, 1e-15);
}

}  // namespace
}  // namespace pmdrl
