// Log-probabilities of chosen tokens from final hidden states without materialising the
// [tokens × vocab] logits: lm_head and the log-softmax run `chunk` tokens at a time, and
// backward recomputes each chunk's logits instead of keeping them. At Qwen's vocabulary
// (151,936) the full logits of 8k tokens are 5 GB in float32; a 1024-token chunk is 0.6 GB.
//
// The distribution is SamplingLogProbs's (common/nn/logprobs.h) — logits / temperature,
// `never_sampled` ids at -inf, softmax in float32 — so these are the log-probs the
// actor sampled with.
#ifndef PMDRL_LEARNER_CHUNKED_LOGPROBS_H_
#define PMDRL_LEARNER_CHUNKED_LOGPROBS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace pmdrl {

struct ChunkedLogProbs {
  at::Tensor logp;     // [R] float32: log p(targets[r]); differentiable in hidden and head
  at::Tensor entropy;  // [R] float32: the distribution's entropy (no gradient)
};

// hidden [R, D] and head [V, D] in the model's dtype (the product is taken in it, then
// cast to float32, as CausalLMImpl::Logits does); targets [R] int64 in [0, V).
// temperature <= 0 is treated as 1. chunk > 0.
ChunkedLogProbs ChunkedTokenLogProbs(const at::Tensor& hidden, const at::Tensor& head,
                                     const at::Tensor& targets, double temperature,
                                     const std::vector<int64_t>& never_sampled, int64_t chunk);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_CHUNKED_LOGPROBS_H_
