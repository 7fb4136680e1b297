// The one definition of the sampling distribution, shared by the sampler and the learner.
#ifndef PMDRL_COMMON_NN_LOGPROBS_H_
#define PMDRL_COMMON_NN_LOGPROBS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace pmdrl {

// Log-softmax of logits/temperature over the last dim (computed in float32) with the
// `never_sampled` token ids set to -inf. The sampler draws from exactly this distribution
// (then top-p), and the learner scores with it, so re-scored log-probs equal the sampled
// ones. temperature <= 0 is treated as 1 here. Ids outside [0, vocab) are ignored
// (ValidateModelConfig keeps config token ids in range). Differentiable in `logits`.
at::Tensor SamplingLogProbs(const at::Tensor& logits, double temperature,
                            const std::vector<int64_t>& never_sampled);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_LOGPROBS_H_
