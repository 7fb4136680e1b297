#include "learner/training/micro_batch.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

namespace pmdrl {

MicroBatchPlan PlanMicroBatches(const std::vector<int64_t>& row_tokens, int64_t budget) {
  MicroBatchPlan plan;
  const int n = static_cast<int>(row_tokens.size());
  if (n == 0) return plan;
  if (budget <= 0) {
    plan.batches.emplace_back(n);
    std::iota(plan.batches[0].begin(), plan.batches[0].end(), 0);
    return plan;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return row_tokens[a] > row_tokens[b]; });
  std::vector<int64_t> used;
  for (int i : order) {
    if (row_tokens[i] > budget) {
      plan.oversize_rows++;
      plan.batches.push_back({i});
      used.push_back(budget);  // full: nothing joins it
      continue;
    }
    size_t b = 0;
    while (b < used.size() && used[b] + row_tokens[i] > budget) ++b;
    if (b == used.size()) {
      plan.batches.emplace_back();
      used.push_back(0);
    }
    plan.batches[b].push_back(i);
    used[b] += row_tokens[i];
  }
  for (auto& batch : plan.batches) std::sort(batch.begin(), batch.end());
  return plan;
}

void PackedSequences::To(const at::Device& device) {
  input = input.to(device);
  positions = positions.to(device);
  score_positions = score_positions.to(device);
  score_targets = score_targets.to(device);
  frame_index = frame_index.to(device);
  frame.To(device);
}

PackedSequences PackSequences(const std::vector<const std::vector<int32_t>*>& prompts,
                              const std::vector<const std::vector<int32_t>*>& responses,
                              int64_t pad) {
  PackedSequences p;
  p.frame = Pack(prompts, responses, pad);
  const int64_t n = static_cast<int64_t>(prompts.size());
  const int64_t width = p.frame.response_mask.size(1);
  std::vector<int64_t> input, positions, score_positions, score_targets, frame_index;
  p.starts.push_back(0);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& prompt = *prompts[i];
    const std::vector<int32_t>& response = *responses[i];
    const int64_t start = static_cast<int64_t>(input.size());
    const int64_t np = static_cast<int64_t>(prompt.size());
    for (int32_t t : prompt) input.push_back(t);
    for (int32_t t : response) input.push_back(t);
    for (int64_t t = 0; t < np + static_cast<int64_t>(response.size()); ++t) {
      positions.push_back(t);
    }
    // Response token j is scored at the position before it: start + np - 1 + j.
    for (size_t j = 0; j < response.size(); ++j) {
      const int64_t at = np - 1 + static_cast<int64_t>(j);
      score_positions.push_back(start + at);
      score_targets.push_back(response[j]);
      frame_index.push_back(i * width + at);
    }
    p.starts.push_back(static_cast<int64_t>(input.size()));
  }
  p.tokens = static_cast<int64_t>(input.size());
  auto as_tensor = [](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); };
  p.input = as_tensor(input).view({1, -1});
  p.positions = as_tensor(positions).view({1, -1});
  p.score_positions = as_tensor(score_positions);
  p.score_targets = as_tensor(score_targets);
  p.frame_index = as_tensor(frame_index);
  return p;
}

PackedSequenceAttention::PackedSequenceAttention(std::vector<int64_t> starts)
    : starts_(std::move(starts)) {}

at::Tensor PackedSequenceAttention::Attend(int64_t /*layer*/, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v) {
  const int64_t heads = q.size(1), s = q.size(2);
  TORCH_CHECK(q.size(0) == 1 && !starts_.empty() && starts_.back() == s,
              "PackedSequenceAttention: a [1,H,", starts_.empty() ? 0 : starts_.back(),
              ",hd] packed row expected, got ", q.sizes());
  at::Tensor ke = ExpandKvHeads(k, heads), ve = ExpandKvHeads(v, heads);
  // One masked product while its float32 scores stay small: one call instead of one per
  // sequence (many short rows: the demo); otherwise the scores would be S² per head.
  constexpr int64_t kDenseScoreBytes = 16 << 20;
  if (s * s * heads * 4 <= kDenseScoreBytes) {
    if (!block_mask_.defined() || block_mask_.device() != q.device()) {
      std::vector<int64_t> segment(s);
      for (size_t i = 0; i + 1 < starts_.size(); ++i) {
        for (int64_t t = starts_[i]; t < starts_[i + 1]; ++t) segment[t] = static_cast<int64_t>(i);
      }
      at::Tensor seg = torch::tensor(segment, torch::kInt64);
      at::Tensor idx = torch::arange(s, torch::kInt64);
      at::Tensor mask =
          seg.view({s, 1}).eq(seg.view({1, s})) & idx.view({1, s}).le(idx.view({s, 1}));
      block_mask_ = mask.view({1, 1, s, s}).to(q.device());
    }
    return MaskedAttention(q, ke, ve, block_mask_);
  }
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i + 1 < starts_.size(); ++i) {
    const int64_t a = starts_[i], len = starts_[i + 1] - starts_[i];
    if (len == 0) continue;
    at::Tensor causal =
        torch::ones({len, len}, torch::TensorOptions().dtype(torch::kBool).device(q.device()))
            .tril()
            .view({1, 1, len, len});
    outputs.push_back(
        MaskedAttention(q.narrow(2, a, len), ke.narrow(2, a, len), ve.narrow(2, a, len), causal));
  }
  return at::cat(outputs, 2);
}

}  // namespace pmdrl
