// Checkpoints of a run: <run.dir>/checkpoints/update-NNNNNN/ holds the model directory
// (config.json + model.safetensors, opens in Hugging Face transformers), optimizer.pt,
// trainer_state.json (update, version, optimizer step, evaluations, data cursor and
// leases), buffered_groups.pb (accepted groups not yet trained) and config.yaml (the
// effective config). <run.dir>/checkpoints/latest names the newest complete one: a
// checkpoint is written to a temporary folder and renamed, so a crash never leaves a
// half-written checkpoint behind the `latest` pointer.
#ifndef PMDRL_LEARNER_CHECKPOINT_H_
#define PMDRL_LEARNER_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/trainer.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

struct TrainerState {
  int64_t update = 0;
  uint64_t version = 0;
  int64_t optimizer_steps = 0;
  double elapsed_seconds = 0;
  double base_accuracy = -1;
  std::vector<double> evaluations;  // greedy accuracy of every evaluation, in order
  std::string lease_state_json;     // LeaseTableState as JSON
};

// Writes a checkpoint of `update` and points `latest` at it. Returns its folder.
absl::StatusOr<std::string> WriteCheckpoint(const std::string& run_dir, const TrainerState& state,
                                            Trainer& trainer,
                                            const std::vector<v1::Group>& buffered,
                                            const std::string& config_yaml);

// `resume`: "auto" (the latest checkpoint of run_dir; NotFound if none) or a folder.
absl::StatusOr<std::string> FindCheckpoint(const std::string& run_dir, const std::string& resume);

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir);
absl::StatusOr<std::vector<v1::Group>> ReadBufferedGroups(const std::string& checkpoint_dir);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_CHECKPOINT_H_
