#include "common/nn/sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/utils.h>

#include <algorithm>

#include "common/nn/logprobs.h"

namespace pmdrl {
namespace {

// Index of the first column where cumsum(weights) > u * total, among positive weights,
// by inverse CDF in float64 (weights [R,V] >= 0, u [R] in [0,1)). Zero-weight columns are
// never chosen, even when rounding puts u * total at or past the final sum.
at::Tensor InverseCdf(const at::Tensor& weights, const at::Tensor& u) {
  at::Tensor w = weights.to(at::kDouble);
  at::Tensor cum = w.cumsum(-1);
  at::Tensor x = (u * cum.select(-1, -1)).unsqueeze(-1);
  at::Tensor positive = w.gt(0);
  at::Tensor hit = cum.gt(x) & positive;
  at::Tensor first = hit.to(at::kInt).argmax(-1);  // the first maximum
  const int64_t v = w.size(-1);
  at::Tensor cols = at::arange(v, at::TensorOptions().dtype(at::kLong).device(w.device()));
  at::Tensor last_positive = (positive.to(at::kLong) * (cols + 1)).argmax(-1);
  return at::where(hit.any(-1), first, last_positive);
}

// Each row of t repeated n times in place ([a, b] -> [a, a, b, b] for n = 2); a plain
// copy through expand, cheaper than repeat_interleave's index_select.
at::Tensor RepeatRows(const at::Tensor& t, int64_t n) {
  std::vector<int64_t> expanded = t.sizes().vec();
  expanded.insert(expanded.begin() + 1, n);
  std::vector<int64_t> merged = t.sizes().vec();
  merged[0] *= n;
  // contiguous(): with one row, reshape could return a stride-0 view, unsafe to update in place.
  return t.unsqueeze(1).expand(expanded).reshape(merged).contiguous();
}

class ModeRestorer {
 public:
  explicit ModeRestorer(CausalLM& model) : model_(model), was_training_(model->is_training()) {
    model_->eval();
  }
  ~ModeRestorer() { model_->train(was_training_); }

 private:
  CausalLM& model_;
  bool was_training_;
};

}  // namespace

Sampler::Sampler(uint64_t seed) : gen_(at::make_generator<at::CPUGeneratorImpl>(seed)) {}

at::Tensor Sampler::Draw(const at::Tensor& probs, double top_p) {
  const int64_t rows = probs.size(0);
  at::Tensor u = at::rand({rows}, gen_, at::TensorOptions().dtype(at::kDouble)).to(probs.device());
  if (top_p >= 1.0) return InverseCdf(probs, u);
  auto [sorted, order] = at::sort(probs, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  // Keep a token while the mass before it is < top_p; the top token is always kept.
  at::Tensor before = sorted.cumsum(-1) - sorted;
  at::Tensor keep = before.lt(top_p);
  keep.select(-1, 0).fill_(true);
  at::Tensor pick = InverseCdf(sorted * keep, u);
  return order.gather(-1, pick.unsqueeze(-1)).squeeze(-1);
}

std::vector<std::vector<Sample>> Sampler::Generate(CausalLM& model,
                                                   const std::vector<std::vector<int32_t>>& prompts,
                                                   int64_t n, const SamplingParams& params) {
  std::vector<std::vector<Sample>> result(prompts.size(),
                                          std::vector<Sample>(std::max<int64_t>(n, 0)));
  const ModelConfig& config = model->config();
  const int64_t vocab = config.vocab_size;
  std::vector<size_t> run;  // prompts that are run
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const bool ok = !p.empty() && std::all_of(p.begin(), p.end(),
                                              [vocab](int32_t t) { return t >= 0 && t < vocab; });
    if (!ok) continue;
    run.push_back(i);
    longest = std::max(longest, p.size());
  }
  if (run.empty() || n <= 0 || params.max_new_tokens <= 0) return result;

  torch::NoGradGuard no_grad;
  ModeRestorer mode(model);
  const auto device = model->parameters().front().device();
  const std::vector<int64_t> never = NeverSampledTokens(config);
  const int64_t num_prompts = static_cast<int64_t>(run.size());
  const int64_t len = static_cast<int64_t>(longest);
  const int64_t rows = num_prompts * n;
  const int64_t max_new = params.max_new_tokens;

  // Left-padded prompt batch: every row's last column is a real token, and RoPE positions
  // count real tokens only, so a row's logits do not depend on its padding.
  auto long_cpu = at::TensorOptions().dtype(at::kLong);
  at::Tensor ids =
      at::full({num_prompts, len}, std::max<int64_t>(config.pad_token_id, 0), long_cpu);
  at::Tensor positions = at::zeros({num_prompts, len}, long_cpu);
  at::Tensor valid = at::zeros({num_prompts, len}, long_cpu.dtype(at::kBool));
  at::Tensor next_pos = at::empty({num_prompts}, long_cpu);
  {
    auto ids_a = ids.accessor<int64_t, 2>();
    auto pos_a = positions.accessor<int64_t, 2>();
    auto valid_a = valid.accessor<bool, 2>();
    auto next_a = next_pos.accessor<int64_t, 1>();
    for (int64_t r = 0; r < num_prompts; ++r) {
      const auto& p = prompts[run[r]];
      const int64_t offset = len - static_cast<int64_t>(p.size());
      for (size_t j = 0; j < p.size(); ++j) {
        ids_a[r][offset + j] = p[j];
        pos_a[r][offset + j] = static_cast<int64_t>(j);
        valid_a[r][offset + j] = true;
      }
      next_a[r] = static_cast<int64_t>(p.size());
    }
  }

  // Prefill once per prompt, then give each of its n rows a copy of the cache.
  KvCache cache;
  at::Tensor last = model->forward(ids.to(device), positions.to(device), valid.to(device), &cache)
                        .select(1, len - 1);
  if (n > 1) {
    last = RepeatRows(last, n);
    for (auto& k : cache.keys) k = RepeatRows(k, n);
    for (auto& v : cache.values) v = RepeatRows(v, n);
    cache.valid = RepeatRows(cache.valid, n);
  }
  next_pos = RepeatRows(next_pos, n).to(device);

  const double temperature = params.temperature > 0 ? params.temperature : 1.0;
  const bool greedy = params.temperature <= 0;
  auto long_dev = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor stop = at::tensor(params.stop_tokens, long_cpu).to(device);
  at::Tensor finished = at::zeros({rows}, long_dev.dtype(at::kBool));
  at::Tensor lengths = at::zeros({rows}, long_dev);
  at::Tensor out_tokens = at::zeros({rows, max_new}, long_dev);
  at::Tensor out_logprobs = at::zeros({rows, max_new}, long_dev.dtype(at::kFloat));
  at::Tensor step_valid = at::ones({rows, 1}, long_dev.dtype(at::kBool));

  for (int64_t step = 0; step < max_new; ++step) {
    at::Tensor logp = SamplingLogProbs(last, temperature, never);  // [R,V]
    at::Tensor token = greedy ? logp.argmax(-1) : Draw(logp.exp(), params.top_p);
    out_tokens.select(1, step).copy_(token);
    out_logprobs.select(1, step).copy_(logp.gather(1, token.unsqueeze(1)).squeeze(1));
    lengths += finished.logical_not().to(at::kLong);
    if (stop.numel() > 0) finished |= token.unsqueeze(1).eq(stop.unsqueeze(0)).any(1);
    if (step + 1 == max_new || finished.all().item<bool>()) break;
    last =
        model->forward(token.unsqueeze(1), next_pos.unsqueeze(1), step_valid, &cache).select(1, 0);
    next_pos += 1;
  }

  // One transfer, then unpack rows.
  out_tokens = out_tokens.cpu();
  out_logprobs = out_logprobs.cpu();
  lengths = lengths.cpu();
  finished = finished.cpu();
  auto tok_a = out_tokens.accessor<int64_t, 2>();
  auto lp_a = out_logprobs.accessor<float, 2>();
  auto len_a = lengths.accessor<int64_t, 1>();
  auto fin_a = finished.accessor<bool, 1>();
  for (int64_t r = 0; r < rows; ++r) {
    Sample& s = result[run[r / n]][r % n];
    const int64_t count = len_a[r];
    s.tokens.resize(count);
    s.logprobs.resize(count);
    for (int64_t j = 0; j < count; ++j) {
      s.tokens[j] = static_cast<int32_t>(tok_a[r][j]);
      s.logprobs[j] = lp_a[r][j];
    }
    s.stopped = fin_a[r];
  }
  return result;
}

}  // namespace pmdrl
