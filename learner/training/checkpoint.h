// Checkpoints of a run: <run.dir>/checkpoints/update-NNNNNN/ holds the model directory
// (config.json + model.safetensors, opens in Hugging Face transformers), optimizer.pt,
// trainer_state.json (update, version, optimizer step, evaluations, data cursor and
// leases), buffered_groups.pb (accepted groups not yet trained) and config.yaml (the
// effective config), and manifest.json, written last, which lists every other file and
// its size. <run.dir>/checkpoints/latest names the newest complete one.
//
// Durability: a checkpoint is written into a temporary folder next to its final place,
// every file and the folder are fsynced, the folder is renamed into place and the parent
// fsynced; `latest` is then replaced the same way (temporary file, fsync, rename, fsync).
// A crash at any point leaves the previous complete checkpoint and a `latest` that names
// a complete checkpoint (or, at worst, a stale or missing `latest`, which FindCheckpoint
// survives by falling back to the newest complete folder).
#ifndef PMDRL_LEARNER_CHECKPOINT_H_
#define PMDRL_LEARNER_CHECKPOINT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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
  // Lengths of the run files that grow per update, synced before the checkpoint was
  // written (learner/ledger.h); a resume cuts them back to these. -1: not recorded.
  int64_t ledger_bytes = -1;   // ledger.csv
  int64_t metrics_bytes = -1;  // metrics.csv
  int64_t samples_bytes = -1;  // samples.jsonl
};

// Writes the files a checkpoint holds besides WriteCheckpoint's own: the trainer's model
// directory and optimizer.pt (Trainer::Save), the tokenizer files. It writes into `dir`,
// the temporary folder, which becomes the checkpoint only after everything is synced.
using SaveCheckpointFiles = std::function<absl::Status(const std::string& dir)>;

struct CheckpointWriteOptions {
  // Complete checkpoints kept after a successful write, the new one included (older
  // ones, by update, are removed); 0 keeps all (learner.keep_checkpoints).
  int64_t keep = 3;
  // Fault injection for tests: called at "before_rename" (the temporary folder is
  // complete and synced) and "before_latest" (the checkpoint is in place, `latest` not
  // yet updated); a non-OK status stops the write there, leaving the files as a crash at
  // that point would.
  std::function<absl::Status(std::string_view step)> fault;
};

// Writes a checkpoint of `state.update` under <run_dir>/checkpoints and points `latest`
// at it (see the top of this file), then prunes to `options.keep`. Temporary folders
// left by crashed writes are removed first. The previous complete checkpoint is never
// removed before the new one is in place (rewriting the same update moves the old
// folder aside only for the rename). Returns the checkpoint's folder; an error names the
// path that failed and leaves the previous checkpoints and `latest` untouched.
absl::StatusOr<std::string> WriteCheckpoint(const std::string& run_dir, const TrainerState& state,
                                            const SaveCheckpointFiles& save_files,
                                            const std::vector<v1::Group>& buffered,
                                            const std::string& config_yaml,
                                            const CheckpointWriteOptions& options = {});

// Runs `write` up to `attempts` times, sleeping `backoff`, 2 x `backoff`, ... between
// tries and logging each failure as a warning. Returns the first success, or the last
// error prefixed with the number of attempts.
absl::StatusOr<std::string> RetryCheckpointWrite(
    int attempts, std::chrono::milliseconds backoff,
    const std::function<absl::StatusOr<std::string>()>& write);

// OK when `dir` is a complete checkpoint: its manifest.json parses and every file it
// lists is there with its size. A folder without a manifest (written before manifests
// existed) is complete when trainer_state.json parses and buffered_groups.pb,
// optimizer.pt and config.json exist. Otherwise an error that says what is missing.
// Only stats files and reads the small JSON ones.
absl::Status CheckCheckpointComplete(const std::string& dir);

// `resume`: "auto" or a folder. "auto": the checkpoint `latest` names; when `latest` is
// missing or unreadable or names a folder that is not a complete checkpoint, the newest
// complete update-NNNNNN folder instead, with a warning that says which and why;
// NotFound when there is no complete checkpoint. A folder must be a complete checkpoint.
absl::StatusOr<std::string> FindCheckpoint(const std::string& run_dir, const std::string& resume);

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir);
// The groups of buffered_groups.pb; a truncated or corrupt file is an error naming it.
absl::StatusOr<std::vector<v1::Group>> ReadBufferedGroups(const std::string& checkpoint_dir);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_CHECKPOINT_H_
