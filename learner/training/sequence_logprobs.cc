#include "learner/training/sequence_logprobs.h"

#include <torch/torch.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {

void PackedRows::To(const at::Device& device) {
  input = input.to(device);
  positions = positions.to(device);
  valid = valid.to(device);
  response_mask = response_mask.to(device);
}

PackedRows Pack(const std::vector<const std::vector<int32_t>*>& prompts,
                const std::vector<const std::vector<int32_t>*>& responses, int64_t pad) {
  const int64_t n = static_cast<int64_t>(prompts.size());
  int64_t t_max = 0;
  for (int64_t i = 0; i < n; ++i) {
    t_max = std::max<int64_t>(t_max, prompts[i]->size() + responses[i]->size());
  }
  PackedRows p;
  p.input = torch::full({n, t_max}, pad, torch::kInt64);
  p.positions = torch::zeros({n, t_max}, torch::kInt64);
  p.valid = torch::zeros({n, t_max}, torch::kBool);
  p.response_mask = torch::zeros({n, std::max<int64_t>(t_max - 1, 1)}, torch::kFloat32);
  auto in = p.input.accessor<int64_t, 2>();
  auto pos = p.positions.accessor<int64_t, 2>();
  auto val = p.valid.accessor<bool, 2>();
  auto rm = p.response_mask.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t np = static_cast<int64_t>(prompts[i]->size());
    const int64_t nr = static_cast<int64_t>(responses[i]->size());
    for (int64_t t = 0; t < np + nr; ++t) {
      in[i][t] = t < np ? (*prompts[i])[t] : (*responses[i])[t - np];
      pos[i][t] = t;
      val[i][t] = true;
    }
    for (int64_t t = np - 1; t < np + nr - 1; ++t) rm[i][t] = 1.0f;
    p.tokens += np + nr;
    p.prompt_lengths.push_back(np);
    p.response_lengths.push_back(nr);
  }
  return p;
}

at::Tensor NextTokenLogProbs(const at::Tensor& logp, const at::Tensor& input,
                             const at::Tensor& response_mask) {
  const int64_t t = input.size(1);
  at::Tensor lp = logp.narrow(1, 0, t - 1);
  at::Tensor next = input.narrow(1, 1, t - 1).unsqueeze(-1);
  at::Tensor token_lp = lp.gather(2, next).squeeze(-1);
  return torch::where(response_mask > 0, token_lp, torch::zeros_like(token_lp));
}

at::Tensor MaskedRowSums(const at::Tensor& token_values, const at::Tensor& mask) {
  // where, not a product: a masked-out -inf must not turn the sum into NaN. Where the
  // values are already 0 outside the mask (NextTokenLogProbs), this is the plain row sum
  // bit for bit.
  return torch::where(mask.to(token_values.device()) > 0, token_values,
                      torch::zeros_like(token_values))
      .sum(1);
}

absl::StatusOr<at::Tensor> ResponseTokenValues(const PackedRows& packed,
                                               const std::vector<std::vector<float>>& values) {
  const int64_t n = static_cast<int64_t>(packed.prompt_lengths.size());
  if (static_cast<int64_t>(values.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("ResponseTokenValues: ", values.size(),
                                                   " rows of values for ", n, " packed rows"));
  }
  at::Tensor out = torch::zeros({n, packed.response_mask.size(1)}, torch::kFloat32);
  auto o = out.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t nr = packed.response_lengths[i];
    if (static_cast<int64_t>(values[i].size()) != nr) {
      return absl::InvalidArgumentError(absl::StrCat("ResponseTokenValues: row ", i, " has ",
                                                     values[i].size(), " values for ", nr,
                                                     " response tokens"));
    }
    const int64_t np = packed.prompt_lengths[i];
    for (int64_t t = 0; t < nr; ++t) o[i][np - 1 + t] = values[i][t];
  }
  return out;
}

}  // namespace pmdrl
