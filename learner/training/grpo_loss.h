// GRPO (docs/design.md "The algorithm (normative)"): group-normalised advantages and a token-level
// PPO-clip loss. Pure functions; no state, no I/O.
#ifndef PMDRL_LEARNER_GRPO_LOSS_H_
#define PMDRL_LEARNER_GRPO_LOSS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/training/policy_loss.h"

namespace pmdrl {

// A_j = (r_j − mean(r)) / (std(r) + 1e-6), std the SAMPLE standard deviation of the
// group (divided by k−1, as torch.std in TRL and verl). Shared by GRPO and GSPO. A
// group whose rewards are all equal gets exactly zero advantages. Errors: fewer than 2
// rewards, or a non-finite reward.
absl::StatusOr<std::vector<double>> GroupNormalizedAdvantages(const std::vector<double>& rewards);

// Token-level PPO-clip:
//   ρ_t = exp(lp_new_t − lp_old_t),
//   loss_t = −min(ρ_t·A_j, clip(ρ_t, 1−ε, 1+ε)·A_j),
//   loss_j = (1/L_j) Σ_t mask_t·loss_t          (sequence mean, as the original GRPO),
// and returns Σ_j w_j·loss_j / global_count. A token whose clipped term is the minimum
// (ρ_t > 1+ε with A_j > 0, or ρ_t < 1−ε with A_j < 0) contributes no gradient. At
// θ = θ_old the gradient is −Σ_j w_j·(A_j/L_j)·∇Σ_t lp_new / global_count.
// Preconditions: ValidatePolicyLossInputs with kind kGrpo.
at::Tensor GrpoLoss(const PolicyLossInputs& in, double clip_eps, int64_t global_count);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_GRPO_LOSS_H_
