// The training loop of learner rank 0. Each step takes a rollout batch from the
// Coordinator, trains it through Trainer::Update, makes the new version known (first to
// the Coordinator, then to the actors through the WeightPublisher) and records it
// (metrics.csv, samples.jsonl, metrics, GetStatus); the loop evaluates and checkpoints
// on the learner.eval_every / learner.checkpoint_every schedule.
//
// Promises:
//  - every update trains exactly one batch and produces version + 1; the Coordinator
//    learns the new version before the actors can receive its weights, so a group
//    sampled with them never looks like it comes from the future;
//  - one metrics.csv row per update (row 0: the base evaluation of a fresh run);
//  - a checkpoint holds State() plus the trainer and the coordinator's buffered groups;
//    a loop built from it (learner/learner_setup.h) goes on where this one was;
//  - with data-parallel followers (`comm`): a poll that finds no batch sends them a
//    "tick", a checkpoint of a ZeRO-sharded optimizer first gathers the shards while
//    they still listen, and the end of training sends them "stop".
// Ownership: the loop borrows everything in Parts, which must outlive it, and owns the
// run's outputs (metrics.csv, samples.jsonl) and progress. One thread drives the loop;
// FillStatus may be called from any thread.
// Errors: a failed update, a lost rank or replicas that differ end the run (Step and Run
// return them); so does a checkpoint that failed 3 attempts (learner/training/checkpoint.h).
#ifndef PMDRL_LEARNER_TRAINING_LOOP_H_
#define PMDRL_LEARNER_TRAINING_LOOP_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config.h"
#include "learner/evaluator.h"
#include "learner/training/checkpoint.h"
#include "learner/training/trainer.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

class Communicator;
class Coordinator;
class MetricsRegistry;
class PromptSource;
class WeightPublisher;

class TrainingLoop {
 public:
  struct Parts {
    const Config* config = nullptr;        // learner.*, run.dir, model.path, actor.max_new_tokens
    const PromptSource* source = nullptr;  // held-out problems, grader, tokenizer name
    Trainer* trainer = nullptr;
    Coordinator* coordinator = nullptr;
    WeightPublisher* publisher = nullptr;
    MetricsRegistry* metrics = nullptr;
    Communicator* comm = nullptr;  // rank 0 of several; null with one rank
    std::string config_yaml;       // the effective config, copied into every checkpoint
  };

  // Starts at `start` (a checkpoint's state when `resumed`, else a default TrainerState):
  // tells the coordinator its version and publishes the trainer's weights as that version.
  TrainingLoop(Parts parts, const TrainerState& start, bool resumed);
  ~TrainingLoop();
  TrainingLoop(const TrainingLoop&) = delete;
  TrainingLoop& operator=(const TrainingLoop&) = delete;

  // Opens <run.dir>/metrics.csv and samples.jsonl (appending when resumed); a fresh run
  // then evaluates the base policy (metrics.csv row 0).
  absl::Status Start();

  // Steps until learner.updates, learner.max_seconds or a stop signal; then gathers the
  // optimizer shards for a last checkpoint, tells the followers to stop and, unless a
  // stop signal came, evaluates and checkpoints the last update if its step did not,
  // and tells the coordinator the run is over. An error returns at once (its message
  // is the line to log), without telling the followers anything.
  absl::Status Run();

  // One poll for a batch, waiting up to `wait`. false: none came (the followers got a
  // tick); true: one update is trained, published and recorded, and evaluated and
  // checkpointed when due.
  absl::StatusOr<bool> Step(std::chrono::milliseconds wait);
  // Held-out evaluation of the current policy, recorded in progress and metrics.
  EvalResult Evaluate();
  // Gathers a sharded optimizer from the followers, then writes a checkpoint of
  // State(). Returns its folder.
  absl::StatusOr<std::string> Checkpoint();
  // Makes version() the newest weights: the coordinator first, then the publisher.
  void Publish();

  // What a checkpoint taken now would record (elapsed time included).
  TrainerState State() const;
  int64_t update() const;
  uint64_t version() const;
  // The mean of the last learner.eval_last evaluations; -1 without any.
  double FinalAccuracy() const;
  // The training side of GetStatus. Thread-safe.
  void FillStatus(v1::StatusResponse* response) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_TRAINING_LOOP_H_
