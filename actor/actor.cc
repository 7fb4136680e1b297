#include "actor/actor.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "actor/actor_impl.h"
#include "actor/lease_group.h"
#include "actor/rollout_setup.h"
#include "common/rpc.h"

namespace pmdrl {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
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
