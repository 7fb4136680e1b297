#include "learner/coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

constexpr int64_t kActorLiveMs = 10000;  // an actor silent this long is not counted live

// Drawn once per learner process and put in every actor_id it issues, so that an id of a
// coordinator before a restart is never issued again: an actor still using one gets
// NotFound (and registers again) instead of being taken for another actor.
uint32_t ProcessIncarnation() {
  static const uint32_t incarnation = [] {
    std::random_device rd;
    return static_cast<uint32_t>(rd());
  }();
  return incarnation;
}

}  // namespace

Coordinator::Coordinator(CoordinatorOptions options, const PromptSource* source, LeaseTable table,
                         MetricsRegistry* m)
    : options_(std::move(options)), source_(source), metrics_(m), table_(std::move(table)) {
  const char* groups = "pmdrl_learner_groups_total";
  const char* groups_help = "scored groups received, by outcome";
  accepted_ = &m->Counter(groups, groups_help, {{"outcome", "accepted"}});
  stale_ = &m->Counter(groups, groups_help, {{"outcome", "stale"}});
  duplicate_ = &m->Counter(groups, groups_help, {{"outcome", "duplicate"}});
  rejected_ = &m->Counter(groups, groups_help, {{"outcome", "rejected"}});
  stale_in_buffer_ = &m->Counter("pmdrl_learner_groups_stale_in_buffer_total",
                                 "accepted groups that grew too stale before training");
  unknown_lease_ = &m->Counter("pmdrl_learner_rejected_total", "rejected RPCs, by reason",
                               {{"reason", "unknown_lease"}});
  leases_issued_ = &m->Counter("pmdrl_learner_leases_issued_total", "prompt leases issued");
  leases_reissued_ = &m->Counter("pmdrl_learner_leases_reissued_total",
                                 "leases of places whose earlier lease expired");
  leases_expired_ = &m->Counter("pmdrl_learner_leases_expired_total", "leases that expired");
  const char* released = "pmdrl_learner_places_released_total";
  const char* released_help = "places given back for re-issue without a trained group, by reason";
  released_stale_ = &m->Counter(released, released_help, {{"reason", "stale"}});
  released_stale_in_buffer_ = &m->Counter(released, released_help, {{"reason", "stale_in_buffer"}});
  released_rejected_ = &m->Counter(released, released_help, {{"reason", "rejected"}});
  released_grader_timeout_ = &m->Counter(released, released_help, {{"reason", "grader_timeout"}});
  grader_timeouts_ = &m->Counter("pmdrl_learner_grader_timeouts_total",
                                 "completions whose check timed out in the verifier "
                                 "(OUTCOME_TIMEOUT), in groups with a known lease");
  dropped_rejected_ =
      &m->Counter("pmdrl_learner_places_dropped_total",
                  "places never to be issued again, by reason", {{"reason", "rejected"}});
  in_flight_ = &m->Gauge("pmdrl_learner_leases_in_flight", "live leases");
  buffered_ = &m->Gauge("pmdrl_learner_groups_buffered", "accepted groups waiting for a batch");
  live_actors_ = &m->Gauge("pmdrl_learner_live_actors", "actors heard from in the last 10 s");
  staleness_ =
      &m->Histogram("pmdrl_learner_staleness_versions",
                    "learner version minus sampling version of trained groups", {0, 1, 2, 3, 4, 8});
}

int64_t Coordinator::NowMs() const { return absl::ToUnixMillis(absl::Now()); }

void Coordinator::ExpireLocked(int64_t now_ms) {
  int64_t n = table_.ExpireDue(now_ms);
  if (n > 0) {
    leases_expired_->Increment(static_cast<double>(n));
    spdlog::info("{} lease(s) expired; their prompts will be re-issued", n);
  }
  in_flight_->Set(static_cast<double>(table_.InFlight()));
}

uint32_t Coordinator::LiveActorsLocked(int64_t now_ms) const {
  uint32_t n = 0;
  for (const auto& [id, a] : actors_) {
    if (now_ms - a.last_seen_ms <= kActorLiveMs) ++n;
  }
  return n;
}

v1::RegisterActorResponse Coordinator::RegisterActor(const v1::RegisterActorRequest& request) {
  absl::MutexLock lock(&mu_);
  std::string id = absl::StrFormat("%s#%d-%08x", request.name().empty() ? "actor" : request.name(),
                                   next_actor_++, ProcessIncarnation());
  actors_[id] = ActorInfo{request.name(), NowMs(), 0};
  live_actors_->Set(LiveActorsLocked(NowMs()));
  spdlog::info("actor {} registered", QuoteUntrusted(id));  // the name is the actor's
  v1::RegisterActorResponse r;
  r.set_actor_id(id);
  r.set_group_size(static_cast<uint32_t>(options_.group_size));
  r.set_current_version(version_);
  r.set_lease_ttl_ms(options_.lease_ttl_ms);
  r.set_model_config_json(options_.model_config_json);
  r.set_tokenizer(source_->tokenizer_name());
  r.set_task(source_->task());
  r.set_tokenizer_json(source_->tokenizer_json());
  for (int32_t id : source_->stop_ids()) r.add_stop_ids(id);
  return r;
}

absl::StatusOr<v1::LeasePromptsResponse> Coordinator::LeasePrompts(
    const v1::LeasePromptsRequest& request) {
  absl::MutexLock lock(&mu_);
  auto actor = actors_.find(request.actor_id());
  if (actor == actors_.end()) {
    // NotFound, not InvalidArgument: an id this coordinator never issued is what an actor
    // of a learner that restarted holds, and that actor answers by registering again.
    unknown_lease_->Increment();
    return absl::NotFoundError(
        absl::StrCat("LeasePrompts: unknown actor_id '", request.actor_id(), "'"));
  }
  int64_t now = NowMs();
  actor->second.last_seen_ms = now;
  ExpireLocked(now);
  v1::LeasePromptsResponse r;
  r.set_current_version(version_);
  if (finished_) {
    r.set_finished(true);
    r.set_retry_after_ms(1000);
    return r;
  }
  if (admission_closed_) {  // no batch will be trained again: a lease would be wasted
    r.set_retry_after_ms(1000);
    return r;
  }
  // Admission control: a prompt leased now is sampled at version_ and trained after
  // every prompt already out (leased or buffered, B per update) and after the batch in
  // training, if one is (PopBatch takes groups in arrival order, so this holds while
  // they come back in lease order). It must be trained by version_ + max_staleness, so
  // at most 1 + max_staleness batches may be out, one fewer while a batch trains; lending
  // more only makes groups that go stale waiting for their turn. (Before the batch in
  // training was counted, the demo dropped a third of its groups that way; a group
  // overtaken by later ones still can go stale, and is counted.)
  const int64_t batches_ahead = 1 + options_.max_staleness - (training_ ? 1 : 0);
  int64_t budget = options_.prompts_per_update * batches_ahead - table_.InFlight() -
                   static_cast<int64_t>(buffer_.size());
  int64_t n = std::min<int64_t>(budget, std::max<uint32_t>(1, request.max_prompts()));
  if (n <= 0) {
    r.set_retry_after_ms(100);
    return r;
  }
  int64_t reissued_before = table_.counters().reissued;
  std::vector<IssuedLease> leases = table_.Issue(request.actor_id(), n, now, options_.lease_ttl_ms,
                                                 static_cast<int64_t>(version_));
  leases_issued_->Increment(static_cast<double>(leases.size()));
  leases_reissued_->Increment(static_cast<double>(table_.counters().reissued - reissued_before));
  for (const IssuedLease& l : leases) {
    PromptItem item = source_->Get(l.epoch, l.index);
    v1::Lease* out = r.add_leases();
    out->set_lease_id(l.lease_id);
    out->set_epoch(static_cast<uint64_t>(l.epoch));
    out->set_index(static_cast<uint64_t>(l.index));
    out->mutable_prompt_tokens()->Add(item.tokens.begin(), item.tokens.end());
    out->set_prompt_text(item.text);
    out->set_reference(item.reference);
    out->set_deadline_unix_ms(l.deadline_ms);
    out->set_issued_at_version(static_cast<uint64_t>(l.issued_at_version));
  }
  in_flight_->Set(static_cast<double>(table_.InFlight()));
  return r;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& request) {
  absl::MutexLock lock(&mu_);
  auto actor = actors_.find(request.actor_id());
  if (actor == actors_.end()) {
    unknown_lease_->Increment();
    return absl::NotFoundError(
        absl::StrCat("Heartbeat: unknown actor_id '", request.actor_id(), "'"));
  }
  int64_t now = NowMs();
  actor->second.last_seen_ms = now;
  actor->second.version = request.policy_version();
  std::vector<std::string> ids(request.lease_ids().begin(), request.lease_ids().end());
  table_.Extend(request.actor_id(), ids, now, options_.lease_ttl_ms);
  ExpireLocked(now);
  live_actors_->Set(LiveActorsLocked(now));
  v1::HeartbeatResponse r;
  r.set_current_version(version_);
  r.set_finished(finished_);
  return r;
}

absl::StatusOr<v1::GroupAck> Coordinator::Submit(const v1::Group& group) {
  absl::Status valid = ValidateGroup(group, options_.limits, /*scored=*/true);
  absl::MutexLock lock(&mu_);
  if (!valid.ok()) return RejectLocked(group, std::move(valid));
  std::optional<LeaseInfo> lease = table_.Lookup(group.lease_id());
  if (!lease) {
    unknown_lease_->Increment();
    return RejectLocked(group, absl::InvalidArgumentError(absl::StrCat("group: unknown lease_id '",
                                                                       group.lease_id(), "'")));
  }
  if (group.actor_id() != lease->actor_id) {
    // Not this lease's answer: rejected without touching the lease, or any token holder
    // could retire (and, twice, drop) another actor's place by naming its lease.
    CountRejectedLocked();
    return absl::InvalidArgumentError(absl::StrCat(
        "group: actor_id ", QuoteUntrusted(group.actor_id()), " differs from lease ",
        QuoteUntrusted(group.lease_id()), "'s actor ", QuoteUntrusted(lease->actor_id)));
  }
  if (static_cast<uint64_t>(lease->epoch) != group.epoch() ||
      static_cast<uint64_t>(lease->index) != group.index()) {
    return RejectLocked(group, absl::InvalidArgumentError(absl::StrCat(
                                   "group: (epoch, index) = (", group.epoch(), ", ", group.index(),
                                   ") does not match lease '", group.lease_id(), "' (",
                                   lease->epoch, ", ", lease->index, ")")));
  }
  if (absl::Status same = MatchesLeaseLocked(group, *lease); !same.ok()) {
    return RejectLocked(group, std::move(same));
  }
  if (group.policy_version() > version_) {
    return RejectLocked(group, absl::InvalidArgumentError(
                                   absl::StrCat("group: policy_version ", group.policy_version(),
                                                " is newer than the learner's ", version_)));
  }
  v1::GroupAck ack;
  ack.set_lease_id(group.lease_id());
  ack.set_learner_version(version_);
  const int64_t timeouts =
      std::count_if(group.completions().begin(), group.completions().end(),
                    [](const v1::Completion& c) { return c.outcome() == v1::OUTCOME_TIMEOUT; });
  if (version_ - group.policy_version() > static_cast<uint64_t>(options_.max_staleness)) {
    if (table_.Release(group.lease_id())) released_stale_->Increment();
    counts_.stale++;
    stale_->Increment();
    ack.set_status(v1::ACK_STALE);
    ack.set_message(
        absl::StrCat("sampled at version ", group.policy_version(), ", learner is at ", version_));
    if (options_.on_group) options_.on_group(group, ack.status(), version_);
    return ack;
  }
  // Timed-out answers (see the class comment). A place accepted before is a duplicate
  // whatever its answers.
  const v1::Group* trained = &group;
  v1::Group rescored;
  if (timeouts > 0 && !lease->done) {
    const StreamPosition place{lease->epoch, lease->index};
    if (options_.requeue_timeouts && !lease->live && !lease->expired &&
        timed_out_once_.contains(place)) {
      // A resent copy of a group already released for a timeout (its ack was lost):
      // the same answer again, not the second chance meant for the place's next lease.
      ack.set_status(v1::ACK_RELEASED);
      ack.set_message("released before: an answer timed out in the verifier");
      return ack;
    }
    grader_timeouts_->Increment(static_cast<double>(timeouts));
    if (options_.requeue_timeouts && timed_out_once_.insert(place).second) {
      // First time: the verifier could not tell right from wrong, so this group does not
      // train. The place is sampled and graded afresh (an expired lease's place is
      // queued already).
      if (table_.Release(group.lease_id())) released_grader_timeout_->Increment();
      in_flight_->Set(static_cast<double>(table_.InFlight()));
      ack.set_status(v1::ACK_RELEASED);
      ack.set_message(absl::StrCat(timeouts, " answer(s) timed out in the verifier; place (",
                                   group.epoch(), ", ", group.index(), ") is issued again"));
      if (options_.on_released) options_.on_released(group, "grader_timeout", version_);
      return ack;
    }
    timed_out_once_.erase(place);
    rescored = group;
    for (v1::Completion& c : *rescored.mutable_completions()) {
      if (c.outcome() == v1::OUTCOME_TIMEOUT) c.set_reward(options_.timeout_reward);
    }
    trained = &rescored;
  }
  if (table_.Complete(group.lease_id()) == CompleteResult::kDuplicate) {
    counts_.duplicate++;
    duplicate_->Increment();
    ack.set_status(v1::ACK_DUPLICATE);
    ack.set_message(
        absl::StrCat("place (", group.epoch(), ", ", group.index(), ") was accepted before"));
    if (options_.on_group) options_.on_group(group, ack.status(), version_);
    return ack;
  }
  rejected_once_.erase(StreamPosition{lease->epoch, lease->index});
  timed_out_once_.erase(StreamPosition{lease->epoch, lease->index});
  counts_.accepted++;
  accepted_->Increment();
  buffer_.push_back(*trained);
  buffered_->Set(static_cast<double>(buffer_.size()));
  in_flight_->Set(static_cast<double>(table_.InFlight()));
  ack.set_status(v1::ACK_ACCEPTED);
  if (options_.on_group) options_.on_group(*trained, ack.status(), version_);
  return ack;
}

absl::Status Coordinator::MatchesLeaseLocked(const v1::Group& group, const LeaseInfo& lease) const {
  // The lease stands for what it was issued with: its place's prompt and reference
  // (PromptSource::Get is deterministic in the place, so it gives them again; Submit has
  // checked the actor). A token holder must not train rows the learner never handed out.
  const PromptItem item = source_->Get(lease.epoch, lease.index);
  if (!std::equal(group.prompt_tokens().begin(), group.prompt_tokens().end(), item.tokens.begin(),
                  item.tokens.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat("group: prompt_tokens (", group.prompt_tokens_size(),
                     " tokens) differ from those of lease ", QuoteUntrusted(group.lease_id()), " (",
                     item.tokens.size(), " tokens)"));
  }
  if (group.reference() != item.reference) {
    return absl::InvalidArgumentError(
        absl::StrCat("group: reference ", QuoteUntrusted(group.reference()),
                     " differs from that of lease ", QuoteUntrusted(group.lease_id())));
  }
  return absl::OkStatus();
}

void Coordinator::CountRejectedLocked() {
  counts_.rejected++;
  rejected_->Increment();
}

absl::Status Coordinator::RejectLocked(const v1::Group& group, absl::Status why) {
  CountRejectedLocked();
  // The group answers its lease, if live: retiring it keeps the place from waiting out
  // the TTL and then being re-issued without end. The lease's own place counts, not the
  // one the group claims.
  std::optional<LeaseInfo> lease =
      group.lease_id().empty() ? std::nullopt : table_.Lookup(group.lease_id());
  if (!lease || !lease->live) return why;
  const StreamPosition place{lease->epoch, lease->index};
  if (lease->done) {
    table_.Release(group.lease_id());  // accepted under another lease: only retire
  } else if (rejected_once_.insert(place).second) {
    // First rejection: another actor (or a retry) may well produce a valid group.
    table_.Release(group.lease_id());
    released_rejected_->Increment();
  } else {
    // Second rejection: the prompt itself is the likely cause; training without it
    // beats leasing it forever.
    table_.Drop(group.lease_id());
    rejected_once_.erase(place);
    timed_out_once_.erase(place);
    dropped_rejected_->Increment();
    spdlog::warn("place ({}, {}) rejected twice; dropped: {}", place.epoch, place.index,
                 QuoteUntrusted(why.message()));  // may echo what the actor sent
  }
  in_flight_->Set(static_cast<double>(table_.InFlight()));
  return why;
}

std::optional<std::vector<v1::Group>> Coordinator::PopBatch(uint64_t version,
                                                            std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  const size_t want = static_cast<size_t>(options_.prompts_per_update);
  // Drops what has grown too stale while it waited. Its place was marked done when the
  // group was accepted; it is reopened for re-issue, or it would never be trained.
  auto drop_stale = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t before = buffer_.size();
    std::erase_if(buffer_, [&](const v1::Group& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (version - g.policy_version() <= static_cast<uint64_t>(options_.max_staleness)) {
        return false;
      }
      if (table_.Reopen({static_cast<int64_t>(g.epoch()), static_cast<int64_t>(g.index())})) {
        released_stale_in_buffer_->Increment();
        if (options_.on_released) options_.on_released(g, "stale_in_buffer", version);
      }
      return true;
    });
    if (buffer_.size() != before) {
      stale_in_buffer_->Increment(static_cast<double>(before - buffer_.size()));
      buffered_->Set(static_cast<double>(buffer_.size()));
    }
  };
  drop_stale();
  struct Arg {
    const std::deque<v1::Group>* buffer;
    size_t want;
  } arg{&buffer_, want};
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](Arg* a) { return a->buffer->size() >= a->want; }, &arg),
                       absl::FromChrono(timeout));
  drop_stale();
  if (buffer_.size() < want) return std::nullopt;
  std::vector<v1::Group> batch;
  batch.reserve(want);
  for (size_t i = 0; i < want; ++i) {
    staleness_->Observe(static_cast<double>(version - buffer_.front().policy_version()));
    batch.push_back(std::move(buffer_.front()));
    buffer_.pop_front();
  }
  buffered_->Set(static_cast<double>(buffer_.size()));
  training_ = true;
  return batch;
}

void Coordinator::SetVersion(uint64_t version) {
  absl::MutexLock lock(&mu_);
  version_ = version;
  training_ = false;  // the batch PopBatch handed out is trained: version is its result
}

uint64_t Coordinator::version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

void Coordinator::CloseAdmission() {
  absl::MutexLock lock(&mu_);
  admission_closed_ = true;
}

void Coordinator::Finish() {
  absl::MutexLock lock(&mu_);
  finished_ = true;
}

bool Coordinator::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

Coordinator::Counts Coordinator::counts() const {
  absl::MutexLock lock(&mu_);
  Counts c = counts_;
  c.reissued = static_cast<uint64_t>(table_.counters().reissued);
  c.live_actors = LiveActorsLocked(NowMs());
  c.data_epoch = table_.cursor().epoch;
  c.data_index = table_.cursor().index;
  return c;
}

std::vector<v1::ActorStatus> Coordinator::ActorStatuses() const {
  absl::MutexLock lock(&mu_);
  int64_t now = NowMs();
  std::vector<v1::ActorStatus> out;
  for (const auto& [id, a] : actors_) {
    v1::ActorStatus s;
    s.set_actor_id(id);
    s.set_policy_version(a.version);
    s.set_leases_in_flight(static_cast<uint32_t>(table_.InFlightOf(id)));
    s.set_seconds_since_seen(static_cast<double>(now - a.last_seen_ms) / 1000.0);
    out.push_back(std::move(s));
  }
  return out;
}

CoordinatorSnapshot Coordinator::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return CoordinatorSnapshot{table_.Save(), std::vector<v1::Group>(buffer_.begin(), buffer_.end())};
}

LeaseTableState Coordinator::SaveState() const {
  absl::MutexLock lock(&mu_);
  return table_.Save();
}

std::vector<v1::Group> Coordinator::BufferedGroups() const {
  absl::MutexLock lock(&mu_);
  return std::vector<v1::Group>(buffer_.begin(), buffer_.end());
}

void Coordinator::RestoreBuffer(std::vector<v1::Group> groups) {
  absl::MutexLock lock(&mu_);
  for (v1::Group& g : groups) buffer_.push_back(std::move(g));
  buffered_->Set(static_cast<double>(buffer_.size()));
}

}  // namespace pmdrl
