// The PMD-part advantage (docs/design.md "The algorithm (normative)"): the PMD-mean loss
// with the mean reward replaced by a soft maximum of the other completions' rewards.
// Pure function; no state, no I/O.
#ifndef PMDRL_LEARNER_PMD_PART_ADVANTAGE_H_
#define PMDRL_LEARNER_PMD_PART_ADVANTAGE_H_

#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// For a group of k >= 2 rewards r_j:
//   A_j = r_j − τ·log( (1/(k−1)) Σ_{i≠j} exp(r_i/τ) )
// evaluated as a log-sum-exp shifted by m_j = max_{i≠j} r_i (the max over the OTHER
// completions, not the whole group):
//   A_j = r_j − m_j − τ·log Σ_{i≠j} exp((r_i − m_j)/τ) + τ·log(k−1).
// Every shifted exponent is <= 0 and one is exactly 0, so the sum lies in [1, k−1] and
// the result is finite for any τ > 0 (τ = 0.001 with rewards ±1 included). A group
// whose rewards are all equal gets exactly zero advantages. Errors: fewer than 2
// rewards, a non-finite reward, or τ not > 0.
absl::StatusOr<std::vector<double>> PmdPartAdvantages(const std::vector<double>& rewards,
                                                      double tau);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_PMD_PART_ADVANTAGE_H_
