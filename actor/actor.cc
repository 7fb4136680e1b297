#include "actor/actor.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "actor/group_sender.h"
#include "actor/lease_group.h"
#include "actor/rollout_setup.h"
#include "actor/verifier_pool.h"
#include "actor/weight_receiver.h"
#include "common/auth.h"
#include "common/model_config.h"
#include "common/rpc.h"
#include "common/tokenizer.h"
#include "engine/generation_engine.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kRpcTimeout{10000};
constexpr milliseconds kMaxBackoff{2000};
// Upper bound on k: a coordinator asking for more is misconfigured, not a workload.
constexpr uint32_t kMaxGroupSize = 4096;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int64_t UnixMillis() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

const char* AckName(v1::AckStatus status) {
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

}  // namespace

uint64_t DeriveActorSeed(uint64_t run_seed, const std::string& actor_name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a: stable across platforms and builds
  for (unsigned char c : actor_name) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return SplitMix64(SplitMix64(run_seed) ^ h);
}

class Actor::Impl {
 public:
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

absl::Status Actor::Impl::CallRegister(v1::RegisterActorResponse* response) {
  const auto deadline = Clock::now() + options_.coordinator_timeout;
  milliseconds backoff{200};
  v1::RegisterActorRequest request;
  request.set_name(options_.config.name);
  for (int attempt = 0;; ++attempt) {
    auto ctx = Context(std::min(kRpcTimeout, options_.coordinator_timeout));
    const grpc::Status status = coordinator_->RegisterActor(ctx.get(), request, response);
    if (status.ok()) break;
    const absl::Status s = ToAbsl(status);
    if (s.code() == absl::StatusCode::kUnauthenticated ||
        s.code() == absl::StatusCode::kPermissionDenied ||
        s.code() == absl::StatusCode::kInvalidArgument) {
      return absl::Status(s.code(), absl::StrCat("coordinator at ", options_.config.coordinator,
                                                 " refused RegisterActor: ", s.message()));
    }
    if (Clock::now() + backoff > deadline) {
      return absl::UnavailableError(absl::StrCat(
          "coordinator at ", options_.config.coordinator, " did not answer RegisterActor within ",
          options_.coordinator_timeout.count() / 1000, " s: ", s.ToString()));
    }
    if (attempt == 0) {
      spdlog::info("waiting for the coordinator at {} ({})", options_.config.coordinator,
                   s.ToString());
    }
    if (!SleepFor(backoff)) return absl::OkStatus();
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
  if (Done()) return absl::OkStatus();
  Contact();
  const v1::RegisterActorResponse& r = *response;
  if (r.actor_id().empty()) {
    return absl::InvalidArgumentError("coordinator answered RegisterActor with an empty actor_id");
  }
  if (r.group_size() < 1 || r.group_size() > kMaxGroupSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "coordinator asked for group_size ", r.group_size(), " (must be 1..", kMaxGroupSize, ")"));
  }
  return absl::OkStatus();
}

absl::Status Actor::Impl::Register() {
  if (absl::Status s = CallRegister(&registration_); !s.ok() || Done()) return s;
  const v1::RegisterActorResponse& r = registration_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    identity_ = Identity{r.actor_id(), 1, r.current_version()};
  }
  lease_ttl_ms_.store(r.lease_ttl_ms());
  lease_actor_id_ = r.actor_id();
  lease_generation_ = 1;
  spdlog::info("registered as {} (k = {}, version {}, task '{}', tokenizer '{}')", r.actor_id(),
               r.group_size(), r.current_version(), r.task(), r.tokenizer());
  return absl::OkStatus();
}

absl::Status Actor::Impl::Reregister(const Identity& stale) {
  std::lock_guard<std::mutex> registering(register_mu_);
  // The other thread may have registered again while this one waited.
  if (CurrentIdentity().generation != stale.generation) return absl::OkStatus();
  v1::RegisterActorResponse r;
  if (absl::Status s = CallRegister(&r); !s.ok() || Done()) return s;
  // The engine, tokenizer and sampling were built for the first registration: a
  // coordinator that now wants something else needs a new actor, not this one.
  const v1::RegisterActorResponse& first = registration_;
  std::string different;
  if (r.group_size() != first.group_size()) {
    different = absl::StrCat("group size ", r.group_size(), " instead of ", first.group_size());
  } else if (r.task() != first.task()) {
    different = absl::StrCat("task '", r.task(), "' instead of '", first.task(), "'");
  } else if (r.tokenizer() != first.tokenizer() || r.tokenizer_json() != first.tokenizer_json() ||
             !std::equal(r.stop_ids().begin(), r.stop_ids().end(), first.stop_ids().begin(),
                         first.stop_ids().end())) {
    different = absl::StrCat("tokenizer '", r.tokenizer(), "' (or its stop ids) instead of '",
                             first.tokenizer(), "'");
  } else if (r.model_config_json() != first.model_config_json()) {
    different = "another model config";
  }
  if (!different.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the coordinator at ", options_.config.coordinator, " restarted with ", different,
        ", which this actor's engine was not built for: restart the actor"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    identity_ = Identity{r.actor_id(), identity_.generation + 1, r.current_version()};
  }
  lease_ttl_ms_.store(r.lease_ttl_ms());
  spdlog::info("the coordinator restarted: registered again as {} (was {}, version {})",
               r.actor_id(), stale.actor_id, r.current_version());
  return absl::OkStatus();
}

absl::Status Actor::Impl::AdoptRegistration(const Identity& me,
                                            std::optional<v1::LeasePromptsResponse>* deferred) {
  // Groups of these leases would be rejected as unknown leases: dropped unsent (the
  // sender drops the queued ones of the old id itself), counted as unacked.
  const size_t dropped = pending_.size() + (deferred->has_value() ? (*deferred)->leases_size() : 0);
  engine_->Cancel();
  pending_.clear();
  deferred->reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_progress_.clear();
    window_outcomes_[v1::ACK_UNKNOWN] += static_cast<int>(dropped);
  }
  groups_in_flight_.Set(0);
  groups_sent_[v1::ACK_UNKNOWN]->Increment(static_cast<double>(dropped));
  if (dropped > 0) {
    spdlog::info("dropped {} leases of the previous coordinator unsent", dropped);
  }
  lease_actor_id_ = me.actor_id;
  lease_generation_ = me.generation;
  // A learner resumed from a checkpoint older than the weights held numbers its next
  // versions as ones this actor already has, with other weights: start over from its
  // current version. Otherwise the weights held are its (its checkpoint's) and stay.
  const std::optional<uint64_t> received = receiver_->NewestVersion();
  const bool rolled_back = engine_->version() > me.current_version ||
                           (received.has_value() && *received > me.current_version);
  if (rolled_back) {
    spdlog::info("the coordinator is at version {}, behind this actor's {}: fetching its weights",
                 me.current_version, std::max(engine_->version(), received.value_or(0)));
    receiver_->Forget();
  }
  absl::StatusOr<bool> have = WaitForWeights(me.current_version);
  if (!have.ok()) return have.status();
  if (!*have) return absl::OkStatus();  // stopping
  return MaybeSwapWeights(/*any_version=*/rolled_back);
}

absl::Status Actor::Impl::Setup() {
  const uint64_t seed = options_.config.seed != 0
                            ? options_.config.seed
                            : DeriveActorSeed(options_.run_seed, options_.config.name);
  absl::StatusOr<Rollout> rollout = BuildRollout(registration_, options_.config, seed);
  if (!rollout.ok()) return rollout.status();
  model_config_ = std::move(rollout->model_config);
  tokenizer_ = std::move(rollout->tokenizer);
  engine_ = std::move(rollout->engine);
  return absl::OkStatus();
}

absl::StatusOr<bool> Actor::Impl::WaitForWeights(uint64_t v, milliseconds max_wait) {
  const auto start = Clock::now();
  auto last_log = start;
  while (!receiver_->WaitForVersion(v, milliseconds(250))) {
    if (Done()) return false;
    if (max_wait.count() > 0 && Clock::now() - start > max_wait) return false;
    if (absl::Status s = CheckCoordinatorAlive(); !s.ok()) return s;
    if (Clock::now() - last_log > std::chrono::seconds(10)) {
      last_log = Clock::now();
      spdlog::info("still waiting for weights version {} ({:.0f} s)", v, SecondsSince(start));
    }
  }
  return true;
}

absl::Status Actor::Impl::MaybeSwapWeights(bool any_version) {
  std::shared_ptr<const WeightVersion> latest = receiver_->Latest();
  if (latest == nullptr) return absl::OkStatus();
  if (!any_version && engine_->has_weights() && latest->version <= engine_->version()) {
    return absl::OkStatus();
  }
  latest = receiver_->Take();
  if (latest == nullptr) return absl::OkStatus();
  const auto t0 = Clock::now();
  const uint64_t previous = engine_->version();
  std::vector<WeightView> views;
  views.reserve(latest->tensors.size());
  for (const WireTensor& t : latest->tensors) {
    views.push_back({t.name, t.shape, t.bytes.get(), latest->dtype});
  }
  if (absl::Status s = engine_->LoadWeights(latest->version, views); !s.ok()) return s;
  const double sync = SecondsSince(latest->first_chunk_time);
  const uint64_t version = latest->version;
  views.clear();
  latest.reset();  // the receiver writes the next version into this memory
  weight_swaps_.Increment();
  weight_sync_seconds_.Observe(sync);
  policy_version_.Set(static_cast<double>(version));
  engine_version_.store(version);
  spdlog::info("weights version {} -> {} loaded in {:.3f} s ({:.3f} s since announced)", previous,
               version, SecondsSince(t0), sync);
  return absl::OkStatus();
}

void Actor::Impl::HeartbeatLoop() {
  bool healthy = true;
  while (SleepFor(options_.heartbeat_interval)) {
    const Identity me = CurrentIdentity();
    v1::HeartbeatRequest request;
    request.set_actor_id(me.actor_id);
    request.set_policy_version(engine_version_.load());
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const std::string& id : in_progress_) request.add_lease_ids(id);
    }
    v1::HeartbeatResponse response;
    auto ctx = Context(std::min(kRpcTimeout, options_.heartbeat_interval * 2));
    const grpc::Status status = coordinator_->Heartbeat(ctx.get(), request, &response);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      // The coordinator does not know our actor_id: it restarted.
      if (absl::Status s = Reregister(me); !s.ok()) {
        SetFatal(std::move(s));
        return;
      }
      continue;
    }
    if (!status.ok()) {
      if (healthy) spdlog::warn("heartbeat failed: {}", ToAbsl(status).ToString());
      healthy = false;
      continue;
    }
    if (!healthy) spdlog::info("heartbeat answered again");
    healthy = true;
    Contact();
    if (response.finished()) {
      SetFinished();
      return;
    }
  }
}

v1::AckStatus Actor::Impl::SendGroup(const v1::Group& group, int64_t deadline_ms) {
  milliseconds backoff{100};
  while (true) {
    if (group.actor_id() != CurrentIdentity().actor_id) {
      // Leased from a coordinator that has since restarted: it would reject the group as
      // of an unknown lease.
      spdlog::debug("dropping the group of lease {}: its coordinator restarted", group.lease_id());
      return v1::ACK_UNKNOWN;
    }
    absl::StatusOr<v1::GroupAck> ack = verifiers_->Send(group);
    if (ack.ok()) {
      if (ack->status() == v1::ACK_REJECTED) {
        spdlog::warn("group of lease {} rejected: {}", group.lease_id(), ack->message());
      }
      return ack->status();
    }
    const int64_t left = deadline_ms - UnixMillis();
    if (left <= 0 || Done()) {
      spdlog::warn("dropping the group of lease {} (the coordinator re-issues it): {}",
                   group.lease_id(), std::string(ack.status().message()));
      return v1::ACK_UNKNOWN;
    }
    spdlog::debug("retrying the group of lease {}: {}", group.lease_id(),
                  std::string(ack.status().message()));
    if (!SleepFor(std::min(backoff, milliseconds(left)))) continue;  // one last try
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

void Actor::Impl::GroupSent(const v1::Group& group, v1::AckStatus status) {
  auto counter = groups_sent_.find(status);
  if (counter == groups_sent_.end()) counter = groups_sent_.find(v1::ACK_UNKNOWN);
  counter->second->Increment();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++window_outcomes_[status];
  }
  ReleaseLease(group.lease_id());
}

void Actor::Impl::SubmitLeases(const v1::LeasePromptsResponse& response) {
  for (const v1::Lease& lease : response.leases()) {
    std::string problem = LeaseProblem(lease, model_config_.vocab_size);
    GroupRequest request;
    request.id = next_request_++;
    request.prompt.assign(lease.prompt_tokens().begin(), lease.prompt_tokens().end());
    request.n = registration_.group_size();
    if (problem.empty()) {
      if (absl::Status s = engine_->Submit(std::move(request)); !s.ok()) {
        problem = std::string(s.message());
      }
    }
    if (!problem.empty()) {
      // Neither sampled nor heartbeated: the lease expires and the coordinator re-issues it.
      spdlog::error("lease '{}' ({}, {}) refused: {}", lease.lease_id(), lease.epoch(),
                    lease.index(), problem);
      ReleaseLease(lease.lease_id());
      continue;
    }
    pending_[next_request_ - 1] = lease;
  }
}

absl::Status Actor::Impl::StepEngine() {
  const auto t0 = Clock::now();
  absl::StatusOr<std::vector<FinishedGroup>> finished = engine_->Step();
  generate_seconds_.Increment(SecondsSince(t0));
  if (!finished.ok()) return finished.status();
  for (FinishedGroup& done : *finished) {
    auto it = pending_.find(done.id);
    if (it == pending_.end()) continue;  // cannot happen: every request has its lease
    const v1::Lease lease = std::move(it->second);
    pending_.erase(it);
    int64_t tokens = 0;
    v1::Group group =
        GroupFromFinished(lease, done, lease_actor_id_, registration_.task(), *tokenizer_, &tokens);
    generated_tokens_.Increment(static_cast<double>(tokens));
    window_tokens_ += tokens;
    // Heartbeats extend the lease while we hold it, so its deadline is at least a TTL away.
    const int64_t deadline_ms =
        std::max<int64_t>(lease.deadline_unix_ms(), UnixMillis() + lease_ttl_ms_.load());
    const double waited = sender_->Push(std::move(group), deadline_ms);
    window_send_wait_ += waited;
    send_wait_seconds_.Increment(waited);
  }
  return absl::OkStatus();
}

void Actor::Impl::MaybeLogProgress(bool force) {
  const double seconds = SecondsSince(window_start_);
  if (!force && seconds < 10) return;
  std::map<v1::AckStatus, int> outcomes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    outcomes.swap(window_outcomes_);
  }
  const double generating = std::max(seconds - window_send_wait_, 1e-9);
  tokens_per_second_.Set(window_tokens_ / generating);
  spdlog::info(
      "version {}: {} tokens in {:.1f} s ({:.0f} tokens/s); groups sent: {} accepted, {} stale, "
      "{} duplicate, {} rejected, {} unsent; waiting to send {:.2f} s ({:.1f}% of the time)",
      engine_->version(), window_tokens_, generating, window_tokens_ / generating,
      outcomes[v1::ACK_ACCEPTED], outcomes[v1::ACK_STALE], outcomes[v1::ACK_DUPLICATE],
      outcomes[v1::ACK_REJECTED], outcomes[v1::ACK_UNKNOWN], window_send_wait_,
      seconds > 0 ? 100 * window_send_wait_ / seconds : 0.0);
  window_start_ = Clock::now();
  window_tokens_ = 0;
  window_send_wait_ = 0;
}

absl::Status Actor::Impl::GenerateLoop() {
  milliseconds backoff{200};
  bool lease_rpc_healthy = true;
  auto next_lease = Clock::now();
  // Leases that need newer weights than the engine's: they wait until it has drained.
  std::optional<v1::LeasePromptsResponse> deferred;
  const int64_t k = registration_.group_size();
  while (!Done()) {
    if (absl::Status s = CheckCoordinatorAlive(); !s.ok()) return s;
    MaybeLogProgress(false);
    const Identity me = CurrentIdentity();
    if (me.generation != lease_generation_) {
      if (absl::Status s = AdoptRegistration(me, &deferred); !s.ok()) return s;
      next_lease = Clock::now();
      continue;
    }
    if (deferred.has_value() && engine_->idle()) {
      // These leases must be sampled by at least the coordinator's current version:
      // after an update, every actor's next groups use the newest weights. Bounded by the
      // lease TTL: if the version never arrives (the feed is broken), the leases go back
      // to the coordinator instead of being heartbeated forever.
      const milliseconds max_wait(std::max<int64_t>(lease_ttl_ms_.load(), 1000));
      absl::StatusOr<bool> ready = WaitForWeights(deferred->current_version(), max_wait);
      if (!ready.ok()) return ready.status();
      if (!*ready) {
        for (const v1::Lease& lease : deferred->leases()) ReleaseLease(lease.lease_id());
        if (!Done()) {
          spdlog::warn("weights version {} did not arrive within {} s; released {} leases",
                       deferred->current_version(), max_wait.count() / 1000,
                       deferred->leases_size());
        }
        deferred.reset();
        continue;
      }
      // Weights change only here and below, with nothing in the engine.
      if (absl::Status s = MaybeSwapWeights(); !s.ok()) return s;
      SubmitLeases(*deferred);
      deferred.reset();
    }
    // Lease in batches (half a batch of room at least), not one prompt per finished group:
    // fewer RPCs, and prompts that arrive together are prefilled in one pass.
    const int64_t room = engine_->max_rows() - engine_->active_rows() - engine_->waiting_rows();
    const int64_t batch_rows = std::min(engine_->max_rows(), options_.config.prompts_per_batch * k);
    const int64_t enough = std::max(k, batch_rows / 2);
    if (!deferred.has_value() && (room >= enough || engine_->idle()) &&
        Clock::now() >= next_lease) {
      v1::LeasePromptsRequest request;
      request.set_actor_id(me.actor_id);
      const int64_t want = std::clamp<int64_t>(room / k, 1, options_.config.prompts_per_batch);
      request.set_max_prompts(static_cast<uint32_t>(want));
      v1::LeasePromptsResponse response;
      auto ctx = Context(kRpcTimeout);
      const grpc::Status status = coordinator_->LeasePrompts(ctx.get(), request, &response);
      if (!status.ok()) {
        const absl::Status s = ToAbsl(status);
        if (s.code() == absl::StatusCode::kUnauthenticated ||
            s.code() == absl::StatusCode::kPermissionDenied) {
          return absl::Status(s.code(), absl::StrCat("LeasePrompts refused: ", s.message()));
        }
        if (s.code() == absl::StatusCode::kNotFound) {
          // The coordinator does not know our actor_id: it restarted.
          if (absl::Status r = Reregister(me); !r.ok()) return r;
          continue;
        }
        if (lease_rpc_healthy) spdlog::warn("LeasePrompts failed: {}", s.ToString());
        lease_rpc_healthy = false;
        next_lease = Clock::now() + backoff;
        backoff = std::min(backoff * 2, kMaxBackoff);
      } else {
        if (!lease_rpc_healthy) spdlog::info("LeasePrompts answered again");
        lease_rpc_healthy = true;
        backoff = milliseconds(200);
        Contact();
        if (response.finished()) {
          SetFinished();
          break;
        }
        if (response.leases().empty()) {
          const int64_t wait = response.retry_after_ms() > 0 ? response.retry_after_ms() : 200;
          next_lease = Clock::now() + milliseconds(std::clamp<int64_t>(wait, 10, 5000));
        } else {
          {
            std::lock_guard<std::mutex> lock(mu_);
            for (const v1::Lease& lease : response.leases()) in_progress_.insert(lease.lease_id());
            groups_in_flight_.Set(static_cast<double>(in_progress_.size()));
          }
          if (response.current_version() > engine_->version()) {
            deferred = std::move(response);
            continue;
          }
          // A newer version may be waiting even if these leases do not need it.
          if (engine_->idle()) {
            if (absl::Status s = MaybeSwapWeights(); !s.ok()) return s;
          }
          SubmitLeases(response);
        }
      }
    }
    if (!engine_->idle()) {
      if (absl::Status s = StepEngine(); !s.ok()) return s;
    } else if (!deferred.has_value()) {
      // Nothing to decode: wait for the next lease attempt.
      const auto now = Clock::now();
      if (next_lease > now) {
        SleepFor(std::chrono::duration_cast<milliseconds>(next_lease - now) + milliseconds(1));
      }
    }
  }
  // The run is over (not stopped): what the engine holds is finished and sent, as the
  // batch in hand always was, before Run returns.
  while (!engine_->idle()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_ || shutdown_ || !fatal_.ok()) break;
    }
    if (absl::Status s = StepEngine(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Actor::Impl::Run() {
  channel_ = MakeChannel(options_.config.coordinator);
  coordinator_ = v1::Coordinator::NewStub(channel_);
  if (options_.config.verifiers.empty()) {
    return absl::InvalidArgumentError("actor.verifiers is empty: nowhere to send groups");
  }
  for (const std::string& target : options_.config.verifiers) {
    if (target.empty()) {
      return absl::InvalidArgumentError("actor.verifiers has an empty entry (a stray comma?)");
    }
  }
  // host:port entries are one verifier each; a dns:/// entry stands for every replica
  // its name resolves to (one round_robin channel, re-resolved as replicas change).
  VerifierPool::Options pool_options;
  pool_options.window = static_cast<int>(options_.config.send_window);
  verifiers_ =
      std::make_unique<VerifierPool>(options_.config.verifiers, options_.token, pool_options);
  spdlog::info("verifiers: {} ({} streams)", absl::StrJoin(options_.config.verifiers, ", "),
               verifiers_->size());

  if (absl::Status s = Register(); !s.ok() || Done()) return s;
  if (absl::Status s = Setup(); !s.ok()) return s;

  receiver_ = std::make_unique<WeightReceiver>(MakeBulkChannel(options_.config.coordinator),
                                               registration_.actor_id(), options_.token);
  receiver_->Start();
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  // actor.send_window groups in flight on each verifier stream: one sender thread per
  // group in flight, each blocked on its own ack while the stream carries the others
  // (threads capped: a huge window is then only partly in flight, the rest queued).
  const int64_t in_flight =
      options_.config.send_window * static_cast<int64_t>(std::max<size_t>(1, verifiers_->size()));
  sender_ = std::make_unique<GroupSender>(
      in_flight,
      [this](const v1::Group& g, int64_t deadline_ms) { return SendGroup(g, deadline_ms); },
      [this](const v1::Group& g, v1::AckStatus status) { GroupSent(g, status); },
      std::min<int64_t>(in_flight, 256));

  absl::Status result = [&]() -> absl::Status {
    // A new actor holds the current weights before it generates anything.
    spdlog::info("waiting for weights version {}", registration_.current_version());
    absl::StatusOr<bool> have = WaitForWeights(registration_.current_version());
    if (!have.ok()) return have.status();
    if (!*have) return absl::OkStatus();
    if (absl::Status s = MaybeSwapWeights(); !s.ok()) return s;

    return GenerateLoop();
  }();
  // A background thread's error (a re-registration refused) ended the loop.
  if (result.ok()) result = Fatal();
  MaybeLogProgress(true);
  // Groups already generated get their sends (one attempt each once stopping) before the
  // streams close.
  if (sender_ != nullptr) sender_->Drain();

  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
    in_progress_.clear();
  }
  cv_.notify_all();
  groups_in_flight_.Set(0);
  if (heartbeat_.joinable()) heartbeat_.join();
  // Close every stream now rather than with the Actor object: servers shutting down
  // wait for open streams.
  receiver_.reset();
  sender_.reset();
  verifiers_.reset();
  return result;
}

Actor::Actor(ActorOptions options, MetricsRegistry* metrics)
    : impl_(std::make_unique<Impl>(std::move(options), metrics)) {}
Actor::~Actor() = default;
absl::Status Actor::Run() { return impl_->Run(); }
void Actor::Stop() { impl_->Stop(); }

}  // namespace pmdrl
