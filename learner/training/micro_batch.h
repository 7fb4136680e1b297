// Micro-batches: a rank's share of a mini-batch is split into micro-batches of at most
// learner.micro_batch_tokens tokens, and each is packed into ONE row of concatenated
// sequences (no padding), so the learner's activation memory is bounded by the budget
// whatever the mini-batch's size. Gradients accumulate over the micro-batches; the losses
// are sums over completions divided by the global mini-batch count
// (learner/training/policy_loss.h), so the accumulated step equals the single-pass one.
//
// Tensors are at::Tensor; <torch/torch.h> stays in the .cc.
#ifndef PMDRL_LEARNER_MICRO_BATCH_H_
#define PMDRL_LEARNER_MICRO_BATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "common/nn/model.h"
#include "learner/training/sequence_logprobs.h"

namespace pmdrl {

struct MicroBatchPlan {
  std::vector<std::vector<int>> batches;  // row indices, ascending within a batch
  int64_t oversize_rows = 0;              // rows longer than the budget, each alone
};

// Splits rows of `row_tokens[i]` tokens (prompt + response) into batches of at most
// `budget` tokens: first-fit decreasing (longest row first, ties by index), so the
// result is deterministic. A row longer than the budget is never dropped: it gets a
// batch of its own and is counted in oversize_rows. budget <= 0: one batch of all rows.
// No rows: no batches.
MicroBatchPlan PlanMicroBatches(const std::vector<int64_t>& row_tokens, int64_t budget);

// n (prompt ++ response) sequences concatenated into one row of S tokens, with what the
// learner needs to score their response tokens. Position p of the row scores token p+1
// of the same sequence; only the R positions whose next token is a response token are
// sent through lm_head.
struct PackedSequences {
  at::Tensor input;             // [1, S] int64
  at::Tensor positions;         // [1, S] int64: RoPE positions, from 0 in every sequence
  std::vector<int64_t> starts;  // n + 1 offsets: sequence i is [starts[i], starts[i+1])
  at::Tensor score_positions;   // [R] int64: positions that score a response token
  at::Tensor score_targets;     // [R] int64: that response token
  // [R] int64: where each scored token goes in frame.response_mask flattened
  // (row * (T-1) + t), the padded frame the losses read.
  at::Tensor frame_index;
  PackedRows frame;    // the same rows in the padded frame (its tensors are small)
  int64_t tokens = 0;  // S

  void To(const at::Device& device);
};

// Packs row i = prompts[i] ++ responses[i] (every prompt at least one token). On the CPU.
PackedSequences PackSequences(const std::vector<const std::vector<int32_t>*>& prompts,
                              const std::vector<const std::vector<int32_t>*>& responses,
                              int64_t pad);

// Causal attention within each packed sequence (a token never attends to another
// sequence), for CausalLMImpl::ForwardHidden over a PackedSequences row. Stores nothing,
// so activation checkpointing may call it again in backward. Small rows are done in one
// masked product with a block-diagonal causal mask; larger ones sequence by sequence, so
// the scores never exceed one sequence's [heads, L, L].
class PackedSequenceAttention : public AttentionBackend {
 public:
  explicit PackedSequenceAttention(std::vector<int64_t> starts);
  at::Tensor Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v) override;

 private:
  std::vector<int64_t> starts_;
  at::Tensor block_mask_;  // [1,1,S,S] bool, built on first use (small rows only)
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_MICRO_BATCH_H_
