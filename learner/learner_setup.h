// The learner process before (and, on ranks >= 1, instead of) its training loop: the
// run directory, where a run starts from (a fresh policy or a checkpoint), the
// coordinator's options, joining the other data-parallel ranks, and the follower ranks'
// own loop. Every error is an absl::Status whose message is the line to log; the caller
// owns everything these functions return.
#ifndef PMDRL_LEARNER_LEARNER_SETUP_H_
#define PMDRL_LEARNER_LEARNER_SETUP_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/metrics.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/lease_table.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/training/checkpoint.h"
#include "learner/training/trainer.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

class Communicator;

// Creates run.dir, logs the effective config and, on rank 0, writes it to
// <run.dir>/config.yaml. Returns it (YAML).
absl::StatusOr<std::string> PrepareRunDir(const Config& config);

// learner.micro_batch_tokens must hold every prompt of the dataset with at least one
// response token: a budget below that would put every completion of the prompt into a
// micro-batch of its own, for the whole run. (Longer completions are only counted.)
absl::Status CheckMicroBatchBudget(const Config& config, const PromptSource& source);

// What the training loop starts from. The caller owns all of it.
struct LearnerStart {
  std::string checkpoint;  // the checkpoint resumed from; "" for a fresh run
  TrainerState state;      // default for a fresh run
  std::unique_ptr<Trainer> trainer;
  LeaseTable table{0};              // the data cursor and the places issued but not done
  std::vector<v1::Group> buffered;  // accepted groups the checkpoint had not trained
};

// learner.resume "" starts a fresh run from model.path (random init when empty) with a
// lease table over `source`. Otherwise the checkpoint it names ("auto": the latest in
// run.dir) gives the policy, the optimizer state and step, the lease table, the
// buffered groups and the state (update, version, evaluations, elapsed time).
absl::StatusOr<LearnerStart> LoadLearnerStart(const Config& config, const PromptSource& source);

// The coordinator's options for a policy of `model`: learner.group_size,
// prompts_per_update, max_staleness, lease_ttl_seconds, the group limits, and the
// model config the actors receive. on_group is left to the caller.
absl::StatusOr<CoordinatorOptions> MakeCoordinatorOptions(const Config& config,
                                                          const ModelConfig& model);

// Joins the learner.world_size ranks through learner.rendezvous (authenticated with
// the run's bearer `token`) and gives every rank rank 0's weights.
absl::StatusOr<std::unique_ptr<Communicator>> JoinLearnerRanks(const Config& config,
                                                               const std::string& token,
                                                               Trainer& trainer);

// Ranks >= 1: trains on the shares rank 0 hands out until it says stop, then writes
// <run.dir>/metrics/learner-<rank>.prom. A rank 0 that dies shows as a failed
// collective after learner.collective_timeout_seconds at most.
absl::Status RunFollower(const Config& config, Trainer& trainer, Communicator& comm,
                         MetricsRegistry& metrics);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_LEARNER_SETUP_H_
