#include "common/nn/logprobs.h"

#include <limits>

namespace pmdrl {

at::Tensor SamplingLogProbs(const at::Tensor& logits, double temperature,
                            const std::vector<int64_t>& never_sampled) {
  at::Tensor x = logits.to(at::kFloat);
  if (temperature > 0 && temperature != 1.0) x = x / temperature;
  const int64_t vocab = x.size(-1);
  std::vector<int64_t> ids;
  for (int64_t id : never_sampled) {
    if (id >= 0 && id < vocab) ids.push_back(id);
  }
  if (!ids.empty()) {
    at::Tensor index = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).to(x.device());
    x = x.index_fill(-1, index, -std::numeric_limits<float>::infinity());
  }
  return at::log_softmax(x, -1);
}

}  // namespace pmdrl
