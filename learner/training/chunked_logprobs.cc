#include "learner/training/chunked_logprobs.h"

#include <torch/torch.h>

#include <limits>

namespace pmdrl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Float32 logits of one chunk in the sampling distribution's scale: the same operations
// as CausalLMImpl::Logits followed by SamplingLogProbs, up to the log-softmax.
at::Tensor ChunkLogits(const at::Tensor& h, const at::Tensor& head, double temperature,
                       const at::Tensor& never_index) {
  at::Tensor x = at::linear(h, head).to(at::kFloat);
  if (temperature != 1.0) x = x / temperature;
  if (never_index.defined()) {
    x = x.index_fill(-1, never_index, -std::numeric_limits<float>::infinity());
  }
  return x;
}

class ChunkedLogProbsFunction : public torch::autograd::Function<ChunkedLogProbsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden,
                               const at::Tensor& head, const at::Tensor& targets,
                               const c10::optional<at::Tensor>& never_ids, double temperature,
                               int64_t chunk) {
    // Optional, not an undefined Tensor: autograd records every Tensor argument as an
    // input and needs its device.
    const at::Tensor never_index = never_ids.has_value() ? *never_ids : at::Tensor();
    const int64_t r = hidden.size(0);
    auto f32 = hidden.options().dtype(at::kFloat);
    at::Tensor logp = at::empty({r}, f32), entropy = at::empty({r}, f32), lse = at::empty({r}, f32);
    for (int64_t lo = 0; lo < r; lo += chunk) {
      const int64_t n = std::min(chunk, r - lo);
      // In place where possible: at Qwen's vocabulary each [n, V] temporary is n × 0.6 MB.
      at::Tensor lp = ChunkLogits(hidden.narrow(0, lo, n), head, temperature, never_index);
      at::Tensor l = at::logsumexp(lp, -1);  // [n]
      lp.sub_(l.unsqueeze(1));               // log-softmax
      logp.narrow(0, lo, n).copy_(lp.gather(1, targets.narrow(0, lo, n).unsqueeze(1)).squeeze(1));
      // -Σ p log p; the never-sampled columns have p = 0 and log p = -inf, whose product
      // (NaN) counts as 0.
      entropy.narrow(0, lo, n).copy_(lp.exp().mul_(lp).nan_to_num_(0.0).sum(-1).neg_());
      lse.narrow(0, lo, n).copy_(l);
    }
    ctx->save_for_backward({hidden, head, targets, never_index, lse});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->mark_non_differentiable({entropy});
    return {logp, entropy};
  }

  // d log p(t) / d x = onehot(t) − softmax(x); through the temperature and the cast back
  // to the model's dtype, then into hidden and head chunk by chunk.
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &head = saved[1], &targets = saved[2];
    const at::Tensor &never_index = saved[3], &lse = saved[4];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    at::Tensor g = grad_out[0];
    if (!g.defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const int64_t r = hidden.size(0);
    at::Tensor grad_hidden = at::empty_like(hidden);
    at::Tensor grad_head = at::zeros(head.sizes(), head.options().dtype(at::kFloat));
    for (int64_t lo = 0; lo < r; lo += chunk) {
      const int64_t n = std::min(chunk, r - lo);
      at::Tensor h = hidden.narrow(0, lo, n);
      at::Tensor x = ChunkLogits(h, head, temperature, never_index);
      at::Tensor gc = g.narrow(0, lo, n).to(at::kFloat).unsqueeze(1);  // [n,1]
      at::Tensor dx = (x - lse.narrow(0, lo, n).unsqueeze(1)).exp_().mul_(-gc);
      dx.scatter_add_(1, targets.narrow(0, lo, n).unsqueeze(1), gc);
      if (temperature != 1.0) dx.div_(temperature);
      at::Tensor d = dx.to(head.scalar_type());
      grad_hidden.narrow(0, lo, n).copy_(at::mm(d, head));
      if (d.scalar_type() == at::kFloat) {
        grad_head.addmm_(d.t(), h);  // no [V, D] temporary
      } else {
        grad_head.add_(at::mm(d.t(), h));
      }
    }
    return {grad_hidden, grad_head.to(head.scalar_type()), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

ChunkedLogProbs ChunkedTokenLogProbs(const at::Tensor& hidden, const at::Tensor& head,
                                     const at::Tensor& targets, double temperature,
                                     const std::vector<int64_t>& never_sampled, int64_t chunk) {
  TORCH_CHECK(hidden.dim() == 2 && head.dim() == 2 && hidden.size(1) == head.size(1),
              "ChunkedTokenLogProbs: hidden [R,D] and head [V,D] expected, got ", hidden.sizes(),
              " and ", head.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "ChunkedTokenLogProbs: targets [R] expected, got ", targets.sizes());
  TORCH_CHECK(chunk > 0, "ChunkedTokenLogProbs: chunk must be > 0");
  const int64_t vocab = head.size(0);
  std::vector<int64_t> ids;
  for (int64_t id : never_sampled) {
    if (id >= 0 && id < vocab) ids.push_back(id);
  }
  c10::optional<at::Tensor> never_index;
  if (!ids.empty()) never_index = torch::tensor(ids, torch::kInt64).to(hidden.device());
  variable_list out = ChunkedLogProbsFunction::apply(hidden, head, targets, never_index,
                                                     temperature > 0 ? temperature : 1.0, chunk);
  return {out[0], out[1]};
}

}  // namespace pmdrl
