// Draws the next token of every decoding row from the policy's logits, on the logits'
// device, in float32: temperature, top-p, and the log-prob of the drawn token.
#ifndef PMDRL_ENGINE_TOKEN_SAMPLER_H_
#define PMDRL_ENGINE_TOKEN_SAMPLER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace pmdrl {

struct TokenSamplerOptions {
  double temperature = 1.0;            // <= 0: greedy (argmax); log-probs then at temperature 1
  double top_p = 1.0;                  // nucleus: the smallest top set with mass >= top_p
  std::vector<int64_t> never_sampled;  // ids given probability 0 (NeverSampledTokens)
  uint64_t seed = 0;
};

// The distribution is SamplingLogProbs' (common/nn/logprobs.h): log-softmax of
// logits/temperature with `never_sampled` at -inf; top-p then keeps the smallest set of
// most likely tokens with mass >= top_p and renormalises. The reported log-prob is the
// drawn token's under the full distribution (before top-p), as the learner scores it.
// No float64 pass over the vocabulary: a draw is an inverse CDF in two levels (blocks of
// the vocabulary, then one block), and nothing is copied to the host. Owns its RNG (on
// the logits' device): the same seed and logits give the same tokens. Not thread-safe.
class TokenSampler {
 public:
  TokenSampler(const TokenSamplerOptions& options, at::Device device);

  // logits [B,V] float32. Returns {tokens [B] int64, logprobs [B] float32} on that device.
  std::pair<at::Tensor, at::Tensor> Sample(const at::Tensor& logits);

 private:
  // Index of a draw from each row of the non-negative weights [B,V] (row sums > 0).
  at::Tensor Draw(const at::Tensor& weights);
  // weights [B,V] restricted to each row's top-p set (others set to 0).
  at::Tensor Nucleus(const at::Tensor& weights, const at::Tensor& totals);

  const TokenSamplerOptions options_;
  at::Generator gen_;
  at::Tensor never_;  // never_sampled ids on the device (may be empty)
};

}  // namespace pmdrl

#endif  // PMDRL_ENGINE_TOKEN_SAMPLER_H_
