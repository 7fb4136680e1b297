#include "learner/training/grpo_loss.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {

absl::StatusOr<std::vector<double>> GroupNormalizedAdvantages(const std::vector<double>& rewards) {
  const size_t k = rewards.size();
  if (k < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GroupNormalizedAdvantages: grpo/gspo need a group of at least 2 completions, got ", k));
  }
  for (size_t j = 0; j < k; ++j) {
    if (!std::isfinite(rewards[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupNormalizedAdvantages: reward ", j, " is not finite: ", rewards[j]));
    }
  }
  // Exactly 0, not (r − mean)/1e-6 of a rounding residue: such a residue would be
  // amplified a millionfold.
  if (AllRewardsEqual(rewards)) return std::vector<double>(k, 0.0);
  double sum = 0.0;
  for (double r : rewards) sum += r;
  const double mean = sum / static_cast<double>(k);
  double ss = 0.0;
  for (double r : rewards) ss += (r - mean) * (r - mean);
  const double std_dev = std::sqrt(ss / static_cast<double>(k - 1));
  std::vector<double> adv(k);
  for (size_t j = 0; j < k; ++j) adv[j] = (rewards[j] - mean) / (std_dev + 1e-6);
  return adv;
}

at::Tensor GrpoLoss(const PolicyLossInputs& in, double clip_eps, int64_t global_count) {
  TORCH_CHECK(clip_eps > 0.0 && clip_eps < 1.0, "GrpoLoss: clip_eps must be in (0, 1)");
  TORCH_CHECK(global_count > 0, "GrpoLoss: global_count must be > 0");
  const at::Tensor& lp_new = in.token_logp_new;
  const at::Device dev = lp_new.device();
  const at::ScalarType dtype = lp_new.scalar_type();
  const at::Tensor mask = in.mask.to(dev) > 0;
  // π_old is a constant; positions outside the mask get ratio exactly 1 (and are
  // dropped below), whatever the inputs hold there.
  const at::Tensor log_ratio =
      at::where(mask, lp_new - in.token_logp_old.detach().to(dev, dtype), at::zeros_like(lp_new));
  // Clamped so that a very stale or corrupt log-prob cannot make exp overflow to inf (as
  // verl does); a ratio of e^±20 is far outside any clip range anyway.
  const at::Tensor ratio = log_ratio.clamp(-20.0, 20.0).exp();
  const at::Tensor adv = in.advantages.to(dev, dtype).unsqueeze(1);
  const at::Tensor unclipped = ratio * adv;
  const at::Tensor clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv;
  const at::Tensor token_loss = -at::minimum(unclipped, clipped);
  at::Tensor per =
      at::where(mask, token_loss, at::zeros_like(token_loss)).sum(1) / in.lengths.to(dev, dtype);
  if (in.weights.defined()) per = per * in.weights.detach().to(dev, dtype);
  return per.sum() / static_cast<double>(global_count);
}

}  // namespace pmdrl
