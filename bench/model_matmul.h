// The roofline the speed benches print beside their figures: FLOP/s of plain products
// x·Wᵀ for a model's weight shapes, through the same library the model runs on.
#ifndef PMDRL_BENCH_MODEL_MATMUL_H_
#define PMDRL_BENCH_MODEL_MATMUL_H_

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "common/model_config.h"

namespace pmdrl {

// The best of 3 passes over one layer's products (q, k, v, o, gate, up, down) at `rows`
// rows in `dtype` on `device`, plus the lm_head's [vocab x hidden] when `with_lm_head`.
inline double ModelMatmulFlops(const ModelConfig& c, int64_t rows, at::ScalarType dtype,
                               const at::Device& device, bool with_lm_head) {
  const int64_t h = c.hidden_size, hd = c.HeadDim();
  std::vector<std::pair<int64_t, int64_t>> shapes = {
      {c.num_attention_heads * hd, h}, {c.num_key_value_heads * hd, h},
      {c.num_key_value_heads * hd, h}, {h, c.num_attention_heads * hd},
      {c.intermediate_size, h},        {c.intermediate_size, h},
      {h, c.intermediate_size}};
  if (with_lm_head) shapes.push_back({c.vocab_size, h});
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  std::vector<at::Tensor> w, x;
  double flop = 0;
  for (auto [out, in] : shapes) {
    w.push_back(torch::randn({out, in}, opts));
    x.push_back(torch::randn({rows, in}, opts));
    flop += 2.0 * rows * in * out;
  }
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    sync();
    const auto t = std::chrono::steady_clock::now();
    for (size_t i = 0; i < w.size(); ++i) at::Tensor y = at::matmul(x[i], w[i].t());
    sync();
    best = std::max(
        best, flop / std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  return best;
}

}  // namespace pmdrl

#endif  // PMDRL_BENCH_MODEL_MATMUL_H_
