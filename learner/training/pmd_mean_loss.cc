#include "learner/training/pmd_mean_loss.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace pmdrl {

bool AllRewardsEqual(const std::vector<double>& rewards) {
  for (double r : rewards) {
    if (r != rewards.front()) return false;
  }
  return true;
}

absl::StatusOr<std::vector<double>> GroupAdvantages(const std::vector<double>& rewards,
                                                    Baseline baseline) {
  const size_t k = rewards.size();
  if (k == 0) return absl::InvalidArgumentError("GroupAdvantages: empty group");
  for (size_t j = 0; j < k; ++j) {
    if (!std::isfinite(rewards[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupAdvantages: reward ", j, " is not finite: ", rewards[j]));
    }
  }
  if (baseline == Baseline::kLeaveOneOut && k < 2) {
    return absl::InvalidArgumentError(
        "GroupAdvantages: baseline loo needs a group of at least 2 completions");
  }
  // Equal rewards: the exact answer is 0, but (Σ r)/k need not round back to r
  // (three rewards of 0.1 give 1.4e-17), and a "no signal" group must not move θ.
  if (AllRewardsEqual(rewards)) return std::vector<double>(k, 0.0);

  double sum = 0.0;
  for (double r : rewards) sum += r;
  std::vector<double> adv(k);
  for (size_t j = 0; j < k; ++j) {
    // mean: b = (1/k) Σ_i r_i;   loo: b_j = (1/(k−1)) Σ_{i≠j} r_i.
    const double b = baseline == Baseline::kMean ? sum / static_cast<double>(k)
                                                 : (sum - rewards[j]) / static_cast<double>(k - 1);
    adv[j] = rewards[j] - b;
  }
  return adv;
}

at::Tensor PmdMeanLoss(const PmdMeanInputs& in, double tau, LengthNorm norm, double max_length,
                       int64_t global_count) {
  TORCH_CHECK(tau > 0.0, "PmdMeanLoss: tau must be > 0");
  TORCH_CHECK(global_count > 0, "PmdMeanLoss: global_count must be > 0");
  TORCH_CHECK(norm == LengthNorm::kTokens || max_length > 0.0,
              "PmdMeanLoss: length_norm max needs max_length > 0");
  const at::Device dev = in.logp_new.device();
  const at::ScalarType dtype = in.logp_new.scalar_type();
  const at::Tensor adv = in.advantages.to(dev, dtype);
  // π_old is a constant of the objective: cut the graph even if the caller did not.
  const at::Tensor delta = in.logp_new - in.logp_old.detach().to(dev, dtype);
  const at::Tensor resid = adv - tau * delta;  // A_j − τ·Δ_j
  at::Tensor per;                              // ℓ_j = (A_j − τ·Δ_j)² / (2·τ·norm_j)
  if (norm == LengthNorm::kTokens) {
    const at::Tensor len = in.lengths.to(dev, dtype);
    per = resid.square() / (2.0 * tau * len);
  } else {
    per = resid.square() / (2.0 * tau * max_length);
  }
  // Importance weights scale each completion's loss; they are constants of the step.
  if (in.weights.defined()) per = per * in.weights.detach().to(dev, dtype);
  // Sum, not mean: this rank holds a share of the global mini-batch, and the
  // all-reduced gradients must equal those of the mean over all global_count.
  return per.sum() / static_cast<double>(global_count);
}

}  // namespace pmdrl
