// The family of policy losses the learner can train with, chosen by learner.loss
// (docs/design.md "The algorithm (normative)"): PMD-mean, PMD-part, GRPO and GSPO. This
// header is the one entry point: compute a group's advantages, compute
// one rank's share of a mini-batch loss. Each loss lives in its own file
// (pmd_mean_loss, pmd_part_advantage, grpo_loss, gspo_loss) with its formula.
//
// All losses share the same inputs: per-token log-probs in the shifted frame of
// learner/training/sequence_logprobs.h, a response mask, per-completion advantages, lengths and
// optional importance weights; and the same normalisation: Σ_j w_j·loss_j divided by
// the number of completions in the GLOBAL mini-batch, so that the ranks' partial
// losses sum to the mean over the whole mini-batch.
#ifndef PMDRL_LEARNER_POLICY_LOSS_H_
#define PMDRL_LEARNER_POLICY_LOSS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config_enums.h"
#include "learner/training/pmd_mean_loss.h"

namespace pmdrl {

// LossKind (learner.loss) is a config enum, with its parsing, in common/config_enums.h.

// Advantages of one group under `kind`, in double:
//   kPmdMean: r_j − b_j with `baseline` (GroupAdvantages);
//   kPmdPart: PmdPartAdvantages(rewards, tau) (baseline ignored);
//   kGrpo, kGspo: GroupNormalizedAdvantages (baseline and tau ignored).
// A group whose rewards are all equal gets exactly zero advantages under every kind.
// Errors: those of the chosen function (empty group, non-finite reward, k < 2 where a
// baseline needs the other completions).
absl::StatusOr<std::vector<double>> LossAdvantages(const std::vector<double>& rewards,
                                                   LossKind kind, Baseline baseline, double tau);

// One rank's share of a mini-batch: N completions over T positions. advantages,
// lengths, weights and token_logp_old are converted to token_logp_new's dtype/device.
struct PolicyLossInputs {
  at::Tensor token_logp_new;  // [N, T] log π_θ of each next token (requires grad)
  at::Tensor token_logp_old;  // [N, T] the same under π_old (a constant of the step)
  at::Tensor mask;            // [N, T] 1 on response tokens, 0 elsewhere
  at::Tensor advantages;      // [N] A_j
  at::Tensor lengths;         // [N] L_j = Σ_t mask[j, t], > 0
  at::Tensor weights;         // [N] importance weights w_j >= 0 (constant); undefined: 1
};

struct PolicyLossOptions {
  LossKind kind = LossKind::kPmdMean;
  double tau = 1.0;                       // PMD kinds: τ > 0
  LengthNorm norm = LengthNorm::kTokens;  // PMD kinds: divide by L_j or max_length
  double max_length = 0;                  // PMD kinds with kMax: the global longest response
  double clip_eps = 0.2;                  // GRPO: token ratio clipped to [1−ε, 1+ε]
  double seq_clip_eps = 4e-4;             // GSPO: sequence ratio clipped to [1−ε_s, 1+ε_s]
  int64_t global_count = 0;               // completions in the global mini-batch, >= N
};

// Checks PolicyLoss's preconditions: shapes as in PolicyLossInputs, lengths > 0 and
// equal to the mask's row sums, weights finite and >= 0, global_count in [N, ∞) and > 0,
// and the options the kind uses (τ > 0 and max_length > 0 for kMax; ε in (0, 1)).
absl::Status ValidatePolicyLossInputs(const PolicyLossInputs& in, const PolicyLossOptions& opt);

// Σ_j w_j·loss_j / global_count as a 0-dim tensor, with loss_j the chosen kind's
// per-completion loss (see each kind's header). Values of token_logp_new/old where the
// mask is 0 are ignored, and no gradient flows into token_logp_old or weights.
// Preconditions as ValidatePolicyLossInputs; a violation throws c10::Error like any
// Torch op.
at::Tensor PolicyLoss(const PolicyLossInputs& in, const PolicyLossOptions& opt);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_POLICY_LOSS_H_
