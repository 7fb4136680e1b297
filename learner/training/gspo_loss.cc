#include "learner/training/gspo_loss.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "learner/training/sequence_logprobs.h"

namespace pmdrl {

at::Tensor GspoLoss(const PolicyLossInputs& in, double seq_clip_eps, int64_t global_count) {
  TORCH_CHECK(seq_clip_eps > 0.0 && seq_clip_eps < 1.0, "GspoLoss: seq_clip_eps must be in (0, 1)");
  TORCH_CHECK(global_count > 0, "GspoLoss: global_count must be > 0");
  const at::Tensor& lp_new = in.token_logp_new;
  const at::Device dev = lp_new.device();
  const at::ScalarType dtype = lp_new.scalar_type();
  // (1/L_j) Σ_t (lp_new − lp_old): the per-token mean log-ratio, so that s_j does not
  // grow with the response length.
  const at::Tensor log_s =
      MaskedRowSums(lp_new - in.token_logp_old.detach().to(dev, dtype), in.mask) /
      in.lengths.to(dev, dtype);
  const at::Tensor s = log_s.exp();
  const at::Tensor adv = in.advantages.to(dev, dtype);
  const at::Tensor unclipped = s * adv;
  const at::Tensor clipped = s.clamp(1.0 - seq_clip_eps, 1.0 + seq_clip_eps) * adv;
  at::Tensor per = -at::minimum(unclipped, clipped);
  if (in.weights.defined()) per = per * in.weights.detach().to(dev, dtype);
  return per.sum() / static_cast<double>(global_count);
}

}  // namespace pmdrl
