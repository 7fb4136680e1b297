// The learner's policy and optimizer: turns a rollout batch of scored groups into one
// policy update with the loss learner.loss names (learner/training/policy_loss.h; several AdamW
// steps, one per mini-batch). Owns the model and the optimizer; held-out evaluation of
// the model is learner/evaluator.h's. Not thread-safe: the training loop is its only
// caller. Torch stays inside the .cc files (learner/training/trainer_impl.h is their shared state).
#ifndef PMDRL_LEARNER_TRAINER_H_
#define PMDRL_LEARNER_TRAINER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "common/weight_stream.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

class CausalLM;
class Communicator;

struct UpdateStats {
  double loss = 0;       // mean over mini-batches
  double grad_norm = 0;  // mean over mini-batches, before clipping
  double mean_reward = 0;
  double mixed_fraction = 0;  // groups whose rewards are not all equal
  int64_t equal_reward_groups = 0;
  double logprob_mismatch = 0;  // mean |learner − actor| token log-prob at the sampling version
  double mean_abs_delta = 0;    // mean |Δ_j| (sequence log-ratio) seen by the loss
  double staleness_mean = 0;
  // Mean importance weight w_j = min(is_cap, π_learner/π_actor) over the completions
  // (learner.importance_weights truncated); 1 when importance weights are off.
  double importance_weight_mean = 1;
  double entropy = 0;          // mean token entropy of the policy on the responses
  int64_t trained_tokens = 0;  // prompt + response tokens through forward/backward
  int64_t response_tokens = 0;
  int64_t completions = 0;
  // Rows longer than learner.micro_batch_tokens, each trained in a micro-batch of its own.
  int64_t oversize_sequences = 0;
  double seconds = 0;
  // Peak resident (CPU) or allocated (CUDA) bytes of the process over the update:
  // measured by whoever owns the window (learner/training/peak_memory.h), not by the Trainer.
  int64_t peak_memory_bytes = 0;
};

// The random-init architecture of config.model for this tokenizer.
ModelConfig ModelConfigFromConfig(const Config& config, const Tokenizer& tokenizer);

class Trainer {
 public:
  // Starts from `model_dir` when non-empty, else from a random init seeded by run.seed.
  // `config` is a validated one (LoadConfig). Errors: a bad learner.device, a model that
  // cannot be loaded, built or moved there, or one smaller than the tokenizer's vocabulary.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Config& config,
                                                         const Tokenizer& tokenizer,
                                                         const std::string& model_dir);
  ~Trainer();

  // One policy update, producing version + 1. Without `comm`: PlanUpdate for a world of
  // 1, then TrainShare. With `comm` (rank 0 of a data-parallel group): plans a share per
  // rank, scatters them (the other ranks call TrainShare on theirs), trains on its own.
  absl::StatusOr<UpdateStats> Update(const std::vector<v1::Group>& groups, uint64_t version,
                                     Communicator* comm = nullptr);

  // Data parallel, rank 0: computes advantages and splits every mini-batch of the rollout
  // batch across `world_size` ranks, balanced by token count. Fills the batch-level
  // statistics (reward, mixed fraction, staleness) of *stats.
  absl::StatusOr<std::vector<v1::RankShare>> PlanUpdate(const std::vector<v1::Group>& groups,
                                                        uint64_t version, int world_size,
                                                        UpdateStats* stats) const;
  // Every rank: trains on its share, one optimizer step per mini-batch. With `comm`, the
  // gradients are summed across ranks before each step (each rank's loss is already
  // normalised by the global mini-batch), so every rank takes the same step, and the
  // result equals one rank training on the whole batch up to float rounding. The
  // per-rank metrics in the result (loss, mismatch, |delta|, entropy, tokens) are
  // combined across ranks.
  absl::StatusOr<UpdateStats> TrainShare(const v1::RankShare& share, Communicator* comm);

  // The float32 master weights as `version` in `dtype` (converted here, once), with
  // checksums: what the WeightPublisher streams to the actors.
  std::shared_ptr<const WeightVersion> Snapshot(uint64_t version,
                                                WireDtype dtype = WireDtype::kFloat32);

  // Data parallel: rank 0's parameters to every rank (at start, so ranks begin equal).
  absl::Status BroadcastWeights(Communicator* comm);
  // Checks that every rank holds bit-identical parameters: a 64-bit hash of each rank's
  // parameter bytes, exchanged by all-reduce. The error names the first rank that
  // differs from rank 0 and the update.
  absl::Status CheckReplicas(Communicator* comm, int64_t update);
  const ModelConfig& model_config() const;
  // The float32 master weights, owned by the Trainer (a copy of the handle shares them):
  // what learner/evaluator.h generates with. Only for reading between updates.
  CausalLM& model();

  // Model directory (config.json + model.safetensors) plus optimizer.pt in `dir`. The
  // file holds the whole AdamW state whatever the number of ranks: with ZeRO every rank
  // first calls GatherOptimizerState (a collective), then rank 0 saves; LoadOptimizer
  // reads the whole state and each rank keeps its shard at its first update.
  absl::Status Save(const std::string& dir);
  // ZeRO (learner.zero_stage > 0, several ranks): collects the sharded AdamW state from
  // every rank for rank 0's next Save. Every rank calls it; a no-op without sharding.
  absl::Status GatherOptimizerState(Communicator* comm);
  absl::Status LoadOptimizer(const std::string& dir);
  int64_t optimizer_steps() const;
  void set_optimizer_steps(int64_t steps);

  // One supervised step (cross-entropy on the response tokens), for `pmdrl sft`.
  // Returns the mean token loss.
  absl::StatusOr<double> SupervisedStep(const std::vector<std::vector<int32_t>>& prompts,
                                        const std::vector<std::vector<int32_t>>& targets,
                                        double lr);

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_TRAINER_H_
