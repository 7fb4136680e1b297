#include "learner/training/policy_loss.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "learner/training/grpo_loss.h"
#include "learner/training/gspo_loss.h"
#include "learner/training/pmd_part_advantage.h"
#include "learner/training/sequence_logprobs.h"

namespace pmdrl {

absl::StatusOr<std::vector<double>> LossAdvantages(const std::vector<double>& rewards,
                                                   LossKind kind, Baseline baseline, double tau) {
  switch (kind) {
    case LossKind::kPmdMean:
      return GroupAdvantages(rewards, baseline);
    case LossKind::kPmdPart:
      return PmdPartAdvantages(rewards, tau);
    case LossKind::kGrpo:
    case LossKind::kGspo:
      return GroupNormalizedAdvantages(rewards);
  }
  return absl::InvalidArgumentError("LossAdvantages: unknown loss kind");
}

absl::Status ValidatePolicyLossInputs(const PolicyLossInputs& in, const PolicyLossOptions& opt) {
  const at::Tensor* tokens[] = {&in.token_logp_new, &in.token_logp_old, &in.mask};
  const char* token_names[] = {"token_logp_new", "token_logp_old", "mask"};
  for (int i = 0; i < 3; ++i) {
    if (!tokens[i]->defined() || tokens[i]->dim() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("PolicyLoss: ", token_names[i], " must be a defined 2-D tensor"));
    }
    if (tokens[i]->sizes() != in.token_logp_new.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("PolicyLoss: ", token_names[i], " has shape [", tokens[i]->size(0), ", ",
                       tokens[i]->size(1), "], token_logp_new has [", in.token_logp_new.size(0),
                       ", ", in.token_logp_new.size(1), "]"));
    }
  }
  const int64_t n = in.token_logp_new.size(0);
  const at::Tensor* rows[] = {&in.advantages, &in.lengths, &in.weights};
  const char* row_names[] = {"advantages", "lengths", "weights"};
  for (int i = 0; i < 3; ++i) {
    if (i == 2 && !in.weights.defined()) continue;  // optional
    if (!rows[i]->defined() || rows[i]->dim() != 1 || rows[i]->size(0) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("PolicyLoss: ", row_names[i], " must be 1-D with ", n, " entries"));
    }
  }
  if (opt.global_count <= 0 || opt.global_count < n) {
    return absl::InvalidArgumentError(
        absl::StrCat("PolicyLoss: global_count ", opt.global_count,
                     " must be positive and at least the local count ", n));
  }
  switch (opt.kind) {
    case LossKind::kPmdMean:
    case LossKind::kPmdPart:
      if (!(opt.tau > 0.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("PolicyLoss: tau must be > 0, got ", opt.tau));
      }
      if (opt.norm == LengthNorm::kMax && !(opt.max_length > 0.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("PolicyLoss: length_norm max needs max_length > 0, got ", opt.max_length));
      }
      break;
    case LossKind::kGrpo:
      if (!(opt.clip_eps > 0.0 && opt.clip_eps < 1.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("PolicyLoss: clip_eps must be in (0, 1), got ", opt.clip_eps));
      }
      break;
    case LossKind::kGspo:
      if (!(opt.seq_clip_eps > 0.0 && opt.seq_clip_eps < 1.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("PolicyLoss: seq_clip_eps must be in (0, 1), got ", opt.seq_clip_eps));
      }
      break;
  }
  if (n == 0) return absl::OkStatus();
  try {
    const at::Tensor len = in.lengths.to(at::kCPU, at::kDouble);
    if (!(len.min().item<double>() > 0.0)) {
      return absl::InvalidArgumentError("PolicyLoss: every response length must be > 0");
    }
    // GRPO and GSPO average over L_j tokens; a length that disagrees with the mask
    // would silently rescale a sequence.
    const at::Tensor counts = (in.mask.to(at::kCPU) > 0).sum(1).to(at::kDouble);
    const double worst = (counts - len).abs().max().item<double>();
    if (worst > 0.5) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PolicyLoss: lengths disagree with the mask's response token counts (by up to ", worst,
          ")"));
    }
    if (in.weights.defined()) {
      const at::Tensor w = in.weights.to(at::kCPU, at::kDouble);
      if (!at::isfinite(w).all().item<bool>() || w.min().item<double>() < 0.0) {
        return absl::InvalidArgumentError("PolicyLoss: every weight must be finite and >= 0");
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("PolicyLoss: checking inputs: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

at::Tensor PolicyLoss(const PolicyLossInputs& in, const PolicyLossOptions& opt) {
  switch (opt.kind) {
    case LossKind::kPmdMean:
    case LossKind::kPmdPart: {
      // The PMD losses see only sequence sums: Δ_j = Σ_t lp_new − Σ_t lp_old. Summing
      // each side separately is what the trainer did before the loss family existed,
      // which keeps pmd_mean's results bit for bit.
      PmdMeanInputs pmd;
      pmd.logp_new = MaskedRowSums(in.token_logp_new, in.mask);
      pmd.logp_old = MaskedRowSums(in.token_logp_old.detach(), in.mask);
      pmd.advantages = in.advantages;
      pmd.lengths = in.lengths;
      pmd.weights = in.weights;
      return PmdMeanLoss(pmd, opt.tau, opt.norm, opt.max_length, opt.global_count);
    }
    case LossKind::kGrpo:
      return GrpoLoss(in, opt.clip_eps, opt.global_count);
    case LossKind::kGspo:
      return GspoLoss(in, opt.seq_clip_eps, opt.global_count);
  }
  TORCH_CHECK(false, "PolicyLoss: unknown loss kind");
}

}  // namespace pmdrl
