// <run.dir>/ledger.csv: the exact record of what the current weights were trained on.
// One row per place the learner trained: epoch, index, lease_id, actor_id,
// policy_version (the weights that sampled the group) and update (the one that trained
// it). Rows are appended as updates happen and fsynced with each checkpoint, whose
// trainer_state.json records the ledger's length then (TrainerState::run_files); a
// resume cuts the file back to that length, so after any crash the ledger lists
// exactly the places trained into the weights it resumes from, each once.
//
// The other run files that grow per update (metrics.csv, samples.jsonl) are cut back the
// same way (SyncedLength at the checkpoint, CutBack on resume), so a rolled-back update
// is not recorded twice. groups.csv is different: it logs arrivals, including those of
// groups a crash later lost, and is never cut.
#ifndef PMDRL_LEARNER_LEDGER_H_
#define PMDRL_LEARNER_LEDGER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

inline constexpr char kLedgerHeader[] = "epoch,index,lease_id,actor_id,policy_version,update\n";

// Owns the ledger file's descriptor. One writer (the training loop); not thread-safe.
class Ledger {
 public:
  Ledger() = default;
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;
  ~Ledger();

  // A fresh run (`cut_to` < 0 and !`resume`): creates or empties `path` and writes the
  // header. A resume: cuts the file back to `cut_to` bytes (the checkpoint's record;
  // < 0: an older checkpoint without one, keep the file as it is) and appends after it;
  // a missing file (a checkpoint of another run folder) is started anew, with a warning.
  // A file shorter than `cut_to` is DataLoss: rows the checkpoint counted durable are gone.
  absl::Status Open(const std::string& path, bool resume, int64_t cut_to);

  // Appends one row per group of `batch`, all trained by `update`. Not synced; an
  // error (a full disk) names the file.
  absl::Status Append(int64_t update, const std::vector<v1::Group>& batch);

  // fsyncs the file and returns its length, the value a checkpoint records.
  absl::StatusOr<int64_t> Sync();

 private:
  std::string path_;
  int fd_ = -1;
  // A failed fsync may have dropped dirty pages; a retry that succeeds would then vouch
  // for rows that are gone, so every later Sync fails too.
  bool sync_failed_ = false;
};

// fsyncs `path` (written through another handle, flushed) and returns its length; a
// missing file is length 0.
absl::StatusOr<int64_t> SyncedLength(const std::string& path);

// Cuts `path` back to `bytes` when it is longer (a resume dropping rows of rolled-back
// updates); `bytes` < 0 or a missing file: nothing to do. A file shorter than `bytes`
// is left as it is, with a warning (it was not synced before a machine crash).
absl::Status CutBack(const std::string& path, int64_t bytes);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_LEDGER_H_
