// The coordinator of a run (learner rank 0): the data cursor, prompt leases, the actor
// registry, admission control, and the intake of scored groups into rollout batches.
//
// Promises (docs/design.md "Data flow"):
//  - a place in the data stream (epoch, index) is trained at most once: a group is
//    accepted at most once per place (again only after its accepted group went stale in
//    the buffer, untrained), so neither a retried send nor a late group from an expired,
//    re-issued lease counts twice;
//  - every submitted group with a known lease is answered accepted, stale or duplicate,
//    and counted under exactly that outcome, unless it fails validation (rejected);
//  - a group is rejected unless its actor_id, prompt tokens and reference are those its
//    lease was issued with: a token holder cannot train rows it was never lent;
//  - no place is lost: an expired lease, a stale group and a group that went stale in
//    the buffer (PopBatch) all give the place back for re-issue, counted in
//    pmdrl_learner_places_released_total{reason}; a rejected group retires its lease and
//    gives its place back once, and a place rejected a second time is dropped (marked
//    done, never issued again), counted in pmdrl_learner_places_dropped_total: a prompt
//    that always yields an invalid group must not be re-issued forever, yet one bad
//    actor must not cost a prompt;
//  - no answer whose check timed out (OUTCOME_TIMEOUT) trains silently: each is counted
//    (pmdrl_learner_grader_timeouts_total) and, by options.requeue_timeouts (config
//    verifier.timeout_reward "requeue"), the first group with one for a place is not
//    trained: its lease is retired, its place given back for re-issue (ACK_RELEASED,
//    pmdrl_learner_places_released_total{reason="grader_timeout"}, on_released
//    "grader_timeout"); a later group for that place trains with its timed-out answers
//    rewarded options.timeout_reward (reward_incorrect). With a numeric timeout_reward
//    they train at once with that reward. The learner owns this rule; the verifier only
//    marks the outcome;
//  - no lease is handed out while the work in flight would arrive too stale
//    (in flight + buffered < prompts_per_update * (1 + max_staleness), one batch less
//    while a batch PopBatch handed out is training, until SetVersion);
//  - expired leases are re-issued, so an actor that dies loses nothing;
//  - Snapshot() is one consistent view for a checkpoint: a buffered group's place is
//    done there, never also outstanding, so a resumed run does not train it twice.
// Thread-safe: gRPC handlers and the training loop call it concurrently. It owns the
// lease table and the buffer of accepted groups; it does not own the metrics registry.
#ifndef PMDRL_LEARNER_COORDINATOR_H_
#define PMDRL_LEARNER_COORDINATOR_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "common/validate.h"
#include "learner/coordinator/lease_table.h"
#include "learner/coordinator/prompt_source.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

struct CoordinatorOptions {
  int64_t group_size = 8;
  int64_t prompts_per_update = 64;
  int64_t max_staleness = 2;
  int64_t lease_ttl_ms = 30000;
  GroupLimits limits;             // strict checks of scored groups
  std::string model_config_json;  // handed to registering actors
  // Called under the coordinator's lock for every classified group (not for rejected
  // ones), in arrival order: the audit log of <run.dir>/groups.csv.
  std::function<void(const v1::Group&, v1::AckStatus, uint64_t learner_version)> on_group;
  // Called under the lock for a group whose place is given back untrained (reason
  // "stale_in_buffer": accepted, it went stale waiting in the buffer; "grader_timeout":
  // not accepted, an answer's check timed out), so the audit log shows why that place is
  // accepted again later.
  std::function<void(const v1::Group&, std::string_view reason, uint64_t learner_version)>
      on_released;
  // Answers graded OUTCOME_TIMEOUT (config verifier.timeout_reward): true ("requeue"):
  // the first group with one for a place is released untrained (reason
  // "grader_timeout"); a later one trains. Either way a trained timed-out answer's
  // reward is timeout_reward ("requeue": verifier.reward_incorrect; else the number).
  bool requeue_timeouts = true;
  float timeout_reward = -1.0f;
};

// What a checkpoint keeps of the coordinator, taken under one lock acquisition.
struct CoordinatorSnapshot {
  LeaseTableState lease;            // cursor, done places, outstanding places
  std::vector<v1::Group> buffered;  // accepted, not yet trained: their places are done
};

class Coordinator {
 public:
  Coordinator(CoordinatorOptions options, const PromptSource* source, LeaseTable table,
              MetricsRegistry* metrics);

  v1::RegisterActorResponse RegisterActor(const v1::RegisterActorRequest& request);
  absl::StatusOr<v1::LeasePromptsResponse> LeasePrompts(const v1::LeasePromptsRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);

  // Learner.SubmitGroups: validates one scored group (INVALID_ARGUMENT naming the field,
  // or an unknown lease) and classifies it. Counted either way. A rejected group with a
  // live lease retires it (see the class comment).
  absl::StatusOr<v1::GroupAck> Submit(const v1::Group& group);

  // Blocks until `prompts_per_update` accepted groups usable at `version` are buffered
  // (stale ones are dropped, counted, and their places given back for re-issue), or
  // until `timeout`. nullopt on timeout. A batch handed out counts as training, for
  // admission control, until the next SetVersion.
  std::optional<std::vector<v1::Group>> PopBatch(uint64_t version,
                                                 std::chrono::milliseconds timeout);

  void SetVersion(uint64_t version);
  uint64_t version() const;
  // No batch will be popped again (the last update is trained, or the loop is ending):
  // nothing more is lent, so no place is leased after the final checkpoint's snapshot
  // (SetVersion would otherwise open the budget for a batch that never comes). Actors
  // are told the run is over only by Finish.
  void CloseAdmission();
  // The run is over: actors are told to stop; late groups are still answered.
  void Finish();
  bool finished() const;

  struct Counts {
    uint64_t accepted = 0, stale = 0, duplicate = 0, rejected = 0;
    uint64_t reissued = 0;
    uint32_t live_actors = 0;
    int64_t data_epoch = 0, data_index = 0;
  };
  Counts counts() const;
  // One entry per registered actor, for GetStatus.
  std::vector<v1::ActorStatus> ActorStatuses() const;

  // For a checkpoint: the lease table and the accepted groups not yet trained (which a
  // resumed run trains on), as one view.
  CoordinatorSnapshot Snapshot() const;
  // Each alone. Never pair them for a checkpoint: a group accepted between the two
  // calls would be saved both as outstanding and as buffered, and trained twice.
  LeaseTableState SaveState() const;
  std::vector<v1::Group> BufferedGroups() const;
  void RestoreBuffer(std::vector<v1::Group> groups);

 private:
  struct ActorInfo {
    std::string name;
    int64_t last_seen_ms = 0;
    uint64_t version = 0;
  };

  int64_t NowMs() const;
  void ExpireLocked(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t LiveActorsLocked(int64_t now_ms) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `group` carries the prompt tokens and reference of `lease`'s place (Submit
  // checks the actor_id first, and rejects a group naming another actor's lease without
  // touching that lease); else InvalidArgument naming the field that differs (untrusted
  // text quoted).
  absl::Status MatchesLeaseLocked(const v1::Group& group, const LeaseInfo& lease) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a rejected group and answers its lease (see the class comment); returns `why`.
  absl::Status RejectLocked(const v1::Group& group, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a rejected group: the status count and the metric.
  void CountRejectedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  const PromptSource* source_;
  MetricsRegistry* metrics_;

  mutable absl::Mutex mu_;
  LeaseTable table_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::Group> buffer_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ActorInfo> actors_ ABSL_GUARDED_BY(mu_);
  uint64_t next_actor_ = 0 ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // A batch PopBatch handed out is being trained (until the next SetVersion).
  bool training_ ABSL_GUARDED_BY(mu_) = false;
  bool admission_closed_ ABSL_GUARDED_BY(mu_) = false;  // CloseAdmission was called
  Counts counts_ ABSL_GUARDED_BY(mu_);
  // Places rejected once and not accepted or dropped since. Not checkpointed: after a
  // resume such a place gets one more chance.
  absl::flat_hash_set<StreamPosition> rejected_once_ ABSL_GUARDED_BY(mu_);
  // Places released once for a grader timeout and not accepted since. Not checkpointed
  // either: after a resume such a place may be released once more.
  absl::flat_hash_set<StreamPosition> timed_out_once_ ABSL_GUARDED_BY(mu_);

  prometheus::Counter* accepted_;
  prometheus::Counter* stale_;
  prometheus::Counter* stale_in_buffer_;
  prometheus::Counter* duplicate_;
  prometheus::Counter* rejected_;
  prometheus::Counter* unknown_lease_;
  prometheus::Counter* leases_issued_;
  prometheus::Counter* leases_reissued_;
  prometheus::Counter* leases_expired_;
  prometheus::Counter* released_stale_;
  prometheus::Counter* released_stale_in_buffer_;
  prometheus::Counter* released_rejected_;
  prometheus::Counter* dropped_rejected_;
  prometheus::Counter* grader_timeouts_;
  prometheus::Counter* released_grader_timeout_;
  prometheus::Gauge* in_flight_;
  prometheus::Gauge* buffered_;
  prometheus::Gauge* live_actors_;
  prometheus::Histogram* staleness_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_COORDINATOR_H_
