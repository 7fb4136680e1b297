// Batched sampling from the policy with a KV cache: the actor's generation engine core.
#ifndef PMDRL_COMMON_NN_SAMPLER_H_
#define PMDRL_COMMON_NN_SAMPLER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/nn/model.h"

namespace pmdrl {

struct SamplingParams {
  double temperature =
      1.0;  // <= 0: greedy (argmax); logprobs then from SamplingLogProbs at temperature 1
  double top_p = 1.0;  // nucleus: keep the smallest top set with mass >= top_p (<= 0: top-1)
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // e.g. eos; the stop token is included in the output tokens
};

struct Sample {
  std::vector<int32_t> tokens;  // response tokens, ending with the stop token when stopped
  std::vector<float> logprobs;  // SamplingLogProbs(logits, temperature, never_sampled) of each
                                // token (full distribution, before top-p)
  bool stopped = false;         // ended on a stop token (else: hit max_new_tokens)
};

// Draws completions. Prompts (any lengths, left-padded internally) are prefilled once per
// prompt and the cache is shared out to its n rows; then one token per step for all rows
// in batched tensor ops. Rows that stopped stay in the batch but are ignored (static
// batching; nothing here rules out continuous batching later). Never emits the model
// config's NeverSampledTokens. Owns its RNG: the same seed and inputs give the same
// samples, and successive calls continue the stream. Runs under NoGradGuard with the model
// in eval mode (its previous mode is restored). Not thread-safe; one Sampler per thread.
class Sampler {
 public:
  explicit Sampler(uint64_t seed);

  // Returns [prompts.size()][n] samples. A prompt that is empty or holds a token id outside
  // [0, vocab) gets n empty samples (stopped = false) and is not run.
  std::vector<std::vector<Sample>> Generate(CausalLM& model,
                                            const std::vector<std::vector<int32_t>>& prompts,
                                            int64_t n, const SamplingParams& params);

 private:
  // Token ids [R] drawn from probs [R,V] (rows sum to ~1, zeros never drawn) after top-p.
  at::Tensor Draw(const at::Tensor& probs, double top_p);

  at::Generator gen_;
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_SAMPLER_H_
