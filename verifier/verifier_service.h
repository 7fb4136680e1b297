// The verifier's scoring service (docs/design.md "Data flow" steps 3-4, "Verifier"):
// actors stream unscored groups in, every completion is graded against the group's
// reference, and the scored group is forwarded to the learner, whose ack goes back to
// the actor. Two layers:
//   * GroupScorer: grades one group in place, with a hard time limit per answer. No
//     gRPC; unit tests call it directly.
//   * VerifierService: the Verifier.ScoreGroups plumbing (auth, validation, one
//     Learner.SubmitGroups stream per actor stream, acks, metrics).
// No Torch anywhere in the verifier.
#ifndef PMDRL_VERIFIER_VERIFIER_SERVICE_H_
#define PMDRL_VERIFIER_VERIFIER_SERVICE_H_

#include <grpcpp/channel.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/sync_stream.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/metrics.h"
#include "common/validate.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "verifier/grader.h"
#include "verifier/grader_process_pool.h"

namespace pmdrl {

struct ScorerOptions {
  std::string verifier_id = "verifier-0";  // stamped on every scored group
  std::string default_task = "arith";      // for groups whose `task` is empty
  // Hard limit per answer check, counted from when a worker starts it.
  std::chrono::milliseconds timeout{2000};
  float reward_correct = 1.0f;
  float reward_incorrect = -1.0f;  // also for parse errors and timeouts
  int threads = 2;                 // grading workers (at least 1)
  // Workers written off after overrunning the limit may keep running until their
  // grader returns; beyond this many, no replacement workers are started.
  int max_stuck_threads = 64;
  // Task name -> grader, run on the threads above. Null: GraderForTask. Tests inject
  // misbehaving graders here.
  std::function<absl::StatusOr<Grader>(std::string_view task)> grader_for_task;
  // The grader processes: graders that use GiNaC (GraderNeedsProcess: math) run there,
  // unless grader_for_task is set. pmdrl-verifier passes itself ("/proc/self/exe",
  // --grader-worker) and verifier.grader_processes. An empty executable starts none, and
  // groups of such tasks are then rejected.
  GraderProcessPool::Options grader_worker;
};

class GraderPool;  // verifier/grader_pool.h

// Grades the completions of one group and writes reward, outcome, verifier_id and
// verify_seconds into it. Thread-safe: many streams may call Score concurrently; they
// share one pool of grading threads and one pool of grader processes.
//
// The time limit holds even against a grader that ignores its Deadline. GiNaC graders
// (math) run in the grader processes (verifier/grader_process_pool.h): a check that
// overruns (timeout plus a small grace) scores OUTCOME_TIMEOUT and its worker is killed
// and replaced, so one pathological answer costs one worker for one deadline while the
// others go on; a worker that dies mid-check scores that answer OUTCOME_PARSE_ERROR.
// Other graders run on pool threads and Score waits with a timeout: an overrun scores
// OUTCOME_TIMEOUT, its result is ignored and its thread is written off (leaked until the
// grader returns) and replaced. Such threads only hold copies of their inputs.
//
// A timed-out answer gets reward_incorrect here as a placeholder: what it is worth is
// the learner's rule (verifier.timeout_reward, learner/coordinator/coordinator.h), which sees
// OUTCOME_TIMEOUT.
//
// Metrics (in `metrics`, not owned, must outlive the scorer):
//   pmdrl_verifier_completions_total{outcome="correct|incorrect|parse_error|timeout"}
//   pmdrl_verifier_score_seconds (histogram, per group)
//   pmdrl_verifier_grader_overruns_total, pmdrl_verifier_grader_threads_stuck (threads)
//   pmdrl_verifier_grader_workers_replaced_total{reason="timeout|died"} (processes)
class GroupScorer {
 public:
  GroupScorer(ScorerOptions options, MetricsRegistry* metrics);
  GroupScorer(const GroupScorer&) = delete;
  GroupScorer& operator=(const GroupScorer&) = delete;
  ~GroupScorer();

  // InvalidArgument (group untouched, nothing counted) for a task without a grader, or
  // one that needs the grader processes when there are none; otherwise OK with every
  // completion scored.
  absl::Status Score(v1::Group* group);

  // Whether the grader processes started (OK when none were asked for).
  const absl::Status& init_status() const { return init_status_; }
  // The grader processes; null when none run.
  const GraderProcessPool* grader_processes() const { return processes_.get(); }

  const ScorerOptions& options() const { return options_; }

 private:
  const ScorerOptions options_;
  std::unique_ptr<GraderPool> pool_;
  std::unique_ptr<GraderProcessPool> processes_;
  absl::Status init_status_;
  // The metrics, looked up once in `metrics` (which owns them): completions by verdict
  // (indexed by Verdict), score time per group, overruns and stuck threads.
  std::array<prometheus::Counter*, 4> completions_{};
  prometheus::Histogram* score_seconds_ = nullptr;
  prometheus::Counter* overruns_ = nullptr;
  prometheus::Gauge* threads_stuck_ = nullptr;
  prometheus::Counter* workers_replaced_timeout_ = nullptr;
  prometheus::Counter* workers_replaced_died_ = nullptr;
};

// The limits the verifier checks groups against. It does not know the model, so they
// are loose (the learner checks against the real vocabulary): vocab 2^20, 8192 prompt
// and response tokens, any group size k >= 1 (group_size 0). pmdrl-verifier uses
// VerifierLimitsFor(config), which only widens them.
GroupLimits DefaultVerifierLimits();
// The defaults, widened to what an actor of `config` can send (actor.max_new_tokens
// response tokens; its slot context less that for the prompt), so that a long-response
// run is not rejected by its verifiers without end.
GroupLimits VerifierLimitsFor(const Config& config);

struct VerifierOptions {
  ScorerOptions scorer;
  std::string learner = "127.0.0.1:50051";  // gRPC target of Learner.SubmitGroups
  std::string token;  // the run's bearer token: checked on calls in, sent on calls out
  // group_size 0: any k >= 1 (the group's own size is checked against itself).
  GroupLimits limits = DefaultVerifierLimits();
};

// Verifier.ScoreGroups. Per actor stream, each group as it arrives is validated
// (ValidateGroup, unscored) and scored (GroupScorer) at once, concurrently with the
// stream's other groups; in arrival order, each scored group is then forwarded on this
// stream's own Learner.SubmitGroups stream (opened lazily; if it breaks, reopened once
// and the group resent: the learner de-duplicates) and the learner's ack is written back
// to the actor. So acks go out one per group, in the order the groups came, and a slow
// group holds up only its successors' forwarding, not their grading. At most
// kStreamQueue groups of a stream are between read and ack; while that many are, the
// stream is not read, and gRPC flow control holds the actor back. Invalid groups get
// ACK_REJECTED (in their turn) and are not forwarded; if the learner cannot be reached
// the actor gets ACK_UNKNOWN, so it can retry elsewhere. Once a write to the actor fails
// the rest of its queue is graded but not forwarded (the actor resends it). A call
// without the right bearer token ends with UNAUTHENTICATED before any group is read.
//
// Metrics, beside GroupScorer's:
//   pmdrl_verifier_rejected_total{reason="unauthenticated|invalid"}
//   pmdrl_verifier_groups_forwarded_total  (learner acked, whatever the ack said)
//   pmdrl_verifier_groups_failed_total     (learner unreachable)
//   pmdrl_verifier_streams_active
//
// Limitation: a learner that accepts a group but never acks (alive, but stuck) blocks
// that actor stream's forwarding; dead learners are noticed through gRPC keepalive.
class VerifierService final : public v1::Verifier::Service {
 public:
  // `metrics` is not owned and must outlive the service.
  VerifierService(VerifierOptions options, MetricsRegistry* metrics);
  ~VerifierService() override;

  grpc::Status ScoreGroups(grpc::ServerContext* context,
                           grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override;

  GroupScorer& scorer() { return scorer_; }

  // Groups of one actor stream read but not yet acked, at most.
  static constexpr size_t kStreamQueue = 16;

 private:
  // Validates and scores `group` in place. True: it is to be forwarded; false: `ack`
  // holds its rejection. Counts and logs rejections. Thread-safe.
  bool ScoreOne(v1::Group* group, const std::string& peer, v1::GroupAck* ack);

  const VerifierOptions options_;
  GroupScorer scorer_;
  std::shared_ptr<grpc::Channel> learner_channel_;
  std::unique_ptr<v1::Learner::Stub> learner_stub_;
  // The metrics, looked up once in the registry (which owns them).
  prometheus::Counter* rejected_unauthenticated_ = nullptr;
  prometheus::Counter* rejected_invalid_ = nullptr;
  prometheus::Counter* forwarded_ = nullptr;
  prometheus::Counter* failed_ = nullptr;
  prometheus::Gauge* streams_active_ = nullptr;
};

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_VERIFIER_SERVICE_H_
