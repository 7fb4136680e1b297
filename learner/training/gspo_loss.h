// GSPO (docs/design.md "The algorithm (normative)"): GRPO's group-normalised advantages with one
// length-normalised importance ratio per sequence, clipped per sequence. Pure function.
#ifndef PMDRL_LEARNER_GSPO_LOSS_H_
#define PMDRL_LEARNER_GSPO_LOSS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "learner/training/policy_loss.h"

namespace pmdrl {

// Sequence-level clip with A_j = GroupNormalizedAdvantages (learner/training/grpo_loss.h):
//   s_j = exp( (1/L_j) Σ_t mask_t·(lp_new_t − lp_old_t) ),
//   loss_j = −min(s_j·A_j, clip(s_j, 1−ε_s, 1+ε_s)·A_j),
// and returns Σ_j w_j·loss_j / global_count. ε_s is small (the GSPO paper uses ~4e-4)
// because s_j is a per-token geometric mean. A clipped sequence contributes no gradient.
// Preconditions: ValidatePolicyLossInputs with kind kGspo.
at::Tensor GspoLoss(const PolicyLossInputs& in, double seq_clip_eps, int64_t global_count);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_GSPO_LOSS_H_
