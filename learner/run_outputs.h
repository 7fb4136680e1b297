// What a training run leaves in run.dir as it goes, and what GetStatus reports of it:
//  - metrics.csv: one row per update (row 0: the base evaluation of a fresh run);
//  - samples.jsonl: one scored group per update, to see what the policy writes;
//  - groups.csv: every group the coordinator classified, in arrival order;
//  - the tokenizer files next to a checkpoint's weights.
// A resumed run appends to the files of the run it resumes (no second header). The
// writers flush after every line, so a crash loses at most the line being written. They
// are not thread-safe: each has one writer (the training loop, or the coordinator under
// its lock for groups.csv). Progress is the exception: shared, behind its own mutex.
#ifndef PMDRL_LEARNER_RUN_OUTPUTS_H_
#define PMDRL_LEARNER_RUN_OUTPUTS_H_

#include <chrono>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "learner/coordinator/coordinator.h"
#include "learner/evaluator.h"
#include "learner/training/trainer.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// <run.dir>/samples.jsonl: per update its first group (prompt, reference, every
// completion's text, tokens, reward and outcome). Writing without Open does nothing.
class SampleLog {
 public:
  void Open(const std::string& path, bool append);
  void Write(int64_t update, uint64_t version, const v1::Group& group);

 private:
  std::ofstream out_;
};

// <run.dir>/metrics.csv. The header is written unless appending to an existing file.
class MetricsCsv {
 public:
  absl::Status Open(const std::string& path, bool append);
  // `stats` null: an evaluation-only row (the base policy); `eval` null: no evaluation
  // at this update. Negative accuracies are written as empty cells.
  void Row(int64_t update, uint64_t version, double elapsed, const UpdateStats* stats,
           const EvalResult* eval, const Coordinator::Counts& counts, double sampled_tps);

 private:
  std::ofstream out_;
};

// <run.dir>/groups.csv: every classified group (accepted, stale, duplicate), in arrival
// order, and every group whose place was given back untrained (outcome
// RELEASED_<REASON>: RELEASED_STALE_IN_BUFFER for an accepted group, when it is released;
// RELEASED_GRADER_TIMEOUT for one with a timed-out answer, in its place): a place is
// trained at most once when between two ACK_ACCEPTED rows of it there is a RELEASED one.
// Tests and audits read it. The header is written unless appending.
class GroupLog {
 public:
  void Open(const std::string& path, bool append);
  // Fits CoordinatorOptions::on_group.
  void Write(const v1::Group& group, v1::AckStatus status, uint64_t learner_version);
  // Fits CoordinatorOptions::on_released.
  void WriteReleased(const v1::Group& group, std::string_view reason, uint64_t learner_version);
  // Points `options`' on_group and on_released at this log, which must outlive the
  // coordinator built from them.
  void AttachTo(CoordinatorOptions* options);

 private:
  void WriteRow(const v1::Group& group, std::string_view outcome, uint64_t learner_version);

  std::ofstream out_;
};

// What GetStatus reports of the training side. The loop writes the fields under `mu`;
// Fill reads them under it from any thread.
struct Progress {
  std::mutex mu;
  uint64_t update = 0;
  double mean_reward = 0;
  double eval_accuracy = -1;
  double base_accuracy = -1;
  std::vector<double> evaluations;  // greedy accuracy of every evaluation, in order
  int64_t eval_last = 3;            // FinalAccuracy averages this many evaluations
  double tokens_per_second = 0;
  double elapsed_offset = 0;  // seconds trained before a resume
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  double Elapsed() const;
  // The mean of the last eval_last evaluations; -1 without any.
  double FinalAccuracy() const;
  // The training side of a StatusResponse. Locks `mu`.
  void Fill(v1::StatusResponse* response);
};

// Copies the tokenizer side of a Hugging Face model directory (tokenizer.json,
// tokenizer_config.json, generation_config.json, special_tokens_map.json,
// chat_template.jinja, those present) into `checkpoint`, so that the checkpoint is a
// complete model directory (pmdrl generate, transformers, a later run's model.path).
// A file that cannot be copied is logged and skipped.
void CopyTokenizerFiles(const std::string& model_dir, const std::string& checkpoint);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_RUN_OUTPUTS_H_
