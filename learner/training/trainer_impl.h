// Internal to the Trainer: the state behind Trainer's pointer to implementation, shared
// by the files that implement it (learner/training/trainer.cc: creation, updates, replicas;
// learner/training/trainer_optimizer_state.cc: the optimizer state in checkpoints and ZeRO
// shards). Nothing else includes it. Unlike learner/training/trainer.h it brings in Torch.
// Ownership: Trainer::Impl owns the model, its compute copy and the optimizers; the
// Trainer owns the Impl. Not thread-safe, like the Trainer.
#ifndef PMDRL_LEARNER_TRAINER_IMPL_H_
#define PMDRL_LEARNER_TRAINER_IMPL_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/config.h"
#include "common/nn/model.h"
#include "learner/training/micro_batch.h"
#include "learner/training/policy_loss.h"
#include "learner/training/sharded_adamw.h"
#include "learner/training/trainer.h"

namespace pmdrl {

class Communicator;

// A micro-batch's response-token log-probs (Trainer::Impl::Score).
struct ScoredTokens {
  torch::Tensor token_logp;  // [n, T-1] in the packed frame
  double entropy_sum = 0, entropy_tokens = 0;
};

struct Trainer::Impl {
  Config config;
  torch::Device device{torch::kCPU};
  // The float32 weights the optimizer updates (master weights), which evaluation
  // (learner/evaluator.h, through Trainer::model), snapshots and checkpoints read.
  CausalLM model{nullptr};
  // What the training forward and backward run: `model` itself in float32; with
  // learner.dtype bfloat16 a bfloat16 copy whose gradients are handed to the master
  // weights before each step and which takes their new values after it.
  CausalLM compute{nullptr};
  // The optimizer of an unsharded rank. With ZeRO (learner.zero_stage > 0 and several
  // ranks) `sharded` updates the parameters instead, and `optimizer` only carries whole
  // state between a checkpoint file and the shards (LoadOptimizer, GatherOptimizerState).
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<ShardedAdamW> sharded;
  int64_t steps = 0;
  std::vector<int64_t> never_sampled;
  double temperature = 1.0;

  void SetLr(double lr) {
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
  }

  double ScheduledLr() const {
    const double base = config.learner.lr;
    const int64_t w = config.learner.warmup_steps;
    if (w <= 0 || steps >= w) return base;
    return base * static_cast<double>(steps + 1) / static_cast<double>(w);
  }

  // Token log-probs of a packed micro-batch's response tokens under the current policy,
  // in its padded frame ([n, T-1], 0 outside the responses; differentiable unless grad
  // mode is off), and their entropy's sum over the response tokens. With activation
  // checkpointing, backward runs the layers again through `attention`, so it must
  // outlive the backward pass.
  ScoredTokens Score(const PackedSequences& packed, PackedSequenceAttention& attention,
                     bool entropy);

  bool mixed_precision() const { return compute.ptr() != model.ptr(); }

  // The compute copy's gradients into the master weights' (mixed precision).
  void GradientsToMaster();
  // The master weights' values into the compute copy (mixed precision).
  void MasterToCompute();
  // Clips the master weights' gradient norm to `clip` (none when <= 0); returns the
  // norm before clipping.
  double ClipAndNorm(double clip);

  // Optimizer state (learner/training/trainer_optimizer_state.cc).
  // The whole AdamW state per parameter, as `optimizer` holds it (loaded from a
  // checkpoint): what the shards start from. False if it holds none.
  bool WholeOptimizerState(std::vector<torch::Tensor>* exp_avg,
                           std::vector<torch::Tensor>* exp_avg_sq, int64_t* step);
  // ZeRO: the sharded optimizer, made at the first update with a communicator, from the
  // state a checkpoint loaded into `optimizer` if any (which is then dropped).
  absl::Status ShardOptimizer(Communicator* comm);
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_TRAINER_IMPL_H_
