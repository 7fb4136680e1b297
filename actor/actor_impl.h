// Internal to actor/: the state and threads behind Actor (actor.h), shared by
// actor.cc (the generation loop, sending, Run) and actor_registration.cc (registering
// and re-registering with the coordinator, weights, heartbeats). Not for other
// components: they use actor.h.
#ifndef PMDRL_ACTOR_ACTOR_IMPL_H_
#define PMDRL_ACTOR_ACTOR_IMPL_H_

#include <grpcpp/client_context.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "actor/actor.h"
#include "actor/group_sender.h"
#include "actor/verifier_pool.h"
#include "actor/weight_receiver.h"
#include "common/auth.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "engine/generation_engine.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

class Actor::Impl {
 public:
  using Clock = std::chrono::steady_clock;
  using milliseconds = std::chrono::milliseconds;
  static constexpr milliseconds kRpcTimeout{10000};
  static constexpr milliseconds kMaxBackoff{2000};
  // Upper bound on k: a coordinator asking for more is misconfigured, not a workload.
  static constexpr uint32_t kMaxGroupSize = 4096;

  static int64_t UnixMillis() {
    return std::chrono::duration_cast<milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  static double SecondsSince(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  }
  static const char* AckName(v1::AckStatus status) {
    switch (status) {
      case v1::ACK_ACCEPTED:
        return "accepted";
      case v1::ACK_STALE:
        return "stale";
      case v1::ACK_DUPLICATE:
        return "duplicate";
      case v1::ACK_REJECTED:
        return "rejected";
      case v1::ACK_RELEASED:
        return "released";
      default:
        return "unknown";
    }
  }

  Impl(ActorOptions options, MetricsRegistry* metrics)
      : options_(std::move(options)),
        generated_tokens_(
            metrics->Counter("pmdrl_actor_generated_tokens_total", "Response tokens sampled")),
        tokens_per_second_(metrics->Gauge("pmdrl_actor_tokens_per_second",
                                          "Sampled tokens per second in the last batch")),
        policy_version_(
            metrics->Gauge("pmdrl_actor_policy_version", "Policy version of the loaded weights")),
        groups_in_flight_(
            metrics->Gauge("pmdrl_actor_groups_in_flight", "Leased prompts being sampled or sent")),
        weight_swaps_(
            metrics->Counter("pmdrl_actor_weight_swaps_total", "Policy weight versions loaded")),
        generate_seconds_(metrics->Counter("pmdrl_actor_generate_seconds_total",
                                           "Time in generation engine steps")),
        send_wait_seconds_(metrics->Counter(
            "pmdrl_actor_send_wait_seconds_total",
            "Time generation waited for room in the send window (actor.send_window)")),
        weight_sync_seconds_(metrics->Histogram(
            "pmdrl_actor_weight_sync_seconds",
            "From the first chunk of a version to its weights loaded in the model",
            {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120})) {
    for (v1::AckStatus s : {v1::ACK_ACCEPTED, v1::ACK_STALE, v1::ACK_DUPLICATE, v1::ACK_REJECTED,
                            v1::ACK_RELEASED, v1::ACK_UNKNOWN}) {
      groups_sent_[s] = &metrics->Counter(
          "pmdrl_actor_groups_sent_total",
          "Groups handed to verifiers, by the learner's answer (unknown: dropped unacked)",
          {{"status", AckName(s)}});
    }
  }

  absl::Status Run();
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
  }

 private:
  bool Done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return DoneLocked();
  }
  bool DoneLocked() const { return stop_ || finished_ || shutdown_ || !fatal_.ok(); }
  // Sleeps `d` or until Done(); returns !Done().
  bool SleepFor(milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, d, [&] { return DoneLocked(); });
    return !DoneLocked();
  }
  // An error of a background thread that ends Run (the first one is kept).
  void SetFatal(absl::Status s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fatal_.ok()) fatal_ = std::move(s);
    }
    cv_.notify_all();
  }
  absl::Status Fatal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fatal_;
  }
  // Who this actor is to the coordinator now. `generation` counts registrations: leases
  // taken under an earlier one belong to a coordinator that is gone.
  struct Identity {
    std::string actor_id;
    uint64_t generation = 0;
    uint64_t current_version = 0;  // the coordinator's version when it registered us
  };
  Identity CurrentIdentity() const {
    std::lock_guard<std::mutex> lock(mu_);
    return identity_;
  }
  void SetFinished() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) spdlog::info("the coordinator says the run is finished");
      finished_ = true;
    }
    cv_.notify_all();
  }
  void Contact() { last_contact_ms_.store(UnixMillis()); }
  absl::Status CheckCoordinatorAlive() const {
    const int64_t silent = UnixMillis() - last_contact_ms_.load();
    if (silent > options_.coordinator_timeout.count()) {
      return absl::UnavailableError(absl::StrCat("lost the coordinator at ",
                                                 options_.config.coordinator, ": no answer for ",
                                                 silent / 1000, " s"));
    }
    return absl::OkStatus();
  }
  std::unique_ptr<grpc::ClientContext> Context(milliseconds timeout) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    AddBearer(ctx.get(), options_.token);
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    return ctx;
  }

  // Calls RegisterActor (retried while the coordinator does not answer, up to
  // coordinator_timeout) and checks the answer.
  absl::Status CallRegister(v1::RegisterActorResponse* response);
  absl::Status Register();
  // Registers again after the coordinator answered NotFound for `stale_id` (it restarted
  // and does not know us): once, however many threads saw the NotFound. An error when the
  // new coordinator runs a model or task this actor's engine was not built for.
  absl::Status Reregister(const Identity& stale);
  // After a re-registration, in the generation thread: forgets the engine's leases (their
  // coordinator is gone) and makes sure the weights are the new coordinator's.
  absl::Status AdoptRegistration(const Identity& me,
                                 std::optional<v1::LeasePromptsResponse>* deferred);
  absl::Status Setup();
  // Blocks until weights of version >= v are held by the receiver (true), or until
  // Done() or `max_wait` (0: no limit) passes (false).
  absl::StatusOr<bool> WaitForWeights(uint64_t v, milliseconds max_wait = milliseconds(0));
  // Loads the receiver's newest version if it is newer than the engine's (or, with
  // `any_version`, whatever version it is).
  absl::Status MaybeSwapWeights(bool any_version = false);
  void HeartbeatLoop();
  // Leases prompts while the engine has room, steps it, and hands every finished group
  // to the sender; weights change only when the engine has drained (see Actor).
  absl::Status GenerateLoop();
  // Checks each lease and queues its prompt in the engine; refused leases are released.
  void SubmitLeases(const v1::LeasePromptsResponse& response);
  // One engine step; its finished groups go to the sender.
  absl::Status StepEngine();
  // Sends one group (retrying until the lease deadline) and returns the learner's answer,
  // ACK_UNKNOWN when it gave up. Runs on a sender thread (several at once).
  v1::AckStatus SendGroup(const v1::Group& group, int64_t deadline_ms);
  void GroupSent(const v1::Group& group, v1::AckStatus status);
  void MaybeLogProgress(bool force);
  void ReleaseLease(const std::string& lease_id) {
    std::lock_guard<std::mutex> lock(mu_);
    in_progress_.erase(lease_id);
    groups_in_flight_.Set(static_cast<double>(in_progress_.size()));
  }

  const ActorOptions options_;
  prometheus::Counter& generated_tokens_;
  prometheus::Gauge& tokens_per_second_;
  prometheus::Gauge& policy_version_;
  prometheus::Gauge& groups_in_flight_;
  prometheus::Counter& weight_swaps_;
  prometheus::Counter& generate_seconds_;
  prometheus::Counter& send_wait_seconds_;
  prometheus::Histogram& weight_sync_seconds_;
  std::map<v1::AckStatus, prometheus::Counter*> groups_sent_;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_;
  // The first registration: what the engine was built for (group size, task, model,
  // tokenizer), which a re-registration must match. Its actor_id and version are only the
  // first ones: identity_ has the current ones.
  v1::RegisterActorResponse registration_;
  std::mutex register_mu_;                // one re-registration at a time
  std::atomic<int64_t> lease_ttl_ms_{0};  // of the current registration
  std::string lease_actor_id_;            // the generation thread's leases' owner
  uint64_t lease_generation_ = 0;         // and its registration generation
  ModelConfig model_config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<GenerationEngine> engine_;
  std::unique_ptr<WeightReceiver> receiver_;
  std::unique_ptr<VerifierPool> verifiers_;
  std::unique_ptr<GroupSender> sender_;
  std::map<uint64_t, v1::Lease> pending_;  // leases in the engine, by request id
  uint64_t next_request_ = 0;
  std::thread heartbeat_;

  // Progress since the last log line (the generation thread's; outcomes under mu_).
  Clock::time_point window_start_ = Clock::now();
  int64_t window_tokens_ = 0;
  double window_send_wait_ = 0;
  std::map<v1::AckStatus, int> window_outcomes_;  // guarded by mu_
  std::atomic<uint64_t> engine_version_{0};       // for the heartbeat thread
  std::atomic<int64_t> last_contact_ms_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;         // wakes sleepers on stop / finish / shutdown
  bool stop_ = false;                  // Stop() was called
  bool finished_ = false;              // the coordinator said the run is over
  bool shutdown_ = false;              // Run is returning: background threads end
  absl::Status fatal_;                 // a background thread's error: Run returns it
  Identity identity_;                  // guarded by mu_
  std::set<std::string> in_progress_;  // lease ids being worked on (heartbeated)
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_ACTOR_IMPL_H_
