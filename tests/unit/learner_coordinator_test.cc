// Coordinator's exactly-once bookkeeping (issue 15): a checkpoint never holds a place
// both outstanding and buffered; a group that goes stale in the buffer gives its place
// back; a rejected group retires its lease, its place re-issued once and then dropped;
// a group must carry the actor, prompt tokens and reference its lease was issued with.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics.h"
#include "common/tokenizer.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/lease_table.h"
#include "learner/coordinator/prompt_source.h"
#include "tests/fake_prompt_source.h"

namespace pmdrl {
namespace {

using std::chrono::milliseconds;

CoordinatorOptions Options(int64_t prompts_per_update, int64_t max_staleness) {
  CoordinatorOptions o;
  o.group_size = 2;
  o.prompts_per_update = prompts_per_update;
  o.max_staleness = max_staleness;
  o.lease_ttl_ms = 3'600'000;  // no lease expires during a test
  o.limits = GroupLimits{.vocab_size = CharTokenizer::kVocabSize,
                         .max_prompt_tokens = 16,
                         .max_response_tokens = 4,
                         .group_size = 2};
  return o;
}

// A valid scored group answering `lease`, sampled at `version`.
v1::Group Scored(const v1::Lease& lease, uint64_t version) {
  v1::Group g;
  g.set_lease_id(lease.lease_id());
  g.set_epoch(lease.epoch());
  g.set_index(lease.index());
  g.set_policy_version(version);
  g.mutable_prompt_tokens()->CopyFrom(lease.prompt_tokens());
  g.set_reference(lease.reference());
  for (int i = 0; i < 2; ++i) {
    v1::Completion* c = g.add_completions();
    c->add_tokens(5);
    c->add_logprobs(-0.5f);
    c->set_reward(i == 0 ? 1.0f : -1.0f);
    c->set_outcome(i == 0 ? v1::OUTCOME_CORRECT : v1::OUTCOME_INCORRECT);
  }
  return g;
}

// The same, with a completion token outside the vocabulary: the learner rejects it.
v1::Group Invalid(const v1::Lease& lease, uint64_t version) {
  v1::Group g = Scored(lease, version);
  g.mutable_completions(0)->set_tokens(0, 99);
  return g;
}

StreamPosition Pos(const IssuedLease& l) { return {l.epoch, l.index}; }
StreamPosition Place(const v1::Lease& l) {
  return {static_cast<int64_t>(l.epoch()), static_cast<int64_t>(l.index())};
}
StreamPosition Place(const v1::Group& g) {
  return {static_cast<int64_t>(g.epoch()), static_cast<int64_t>(g.index())};
}

struct Harness {
  explicit Harness(CoordinatorOptions options, LeaseTable table = LeaseTable(0))
      : coordinator(std::move(options), &source, std::move(table), &metrics) {
    v1::RegisterActorRequest r;
    r.set_name("actor");
    actor = coordinator.RegisterActor(r).actor_id();
  }

  std::vector<v1::Lease> Lease(uint32_t n) {
    v1::LeasePromptsRequest r;
    r.set_actor_id(actor);
    r.set_max_prompts(n);
    absl::StatusOr<v1::LeasePromptsResponse> leased = coordinator.LeasePrompts(r);
    EXPECT_TRUE(leased.ok()) << leased.status();
    if (!leased.ok()) return {};
    return {leased->leases().begin(), leased->leases().end()};
  }

  // Scored / Invalid from this harness's actor, which holds the leases.
  v1::Group Scored(const v1::Lease& lease, uint64_t version) const {
    v1::Group g = ::pmdrl::Scored(lease, version);
    g.set_actor_id(actor);
    return g;
  }
  v1::Group Invalid(const v1::Lease& lease, uint64_t version) const {
    v1::Group g = ::pmdrl::Invalid(lease, version);
    g.set_actor_id(actor);
    return g;
  }

  double Metric(const std::string& needle) {
    // The line of /metrics text that contains `needle` (name and labels), as a number.
    // (At a line's start: the # HELP and # TYPE lines name it too.)
    const std::string text = "\n" + metrics.Serialize();
    size_t at = text.find("\n" + needle + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + needle.size() + 2));
  }

  FakeSource source;
  MetricsRegistry metrics{"learner"};
  Coordinator coordinator;
  std::string actor;
};

// ---- "Trained twice": what a checkpoint takes of the coordinator is one consistent
// view: every issued place is either outstanding (leased or queued: leased again after a
// resume) or done, and a buffered group's place is done, never outstanding.

struct View {
  LeaseTableState lease;
  std::vector<v1::Group> buffered;
};

// What the checkpoint takes (learner/training_loop.cc). Before issue 15 it was
// View{c.SaveState(), c.BufferedGroups()}: ViewTakenWhileGroupsArrive... failed with it.
View TakeView(const Coordinator& c) {
  CoordinatorSnapshot s = c.Snapshot();
  return View{std::move(s.lease), std::move(s.buffered)};
}

// The places both outstanding and buffered in `v`: each would be trained from the
// buffer after a resume and then leased, accepted and trained again.
std::vector<StreamPosition> Doubles(const View& v) {
  std::set<StreamPosition> outstanding(v.lease.outstanding.begin(), v.lease.outstanding.end());
  std::vector<StreamPosition> out;
  for (const v1::Group& g : v.buffered) {
    if (outstanding.contains(Place(g))) out.push_back(Place(g));
  }
  return out;
}

TEST(CoordinatorTest, ViewTakenWhileGroupsArriveNeverHoldsAPlaceTwice) {
  // Racy by nature: views are taken while another thread accepts groups, over many
  // rounds; with the lease state and the buffer read under separate lock acquisitions
  // this found doubles (see SeparateCallsCanHoldAPlaceTwice for the deterministic case).
  Harness h(Options(/*prompts_per_update=*/200, /*max_staleness=*/0));
  int views = 0;
  size_t doubles = 0;
  for (int round = 0; round < 20 && doubles == 0; ++round) {
    std::vector<v1::Lease> leases = h.Lease(200);
    ASSERT_EQ(leases.size(), 200u);
    std::atomic<bool> done{false};
    std::thread submitter([&] {
      for (const v1::Lease& l : leases) {
        absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.Scored(l, 0));
        EXPECT_TRUE(ack.ok() && ack->status() == v1::ACK_ACCEPTED);
        std::this_thread::yield();
      }
      done = true;
    });
    while (!done) {
      doubles += Doubles(TakeView(h.coordinator)).size();
      ++views;
    }
    submitter.join();
    ASSERT_TRUE(h.coordinator.PopBatch(0, milliseconds(0)).has_value());
    h.coordinator.SetVersion(0);  // the batch is trained (the version kept, for this test)
  }
  EXPECT_EQ(doubles, 0u) << "over " << views << " views";
}

// The hazard Snapshot() removes, step by step: a group accepted between SaveState()
// and BufferedGroups() is in both.
TEST(CoordinatorTest, SeparateCallsCanHoldAPlaceTwice) {
  Harness h(Options(8, 1));
  std::vector<v1::Lease> leases = h.Lease(1);
  ASSERT_EQ(leases.size(), 1u);
  View v;
  v.lease = h.coordinator.SaveState();
  ASSERT_TRUE(h.coordinator.Submit(h.Scored(leases[0], 0)).ok());
  v.buffered = h.coordinator.BufferedGroups();
  EXPECT_THAT(Doubles(v), ::testing::ElementsAre(Place(leases[0])));
}

TEST(CoordinatorTest, SnapshotHoldsEachPlaceOnceAndAResumeTrainsItOnce) {
  Harness h(Options(/*prompts_per_update=*/8, /*max_staleness=*/1));
  std::vector<v1::Lease> leases = h.Lease(4);
  ASSERT_EQ(leases.size(), 4u);
  ASSERT_TRUE(h.coordinator.Submit(h.Scored(leases[1], 0)).ok());
  ASSERT_TRUE(h.coordinator.Submit(h.Scored(leases[3], 0)).ok());
  const CoordinatorSnapshot snap = h.coordinator.Snapshot();

  // Every issued place exactly once: outstanding (0, 0), (0, 2); buffered (0, 1), (0, 3).
  EXPECT_THAT(snap.lease.outstanding,
              ::testing::ElementsAre(StreamPosition{0, 0}, StreamPosition{0, 2}));
  std::vector<StreamPosition> buffered;
  for (const v1::Group& g : snap.buffered) buffered.push_back(Place(g));
  EXPECT_THAT(buffered, ::testing::ElementsAre(StreamPosition{0, 1}, StreamPosition{0, 3}));
  EXPECT_TRUE(Doubles(View{snap.lease, snap.buffered}).empty());
  ASSERT_TRUE(LeaseStateFromJson(ToJson(snap.lease)).ok());

  // A coordinator resumed from it leases the outstanding places, then fresh ones; the
  // buffered places never again.
  Harness resumed(Options(8, 1), LeaseTable::Restore(snap.lease));
  resumed.coordinator.RestoreBuffer(snap.buffered);
  std::vector<StreamPosition> leased;
  for (const v1::Lease& l : resumed.Lease(4)) leased.push_back(Place(l));
  EXPECT_THAT(leased, ::testing::ElementsAre(StreamPosition{0, 0}, StreamPosition{0, 2},
                                             StreamPosition{0, 4}, StreamPosition{0, 5}));
}

// ---- LeaseTable::Reopen and Drop, under the coordinator's fixes.

TEST(CoordinatorTest, ReopenedPlaceIsOutstandingAgainAcrossCollapsedEpochs) {
  LeaseTable t(/*items_per_epoch=*/3);
  std::vector<IssuedLease> a = t.Issue("a", 6, 0, 1000, 0);  // epochs 0 and 1, all of them
  for (const IssuedLease& l : a) ASSERT_EQ(t.Complete(l.lease_id), CompleteResult::kAccepted);
  ASSERT_TRUE(LeaseStateFromJson(ToJson(t.Save())).ok());
  EXPECT_TRUE(t.Save().done.empty());  // both epochs collapsed into done_below_epoch

  EXPECT_TRUE(t.Reopen({0, 1}));
  EXPECT_FALSE(t.Reopen({0, 1}));  // not done any more
  EXPECT_FALSE(t.IsDone({0, 1}));
  EXPECT_TRUE(t.IsDone({0, 0}));
  EXPECT_TRUE(t.IsDone({0, 2}));
  EXPECT_TRUE(t.IsDone({1, 0}));
  const LeaseTableState s = t.Save();
  EXPECT_THAT(s.outstanding, ::testing::ElementsAre(StreamPosition{0, 1}));
  absl::StatusOr<LeaseTableState> parsed = LeaseStateFromJson(ToJson(s));
  ASSERT_TRUE(parsed.ok()) << parsed.status();

  // Issued again before fresh places; once accepted, both epochs collapse again.
  std::vector<IssuedLease> b = t.Issue("b", 1, 0, 1000, 0);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(Pos(b[0]), (StreamPosition{0, 1}));
  EXPECT_EQ(t.Complete(b[0].lease_id), CompleteResult::kAccepted);
  EXPECT_TRUE(t.Save().done.empty());
  EXPECT_EQ(t.Save().done_below_epoch, 2);
}

TEST(CoordinatorTest, DroppedPlaceIsDoneAndNeverIssuedAgain) {
  LeaseTable t(0);
  std::vector<IssuedLease> a = t.Issue("a", 2, 0, 1000, 0);
  EXPECT_TRUE(t.Drop(a[0].lease_id));
  EXPECT_FALSE(t.Drop(a[0].lease_id));  // no longer live
  EXPECT_TRUE(t.IsDone(Pos(a[0])));
  EXPECT_EQ(t.InFlight(), 1);
  EXPECT_EQ(t.counters().completed, 0);
  EXPECT_EQ(t.ExpireDue(5000), 1);  // only a[1] comes back
  std::vector<IssuedLease> b = t.Issue("b", 2, 5000, 1000, 0);
  EXPECT_EQ(Pos(b[0]), Pos(a[1]));
  EXPECT_EQ(Pos(b[1]), (StreamPosition{0, 2}));
}

// ---- "A place lost": a group that went stale in the buffer gives its place back.

TEST(CoordinatorTest, GroupStaleInTheBufferHasItsPlaceLeasedAgain) {
  Harness h(Options(/*prompts_per_update=*/2, /*max_staleness=*/0));
  std::vector<v1::Lease> leases = h.Lease(1);
  ASSERT_EQ(leases.size(), 1u);
  absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.Scored(leases[0], 0));
  ASSERT_TRUE(ack.ok()) << ack.status();
  ASSERT_EQ(ack->status(), v1::ACK_ACCEPTED);

  // The learner moves on before a batch fills: the buffered group is too stale now.
  h.coordinator.SetVersion(1);
  EXPECT_FALSE(h.coordinator.PopBatch(1, milliseconds(0)).has_value());

  std::vector<v1::Lease> again = h.Lease(1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(Place(again[0]), Place(leases[0])) << "the stale group's place must be issued again";
  EXPECT_NE(again[0].lease_id(), leases[0].lease_id());
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_released_total{reason="stale_in_buffer"})"), 1);

  // The new lease's group is accepted (not a duplicate) and trained.
  ack = h.coordinator.Submit(h.Scored(again[0], 1));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
  // A late resend of the stale group stays stale; it cannot be accepted a second time.
  ack = h.coordinator.Submit(h.Scored(leases[0], 0));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_STALE);
}

// Admission: a prompt leased while a batch trains is trained one update later than one
// leased while the learner waits, so one batch fewer may be out; with max_staleness 1
// every group lent is trained, none goes stale waiting for its turn.
TEST(CoordinatorTest, AdmissionCountsTheBatchInTraining) {
  Harness h(Options(/*prompts_per_update=*/2, /*max_staleness=*/1));
  // Waiting for groups at version 0: two batches may be out.
  std::vector<v1::Lease> first = h.Lease(8);
  ASSERT_EQ(first.size(), 4u);
  EXPECT_TRUE(h.Lease(1).empty()) << "2 batches out at max_staleness 1";
  for (const v1::Lease& l : first) ASSERT_TRUE(h.coordinator.Submit(h.Scored(l, 0)).ok());
  ASSERT_TRUE(h.coordinator.PopBatch(0, milliseconds(0)).has_value());
  // Training version 0 -> 1 with one batch buffered: nothing more may be lent, for a
  // prompt lent now (sampled at 0) would be trained at version 2.
  EXPECT_TRUE(h.Lease(2).empty()) << "one batch buffered and one training";
  h.coordinator.SetVersion(1);
  // Version 1, the buffered batch about to train: one more batch, sampled at 1.
  std::vector<v1::Lease> second = h.Lease(8);
  ASSERT_EQ(second.size(), 2u);
  std::optional<std::vector<v1::Group>> batch = h.coordinator.PopBatch(1, milliseconds(0));
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ((*batch)[0].policy_version(), 0u);
  EXPECT_TRUE(h.Lease(2).empty()) << "one batch leased and one training";
  for (const v1::Lease& l : second) ASSERT_TRUE(h.coordinator.Submit(h.Scored(l, 1)).ok());
  h.coordinator.SetVersion(2);
  // At version 2 the batch sampled at 1 is within max_staleness: nothing went stale.
  batch = h.coordinator.PopBatch(2, milliseconds(0));
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ((*batch)[0].policy_version(), 1u);
  EXPECT_EQ(h.Metric("pmdrl_learner_groups_stale_in_buffer_total"), 0);
}

// Strictly on-policy: nothing is lent while a batch trains (it would be stale on arrival).
TEST(CoordinatorTest, StrictOnPolicyLendsNothingWhileTraining) {
  Harness h(Options(/*prompts_per_update=*/2, /*max_staleness=*/0));
  std::vector<v1::Lease> leases = h.Lease(8);
  ASSERT_EQ(leases.size(), 2u);
  for (const v1::Lease& l : leases) ASSERT_TRUE(h.coordinator.Submit(h.Scored(l, 0)).ok());
  ASSERT_TRUE(h.coordinator.PopBatch(0, milliseconds(0)).has_value());
  EXPECT_TRUE(h.Lease(2).empty());
  h.coordinator.SetVersion(1);
  EXPECT_EQ(h.Lease(8).size(), 2u);
}

// After the last update nothing is lent: the version it publishes would otherwise open
// the budget for a batch never trained, and those places would postdate the final
// checkpoint. A group already out is still answered.
TEST(CoordinatorTest, ClosedAdmissionLendsNothing) {
  Harness h(Options(/*prompts_per_update=*/2, /*max_staleness=*/1));
  std::vector<v1::Lease> leases = h.Lease(2);
  ASSERT_EQ(leases.size(), 2u);
  h.coordinator.CloseAdmission();
  h.coordinator.SetVersion(1);
  EXPECT_TRUE(h.Lease(2).empty());
  absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.Scored(leases[0], 1));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
}

// ---- "Forever": a rejected group retires its lease; its place goes back once, then
// it is dropped.

TEST(CoordinatorTest, RejectedGroupReleasesItsPlaceOnceThenDropsIt) {
  Harness h(Options(/*prompts_per_update=*/4, /*max_staleness=*/1));
  std::vector<v1::Lease> first = h.Lease(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_FALSE(h.coordinator.Submit(h.Invalid(first[0], 0)).ok());
  EXPECT_EQ(h.coordinator.ActorStatuses().at(0).leases_in_flight(), 0u)
      << "a rejected group must retire its lease";

  // First rejection: the place is issued again (another actor may sample it fine).
  std::vector<v1::Lease> second = h.Lease(1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(Place(second[0]), Place(first[0]));
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_released_total{reason="rejected"})"), 1);

  // Second rejection of the same place: dropped for good.
  EXPECT_FALSE(h.coordinator.Submit(h.Invalid(second[0], 0)).ok());
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_dropped_total{reason="rejected"})"), 1);
  std::vector<v1::Lease> third = h.Lease(3);
  ASSERT_EQ(third.size(), 3u);
  for (const v1::Lease& l : third) EXPECT_NE(Place(l), Place(first[0]));

  // A resend of either rejected group is rejected again and changes nothing.
  EXPECT_FALSE(h.coordinator.Submit(h.Invalid(first[0], 0)).ok());
  EXPECT_FALSE(h.coordinator.Submit(h.Invalid(second[0], 0)).ok());
  EXPECT_EQ(h.coordinator.ActorStatuses().at(0).leases_in_flight(), 3u);
  EXPECT_EQ(h.coordinator.counts().rejected, 4u);
}

TEST(CoordinatorTest, ValidGroupAfterOneRejectionIsAccepted) {
  Harness h(Options(4, 1));
  std::vector<v1::Lease> first = h.Lease(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_FALSE(h.coordinator.Submit(h.Invalid(first[0], 0)).ok());
  std::vector<v1::Lease> second = h.Lease(1);
  ASSERT_EQ(second.size(), 1u);
  ASSERT_EQ(Place(second[0]), Place(first[0]));
  absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.Scored(second[0], 0));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
}

// ---- "No one in": a token holder cannot train rows it was never lent. A group that
// answers a live lease but carries another actor, prompt or reference is rejected with
// the field named, and its lease is retired like any rejected group's.
TEST(CoordinatorTest, GroupMustMatchItsLease) {
  Harness h(Options(/*prompts_per_update=*/8, /*max_staleness=*/1));
  v1::RegisterActorRequest r;
  r.set_name("other");
  const std::string other = h.coordinator.RegisterActor(r).actor_id();

  struct Case {
    const char* field;
    std::function<void(v1::Group&)> tamper;
  };
  const std::vector<Case> cases = {
      {"actor_id", [&](v1::Group& g) { g.set_actor_id(other); }},
      {"prompt_tokens", [](v1::Group& g) { g.set_prompt_tokens(0, 7); }},
      {"prompt_tokens", [](v1::Group& g) { g.add_prompt_tokens(4); }},
      {"reference", [](v1::Group& g) { g.set_reference("3"); }},
  };
  for (const Case& c : cases) {
    std::vector<v1::Lease> leases = h.Lease(1);
    ASSERT_EQ(leases.size(), 1u);
    v1::Group g = h.Scored(leases[0], 0);
    ASSERT_TRUE(h.coordinator.Submit(g).ok()) << "the untampered group is fine";
    leases = h.Lease(1);
    ASSERT_EQ(leases.size(), 1u);
    g = h.Scored(leases[0], 0);
    c.tamper(g);
    absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(g);
    ASSERT_FALSE(ack.ok()) << c.field << " tampered, yet " << ack->ShortDebugString();
    EXPECT_TRUE(absl::IsInvalidArgument(ack.status())) << ack.status();
    EXPECT_THAT(std::string(ack.status().message()), ::testing::HasSubstr(c.field));
    if (std::string(c.field) == "actor_id") {
      // Another actor naming this lease must not retire it: the lease stays in flight and
      // its own actor's answer is still taken.
      EXPECT_EQ(h.coordinator.ActorStatuses().at(0).leases_in_flight(), 1u);
      ASSERT_TRUE(h.coordinator.Submit(h.Scored(leases[0], 0)).ok());
    }
    // Retired like any rejected (or accepted) group's lease: nothing stays in flight.
    EXPECT_EQ(h.coordinator.ActorStatuses().at(0).leases_in_flight(), 0u) << c.field;
  }
  EXPECT_EQ(h.coordinator.counts().rejected, cases.size());
  EXPECT_EQ(h.coordinator.counts().accepted, cases.size() + 1);
}

}  // namespace
}  // namespace pmdrl
