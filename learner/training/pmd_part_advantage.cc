#include "learner/training/pmd_part_advantage.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "learner/training/pmd_mean_loss.h"

namespace pmdrl {

absl::StatusOr<std::vector<double>> PmdPartAdvantages(const std::vector<double>& rewards,
                                                      double tau) {
  const size_t k = rewards.size();
  if (k < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PmdPartAdvantages: loss pmd_part needs a group of at least 2 completions, got ", k));
  }
  if (!(tau > 0.0) || !std::isfinite(tau)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PmdPartAdvantages: tau must be finite and > 0, got ", tau));
  }
  for (size_t j = 0; j < k; ++j) {
    if (!std::isfinite(rewards[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("PmdPartAdvantages: reward ", j, " is not finite: ", rewards[j]));
    }
  }
  // Mathematically 0; the rounding of the log-sum-exp must not leave noise behind.
  if (AllRewardsEqual(rewards)) return std::vector<double>(k, 0.0);

  const double log_others = std::log(static_cast<double>(k - 1));
  std::vector<double> adv(k);
  for (size_t j = 0; j < k; ++j) {
    // Shift by the max over i ≠ j: shifting by the group max instead would underflow
    // every term when r_j alone is the max and τ is small (exp(−2/0.001) = 0, log 0).
    double m = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < k; ++i) {
      if (i != j) m = std::max(m, rewards[i]);
    }
    double sum = 0.0;
    for (size_t i = 0; i < k; ++i) {
      if (i != j) sum += std::exp((rewards[i] - m) / tau);
    }
    adv[j] = rewards[j] - m - tau * (std::log(sum) - log_others);
  }
  return adv;
}

}  // namespace pmdrl
