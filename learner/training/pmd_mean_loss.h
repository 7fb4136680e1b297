// The PMD-mean objective (docs/design.md "The algorithm (normative)"): group advantages
// and the per-completion squared loss. Pure functions; no state, no I/O.
//
// Tensors are at::Tensor, the same type as torch::Tensor; this header includes only the
// core tensor class so that its users do not pay for <torch/torch.h>.
#ifndef PMDRL_LEARNER_PMD_MEAN_LOSS_H_
#define PMDRL_LEARNER_PMD_MEAN_LOSS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config_enums.h"

namespace pmdrl {

// Baseline (learner.baseline) and LengthNorm (learner.length_norm) are config enums,
// with their parsing, in common/config_enums.h.

// Advantages A_j = r_j − b_j of one group, in double. Errors: an empty group, a
// non-finite reward, or kLeaveOneOut with fewer than 2 rewards. A group whose rewards
// are all equal gets exactly zero advantages (not rounding noise).
absl::StatusOr<std::vector<double>> GroupAdvantages(const std::vector<double>& rewards,
                                                    Baseline baseline);

// True when every reward equals the first (and for an empty group): such a group
// carries no signal under either baseline. The caller counts these.
bool AllRewardsEqual(const std::vector<double>& rewards);

// One rank's share of a mini-batch, N completions. All are 1-D of length N.
// advantages, lengths and weights are converted to logp_new's dtype and device.
struct PmdMeanInputs {
  at::Tensor logp_new;    // Σ_t log π_θ over each response (requires grad)
  at::Tensor logp_old;    // the same sum under the sampling policy (treated as constant)
  at::Tensor advantages;  // A_j
  at::Tensor lengths;     // L_j in tokens, float, > 0
  at::Tensor weights;     // optional w_j >= 0 (importance weights, constant); undefined: 1
};

// Returns Σ_j w_j·ℓ_j / global_count (a 0-dim tensor) with
//   ℓ_j = (A_j − τ·Δ_j)² / (2·τ·norm_j),   Δ_j = logp_new_j − logp_old_j,
//   norm_j = L_j (kTokens) or max_length (kMax),   w_j = 1 without weights.
// global_count is the number of completions in the GLOBAL mini-batch and max_length
// (kMax only) the longest response in it, so that the ranks' partial losses sum to
// the mean over the whole mini-batch. No gradient flows into logp_old or weights.
// PMD-part uses this same loss with its own advantages (learner/training/pmd_part_advantage.h).
//
// Preconditions: equal 1-D shapes (weights too when defined), tau > 0, global_count > 0
// and >= N, max_length > 0 for kMax, all lengths > 0, all weights finite and >= 0. The
// trainer reaches this loss through PolicyLoss, whose ValidatePolicyLossInputs
// (learner/training/policy_loss.h) checks them. A violation is a caller's bug: a c10::Error
// (TORCH_CHECK on tau, global_count, max_length, or a shape error) or a meaningless loss.
at::Tensor PmdMeanLoss(const PmdMeanInputs& in, double tau, LengthNorm norm, double max_length,
                       int64_t global_count);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_PMD_MEAN_LOSS_H_
