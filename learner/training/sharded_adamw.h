// ZeRO stages 1 and 2: AdamW whose state is split across the data-parallel ranks. Every
// rank holds the whole float32 model (the parameters are re-pointed into one flat buffer,
// padded to a multiple of the world size) but keeps and updates the AdamW moments of its
// 1/N slice only, then the ranks all-gather the updated parameters.
//   stage 1: the gradients are summed on every rank (GradientReducer, all-reduce) and
//            each rank reads its slice of them;
//   stage 2: the gradients are summed with one reduce-scatter, so each rank receives only
//            its slice (half the all-reduce's traffic). The local gradient buffer is still
//            whole during backward: what stage 2 saves here is traffic, not memory.
// The update is elementwise AdamW (torch::optim::AdamW's formulas, including decoupled
// weight decay and bias correction), so N sharded ranks take the step one unsharded
// rank takes, up to float rounding; the clipping norm is the global one.
#ifndef PMDRL_LEARNER_SHARDED_ADAMW_H_
#define PMDRL_LEARNER_SHARDED_ADAMW_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

class Communicator;

struct ShardedAdamWOptions {
  int stage = 1;  // 1 | 2
  double weight_decay = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // torch::optim::AdamW's defaults
};

// Borrows `comm` (it must outlive this) and re-points `params` (float32, the same order
// and shapes on every rank) into its flat buffer. Not thread-safe; every rank makes the
// same calls in the same order (they are collectives).
class ShardedAdamW {
 public:
  ShardedAdamW(std::vector<at::Tensor> params, Communicator* comm, ShardedAdamWOptions options);

  // Points every parameter's grad at its slice of a zeroed flat gradient buffer, so that
  // backward passes (and GradientReducer::Finish) accumulate there.
  void ZeroGrad();
  // Frees the gradient buffer (between updates).
  void ReleaseGradients();
  // Gradient buffer, [padded numel]: stage 1 expects it summed across ranks already.
  at::Tensor flat_grad() const { return flat_grad_; }

  // One AdamW step at `lr`: (stage 2: reduce-scatter the gradients,) clip to the global
  // norm `max_norm` (<= 0: no clipping), update this rank's slice, all-gather the
  // parameters. Returns the global gradient norm before clipping. A failed collective
  // breaks the group (the Communicator's contract).
  absl::StatusOr<double> Step(double lr, double max_norm);

  int64_t steps() const { return steps_; }
  // The whole AdamW state, per parameter (float32, the parameters' shapes), gathered from
  // every rank: a collective.
  absl::Status GatherState(std::vector<at::Tensor>* exp_avg, std::vector<at::Tensor>* exp_avg_sq);
  // Keeps this rank's slice of a whole per-parameter state (as GatherState returns it).
  absl::Status LoadState(const std::vector<at::Tensor>& exp_avg,
                         const std::vector<at::Tensor>& exp_avg_sq, int64_t steps);

 private:
  at::Tensor Flatten(const std::vector<at::Tensor>& per_param) const;

  std::vector<at::Tensor> params_;
  std::vector<int64_t> offsets_;  // params_[i] is flat_[offsets_[i] : + numel]
  Communicator* comm_;
  ShardedAdamWOptions options_;
  int64_t shard_ = 0;  // elements per rank
  at::Tensor flat_, flat_grad_;
  at::Tensor exp_avg_, exp_avg_sq_;  // [shard_]
  int64_t steps_ = 0;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_SHARDED_ADAMW_H_
