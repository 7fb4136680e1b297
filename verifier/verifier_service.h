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
  // Task name -> grader. Null: GraderForTask. Tests inject misbehaving graders here.
  std::function<absl::StatusOr<Grader>(std::string_view task)> grader_for_task;
};

class GraderPool;  // verifier/grader_pool.h

// Grades the completions of one group and writes reward, outcome, verifier_id and
// verify_seconds into it. Thread-safe: many streams may call Score concurrently; they
// share one pool of grading threads.
//
// The time limit holds even against a grader that ignores its Deadline: grading runs
// on pool threads and Score waits with a timeout. An answer whose check overruns
// (timeout plus a small grace, so a grader honouring its Deadline reports its own
// kTimeout first) scores as OUTCOME_TIMEOUT; its result is ignored and its thread is
// written off (leaked until the grader returns) and replaced, so the pool keeps its
// capacity. Such threads only hold copies of their inputs, never the group.
//
// Metrics (in `metrics`, not owned, must outlive the scorer):
//   pmdrl_verifier_completions_total{outcome="correct|incorrect|parse_error|timeout"}
//   pmdrl_verifier_score_seconds (histogram, per group)
//   pmdrl_verifier_grader_overruns_total, pmdrl_verifier_grader_threads_stuck
class GroupScorer {
 public:
  GroupScorer(ScorerOptions options, MetricsRegistry* metrics);
  GroupScorer(const GroupScorer&) = delete;
  GroupScorer& operator=(const GroupScorer&) = delete;
  ~GroupScorer();

  // InvalidArgument (group untouched, nothing counted) for a task without a grader;
  // otherwise OK with every completion scored.
  absl::Status Score(v1::Group* group);

  const ScorerOptions& options() const { return options_; }

 private:
  const ScorerOptions options_;
  std::unique_ptr<GraderPool> pool_;
  // The metrics, looked up once in `metrics` (which owns them): completions by verdict
  // (indexed by Verdict), score time per group, overruns and stuck threads.
  std::array<prometheus::Counter*, 4> completions_{};
  prometheus::Histogram* score_seconds_ = nullptr;
  prometheus::Counter* overruns_ = nullptr;
  prometheus::Gauge* threads_stuck_ = nullptr;
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

// Verifier.ScoreGroups. Per actor stream, for each group in order: validate
// (ValidateGroup, unscored) -> score (GroupScorer) -> forward on this stream's own
// Learner.SubmitGroups stream (opened lazily; if it breaks, reopened once and the group
// resent: the learner de-duplicates) -> write the learner's ack back to the actor.
// Invalid groups get ACK_REJECTED and are not forwarded; if the learner cannot be
// reached the actor gets ACK_UNKNOWN, so it can retry elsewhere. A call without the
// right bearer token ends with UNAUTHENTICATED before any group is read.
//
// Metrics, beside GroupScorer's:
//   pmdrl_verifier_rejected_total{reason="unauthenticated|invalid"}
//   pmdrl_verifier_groups_forwarded_total  (learner acked, whatever the ack said)
//   pmdrl_verifier_groups_failed_total     (learner unreachable)
//   pmdrl_verifier_streams_active
//
// Limitation: a learner that accepts a group but never acks (alive, but stuck) blocks
// that actor stream's handler; dead learners are noticed through gRPC keepalive.
class VerifierService final : public v1::Verifier::Service {
 public:
  // `metrics` is not owned and must outlive the service.
  VerifierService(VerifierOptions options, MetricsRegistry* metrics);
  ~VerifierService() override;

  grpc::Status ScoreGroups(grpc::ServerContext* context,
                           grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override;

  GroupScorer& scorer() { return scorer_; }

 private:
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
