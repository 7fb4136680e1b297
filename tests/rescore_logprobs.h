// The learner's view of sampled tokens, for tests of the samplers: one full forward pass.
#ifndef PMDRL_TESTS_RESCORE_LOGPROBS_H_
#define PMDRL_TESTS_RESCORE_LOGPROBS_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"

namespace pmdrl {

// Log-probs of `tokens` after `prompt` from one full forward, as the learner computes them.
inline std::vector<float> Rescore(CausalLM& model, const std::vector<int32_t>& prompt,
                                  const std::vector<int32_t>& tokens, double temperature) {
  torch::NoGradGuard g;
  std::vector<int64_t> seq(prompt.begin(), prompt.end());
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  const int64_t t = static_cast<int64_t>(seq.size());
  at::Tensor logits = model->forward(torch::tensor(seq).unsqueeze(0), torch::arange(t).unsqueeze(0),
                                     torch::ones({1, t}, torch::kBool));
  at::Tensor lp = SamplingLogProbs(logits[0], temperature, NeverSampledTokens(model->config()));
  std::vector<float> out;
  for (size_t j = 0; j < tokens.size(); ++j) {
    out.push_back(lp[prompt.size() - 1 + j][tokens[j]].item<float>());
  }
  return out;
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_RESCORE_LOGPROBS_H_
