// Actor::Impl's side that faces the coordinator outside the generation loop:
// registering (and registering again after a coordinator restart), waiting for and
// loading weights, and the heartbeat thread. The rest is in actor.cc.
#include <algorithm>
#include <utility>
#include <vector>

#include "actor/actor_impl.h"
#include "actor/lease_group.h"
#include "actor/rollout_setup.h"
#include "common/rpc.h"

namespace pmdrl {

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

}  // namespace pmdrl
