#include "engine/token_sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <algorithm>
#include <limits>

namespace pmdrl {
namespace {

constexpr int64_t kBlock = 1024;          // vocabulary block of the two-level inverse CDF
constexpr int64_t kTopCandidates = 4096;  // top-p looks here first, sorts all rows only if short

// Index of the first column where the running sum of w [B,N] (>= 0) exceeds target [B]
// (>= 0): a column of weight 0 never qualifies, since its sum equals the one before it.
// When rounding leaves no column past the target, the last column of positive weight.
at::Tensor FirstPastTarget(const at::Tensor& w, const at::Tensor& target) {
  at::Tensor cum = w.cumsum(-1);
  at::Tensor first = at::searchsorted(cum, target.unsqueeze(-1), /*out_int32=*/false,
                                      /*right=*/true)
                         .squeeze(-1);
  at::Tensor cols = at::arange(1, w.size(-1) + 1, w.options().dtype(at::kLong));
  at::Tensor last_positive = (w.gt(0).to(at::kLong) * cols).argmax(-1);
  return at::where(first.lt(w.size(-1)), first, last_positive);
}

}  // namespace

TokenSampler::TokenSampler(const TokenSamplerOptions& options, at::Device device)
    : options_(options) {
  if (device.is_cpu()) {
    gen_ = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  } else {
    gen_ = at::globalContext().defaultGenerator(device).clone();
    gen_.set_current_seed(options.seed);
  }
  if (!options.never_sampled.empty()) {
    never_ = at::tensor(options.never_sampled, at::TensorOptions().dtype(at::kLong)).to(device);
  }
}

std::pair<at::Tensor, at::Tensor> TokenSampler::Sample(const at::Tensor& logits) {
  const bool greedy = options_.temperature <= 0;
  at::Tensor x = logits.to(at::kFloat);
  if (!greedy && options_.temperature != 1.0) {
    x = x / options_.temperature;
  } else if (!x.is_contiguous() || x.data_ptr() == logits.data_ptr()) {
    x = x.clone();  // masked in place below
  }
  // ValidateModelConfig keeps these ids inside the vocabulary.
  if (never_.defined()) x.index_fill_(-1, never_, -std::numeric_limits<float>::infinity());
  at::Tensor max = x.amax(-1, /*keepdim=*/true);  // [B,1]
  at::Tensor weights = (x - max).exp_();          // [B,V], top token 1
  at::Tensor totals = weights.sum(-1);            // [B]
  at::Tensor tokens;
  if (greedy) {
    tokens = x.argmax(-1);
  } else if (options_.top_p < 1.0) {
    tokens = Draw(Nucleus(weights, totals));
  } else {
    tokens = Draw(weights);
  }
  at::Tensor chosen = x.gather(1, tokens.unsqueeze(1)).squeeze(1);
  at::Tensor logprobs = chosen - max.squeeze(1) - totals.log();
  return {tokens, logprobs};
}

at::Tensor TokenSampler::Draw(const at::Tensor& weights) {
  const int64_t rows = weights.size(0), vocab = weights.size(1);
  if (vocab <= kBlock) {  // a small vocabulary is one block
    at::Tensor u = at::rand({rows}, gen_, weights.options());
    return FirstPastTarget(weights, u * weights.sum(-1));
  }
  const int64_t full = vocab / kBlock, tail = vocab % kBlock;
  // Level 1: block sums, and the block where u * total falls.
  std::vector<at::Tensor> parts;
  if (full > 0)
    parts.push_back(weights.narrow(1, 0, full * kBlock).view({rows, full, kBlock}).sum(-1));
  if (tail > 0) parts.push_back(weights.narrow(1, full * kBlock, tail).sum(-1, /*keepdim=*/true));
  at::Tensor block_sums = parts.size() == 1 ? parts[0] : at::cat(parts, 1);  // [B,blocks]
  at::Tensor u = at::rand({rows}, gen_, weights.options());
  at::Tensor target = u * block_sums.sum(-1);
  at::Tensor block = FirstPastTarget(block_sums, target);  // [B]
  at::Tensor before = (block_sums.cumsum(-1) - block_sums).gather(1, block.unsqueeze(1)).squeeze(1);
  // Level 2: within the block (columns past the vocabulary read as weight 0).
  at::Tensor cols = block.unsqueeze(1) * kBlock + at::arange(kBlock, block.options()).unsqueeze(0);
  at::Tensor inside = cols.lt(vocab);
  at::Tensor w = weights.gather(1, cols.clamp_max(vocab - 1)) * inside;
  at::Tensor pick = FirstPastTarget(w, target - before);
  return block * kBlock + pick;
}

at::Tensor TokenSampler::Nucleus(const at::Tensor& weights, const at::Tensor& totals) {
  const int64_t vocab = weights.size(1);
  const int64_t k = std::min(vocab, kTopCandidates);
  auto [top, index] = weights.topk(k, -1, /*largest=*/true, /*sorted=*/true);
  at::Tensor cum = top.cumsum(-1);
  at::Tensor threshold = totals * options_.top_p;
  bool covered = cum.select(1, k - 1).ge(threshold).all().item<bool>();
  if (!covered) {  // a flat distribution: sort everything
    std::tie(top, index) = weights.sort(/*stable=*/true, -1, /*descending=*/true);
    cum = top.cumsum(-1);
  }
  // Keep a token while the mass before it is below top_p; the top token always stays.
  at::Tensor keep = (cum - top).lt(threshold.unsqueeze(1));
  keep.select(1, 0).fill_(true);
  return at::zeros_like(weights).scatter_(1, index, top * keep);
}

}  // namespace pmdrl
