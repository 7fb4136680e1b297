#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "learner/coordinator/lease_table.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using ::testing::ElementsAre;

StreamPosition Pos(const IssuedLease& l) { return {l.epoch, l.index}; }

std::vector<StreamPosition> Positions(const std::vector<IssuedLease>& ls) {
  std::vector<StreamPosition> out;
  for (const auto& l : ls) out.push_back(Pos(l));
  return out;
}

TEST(LeaseTableTest, IssuesFreshPlacesInOrderWithUniqueIds) {
  LeaseTable t(/*items_per_epoch=*/0);
  auto a = t.Issue("actor-a", 3, /*now_ms=*/1000, /*ttl_ms=*/500, /*version=*/7);
  auto b = t.Issue("actor-b", 2, 1100, 500, 8);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_THAT(Positions(a),
              ElementsAre(StreamPosition{0, 0}, StreamPosition{0, 1}, StreamPosition{0, 2}));
  EXPECT_THAT(Positions(b), ElementsAre(StreamPosition{0, 3}, StreamPosition{0, 4}));
  std::set<std::string> ids;
  for (const auto& l : a) ids.insert(l.lease_id);
  for (const auto& l : b) ids.insert(l.lease_id);
  EXPECT_EQ(ids.size(), 5u);
  EXPECT_EQ(a[0].deadline_ms, 1500);
  EXPECT_EQ(a[0].issued_at_version, 7);
  EXPECT_EQ(b[1].deadline_ms, 1600);
  EXPECT_EQ(b[1].issued_at_version, 8);
  EXPECT_EQ(t.InFlight(), 5);
  EXPECT_EQ(t.counters().issued, 5);
  EXPECT_EQ(t.counters().reissued, 0);
  EXPECT_EQ(t.cursor(), (StreamPosition{0, 5}));

  auto info = t.Lookup(b[0].lease_id);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->actor_id, "actor-b");
  EXPECT_EQ(info->index, 3);
  EXPECT_TRUE(info->live);
  EXPECT_FALSE(info->expired);
  EXPECT_FALSE(info->done);

  EXPECT_TRUE(t.Issue("actor-a", 0, 0, 1, 0).empty());
}

TEST(LeaseTableTest, ExpiredPlaceIsReissuedToAnotherActorBeforeFreshOnes) {
  LeaseTable t(0);
  auto a = t.Issue("a", 2, 0, 100, 1);
  EXPECT_EQ(t.ExpireDue(99), 0);
  EXPECT_EQ(t.InFlight(), 2);
  EXPECT_EQ(t.ExpireDue(100), 2);  // deadline reached
  EXPECT_EQ(t.InFlight(), 0);
  EXPECT_EQ(t.Queued(), 2);
  EXPECT_EQ(t.counters().expired, 2);

  auto info = t.Lookup(a[0].lease_id);  // still known after expiry
  ASSERT_TRUE(info.has_value());
  EXPECT_TRUE(info->expired);
  EXPECT_FALSE(info->live);

  auto b = t.Issue("b", 3, 200, 100, 2);
  EXPECT_THAT(Positions(b),
              ElementsAre(StreamPosition{0, 0}, StreamPosition{0, 1}, StreamPosition{0, 2}));
  EXPECT_NE(b[0].lease_id, a[0].lease_id);
  EXPECT_EQ(t.Lookup(b[0].lease_id)->actor_id, "b");
  EXPECT_EQ(t.counters().reissued, 2);
  EXPECT_EQ(t.counters().issued, 5);
  EXPECT_EQ(t.Queued(), 0);
  EXPECT_EQ(t.ExpireDue(250), 0);  // the expired ones are not expired twice
}

TEST(LeaseTableTest, HeartbeatExtendsOnlyTheOwnersLiveLeases) {
  LeaseTable t(0);
  auto a = t.Issue("a", 2, 0, 100, 0);
  EXPECT_EQ(t.Extend("a", {a[0].lease_id, "no-such-lease"}, 50, 100), 1);
  EXPECT_EQ(t.Lookup(a[0].lease_id)->deadline_ms, 150);
  EXPECT_EQ(t.Extend("b", {a[1].lease_id}, 50, 100), 0);  // not b's lease
  EXPECT_EQ(t.Extend("a", {a[0].lease_id}, 10, 100), 1);  // never shortens
  EXPECT_EQ(t.Lookup(a[0].lease_id)->deadline_ms, 150);

  EXPECT_EQ(t.ExpireDue(120), 1);  // a[1] only
  EXPECT_FALSE(t.Lookup(a[1].lease_id)->live);
  EXPECT_TRUE(t.Lookup(a[0].lease_id)->live);
  EXPECT_EQ(t.Extend("a", {a[1].lease_id}, 120, 100), 0);  // expired: no resurrection
  EXPECT_EQ(t.ExpireDue(150), 1);
}

TEST(LeaseTableTest, LateGroupOfExpiredLeaseAfterReissueIsADuplicate) {
  LeaseTable t(0);
  auto l1 = t.Issue("a", 1, 0, 100, 0)[0];
  t.ExpireDue(100);
  auto l2 = t.Issue("b", 1, 100, 100, 1)[0];
  ASSERT_EQ(Pos(l2), Pos(l1));
  EXPECT_EQ(t.Complete(l2.lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.Complete(l1.lease_id), CompleteResult::kDuplicate);  // late group
  EXPECT_EQ(t.Complete(l2.lease_id), CompleteResult::kDuplicate);  // retried send
  EXPECT_EQ(t.counters().completed, 1);
  EXPECT_EQ(t.counters().duplicates, 2);
  EXPECT_TRUE(t.IsDone({0, 0}));
  EXPECT_EQ(t.InFlight(), 0);
  EXPECT_TRUE(t.Lookup(l1.lease_id)->done);
}

TEST(LeaseTableTest, LateGroupFirstWinsAndRetiresTheReissuedLease) {
  LeaseTable t(0);
  auto l1 = t.Issue("a", 1, 0, 100, 0)[0];
  t.ExpireDue(100);
  auto l2 = t.Issue("b", 1, 100, 100, 1)[0];
  EXPECT_EQ(t.Complete(l1.lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.InFlight(), 1);  // b is still working on it
  EXPECT_EQ(t.Complete(l2.lease_id), CompleteResult::kDuplicate);
  EXPECT_EQ(t.InFlight(), 0);
  EXPECT_EQ(t.counters().completed, 1);
}

TEST(LeaseTableTest, CompletingAQueuedPlaceTakesItOffTheQueue) {
  LeaseTable t(0);
  auto l1 = t.Issue("a", 1, 0, 100, 0)[0];
  t.ExpireDue(100);
  EXPECT_EQ(t.Queued(), 1);
  EXPECT_EQ(t.Complete(l1.lease_id), CompleteResult::kAccepted);  // late, before re-issue
  EXPECT_EQ(t.Queued(), 0);
  auto next = t.Issue("b", 1, 100, 100, 0);
  EXPECT_EQ(Pos(next[0]), (StreamPosition{0, 1}));  // fresh, not the done place
  EXPECT_EQ(t.counters().reissued, 0);
  t.ExpireDue(1000);  // an expired lease of a done place is not queued
  EXPECT_EQ(t.Complete(next[0].lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.Queued(), 0);
}

TEST(LeaseTableTest, UnknownLease) {
  LeaseTable t(0);
  t.Issue("a", 1, 0, 100, 0);
  EXPECT_EQ(t.Complete("L1-deadbeef-not-ours"), CompleteResult::kUnknownLease);
  EXPECT_FALSE(t.Lookup("nope").has_value());
  EXPECT_FALSE(t.Release("nope"));
  EXPECT_EQ(t.Extend("a", {"nope"}, 0, 100), 0);
  EXPECT_EQ(t.counters().duplicates, 0);
  EXPECT_EQ(t.counters().completed, 0);
}

TEST(LeaseTableTest, ReleaseRequeuesUnlessDone) {
  LeaseTable t(0);
  auto a = t.Issue("a", 3, 0, 100, 0);
  EXPECT_TRUE(t.Release(a[1].lease_id));
  EXPECT_FALSE(t.Release(a[1].lease_id));  // not live any more
  EXPECT_EQ(t.InFlight(), 2);
  EXPECT_EQ(t.Queued(), 1);
  EXPECT_TRUE(t.Lookup(a[1].lease_id).has_value());
  EXPECT_FALSE(t.Lookup(a[1].lease_id)->expired);

  EXPECT_EQ(t.Complete(a[0].lease_id), CompleteResult::kAccepted);
  EXPECT_FALSE(t.Release(a[0].lease_id));  // completed: nothing to give back
  EXPECT_EQ(t.Queued(), 1);

  auto b = t.Issue("b", 2, 10, 100, 0);
  EXPECT_THAT(Positions(b), ElementsAre(StreamPosition{0, 1}, StreamPosition{0, 3}));
  EXPECT_EQ(t.counters().reissued, 1);
}

TEST(LeaseTableTest, FiniteEpochsWrapAndCompact) {
  LeaseTable t(/*items_per_epoch=*/3);
  auto ls = t.Issue("a", 7, 0, 100, 0);
  EXPECT_THAT(Positions(ls),
              ElementsAre(StreamPosition{0, 0}, StreamPosition{0, 1}, StreamPosition{0, 2},
                          StreamPosition{1, 0}, StreamPosition{1, 1}, StreamPosition{1, 2},
                          StreamPosition{2, 0}));
  EXPECT_EQ(t.cursor(), (StreamPosition{2, 1}));

  // Finish epoch 1 before epoch 0: it may not collapse while epoch 0 is open.
  for (int i : {3, 5, 4}) EXPECT_EQ(t.Complete(ls[i].lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.Save().done_below_epoch, 0);
  for (int i : {2, 0}) EXPECT_EQ(t.Complete(ls[i].lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.Save().done_below_epoch, 0);
  EXPECT_FALSE(t.IsDone({0, 1}));
  EXPECT_EQ(t.Complete(ls[1].lease_id), CompleteResult::kAccepted);
  LeaseTableState s = t.Save();
  EXPECT_EQ(s.done_below_epoch, 2);  // epochs 0 and 1 collapsed
  EXPECT_TRUE(s.done.empty());
  EXPECT_TRUE(t.IsDone({0, 1}));
  EXPECT_TRUE(t.IsDone({1, 2}));
  EXPECT_FALSE(t.IsDone({2, 0}));
  EXPECT_EQ(t.Complete(ls[4].lease_id), CompleteResult::kDuplicate);  // still a duplicate
}

TEST(LeaseTableTest, ForgetsOldestRetiredLeasesBeyondTheCap) {
  LeaseTable t(0, /*max_remembered=*/2);
  auto a = t.Issue("a", 3, 0, 100, 0);
  for (const auto& l : a) t.Release(l.lease_id);
  EXPECT_FALSE(t.Lookup(a[0].lease_id).has_value());
  EXPECT_TRUE(t.Lookup(a[1].lease_id).has_value());
  EXPECT_TRUE(t.Lookup(a[2].lease_id).has_value());
  EXPECT_EQ(t.Queued(), 3);  // forgetting an id loses no place
}

// A table with some of everything: done out of order, expired, released, live.
LeaseTable MixedTable(std::vector<IssuedLease>* leases) {
  LeaseTable t(/*items_per_epoch=*/5);
  *leases = t.Issue("a", 8, 0, 100, 3);  // (0,0..4), (1,0..2)
  auto& ls = *leases;
  for (int i : {0, 1, 3, 6}) EXPECT_EQ(t.Complete(ls[i].lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(t.Extend("a", {ls[2].lease_id, ls[7].lease_id}, 50, 100), 2);
  EXPECT_EQ(t.ExpireDue(100), 2);          // (0,4), (1,0)
  EXPECT_TRUE(t.Release(ls[7].lease_id));  // (1,2)
  EXPECT_EQ(t.Complete(ls[6].lease_id), CompleteResult::kDuplicate);
  // Live: (0,2). Queued: (0,4), (1,0), (1,2).
  return t;
}

TEST(LeaseTableTest, SaveDescribesCursorDoneAndOutstanding) {
  std::vector<IssuedLease> ls;
  LeaseTable t = MixedTable(&ls);
  LeaseTableState s = t.Save();
  EXPECT_EQ(s.items_per_epoch, 5);
  EXPECT_EQ(s.cursor, (StreamPosition{1, 3}));
  EXPECT_EQ(s.done_below_epoch, 0);
  ASSERT_EQ(s.done.size(), 2u);
  EXPECT_EQ(s.done[0].epoch, 0);
  EXPECT_EQ(s.done[0].low_water, 2);
  EXPECT_THAT(s.done[0].above, ElementsAre(3));
  EXPECT_EQ(s.done[1].epoch, 1);
  EXPECT_EQ(s.done[1].low_water, 0);
  EXPECT_THAT(s.done[1].above, ElementsAre(1));
  EXPECT_THAT(s.outstanding, ElementsAre(StreamPosition{0, 2}, StreamPosition{0, 4},
                                         StreamPosition{1, 0}, StreamPosition{1, 2}));
  EXPECT_EQ(s.counters.issued, 8);
  EXPECT_EQ(s.counters.completed, 4);
  EXPECT_EQ(s.counters.expired, 2);
  EXPECT_EQ(s.counters.duplicates, 1);
  EXPECT_EQ(s.next_lease_seq, 9);
}

TEST(LeaseTableTest, RestoreThroughJsonKeepsEveryPlace) {
  std::vector<IssuedLease> ls;
  LeaseTable t = MixedTable(&ls);
  const LeaseTableState saved = t.Save();
  const std::string json = ToJson(saved);
  absl::StatusOr<LeaseTableState> parsed = LeaseStateFromJson(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(ToJson(*parsed), json);

  LeaseTable r = LeaseTable::Restore(*parsed);
  EXPECT_EQ(ToJson(r.Save()), json);  // the live lease became a queued place: same state
  EXPECT_EQ(r.cursor(), (StreamPosition{1, 3}));
  EXPECT_EQ(r.InFlight(), 0);
  EXPECT_EQ(r.Queued(), 4);
  for (const auto& l : ls) EXPECT_FALSE(r.Lookup(l.lease_id).has_value());
  EXPECT_EQ(r.Complete(ls[2].lease_id), CompleteResult::kUnknownLease);
  for (StreamPosition p :
       {StreamPosition{0, 0}, StreamPosition{0, 1}, StreamPosition{0, 3}, StreamPosition{1, 1}}) {
    EXPECT_TRUE(r.IsDone(p)) << p.epoch << "," << p.index;
  }
  EXPECT_EQ(r.counters().issued, 8);
  EXPECT_EQ(r.counters().duplicates, 1);

  auto again = r.Issue("b", 6, 1000, 100, 4);
  EXPECT_THAT(Positions(again),
              ElementsAre(StreamPosition{0, 2}, StreamPosition{0, 4}, StreamPosition{1, 0},
                          StreamPosition{1, 2}, StreamPosition{1, 3}, StreamPosition{1, 4}));
  EXPECT_EQ(again[0].lease_id.rfind("L9-", 0), 0u);  // the counter goes on
  for (const auto& l : ls) {
    for (const auto& n : again) EXPECT_NE(l.lease_id, n.lease_id);
  }
  for (const auto& l : again) EXPECT_EQ(r.Complete(l.lease_id), CompleteResult::kAccepted);
  EXPECT_EQ(r.Save().done_below_epoch, 2);
}

TEST(LeaseTableTest, RejectsBadJson) {
  std::vector<IssuedLease> ls;
  const LeaseTableState good = MixedTable(&ls).Save();
  EXPECT_FALSE(LeaseStateFromJson("not json").ok());
  EXPECT_FALSE(LeaseStateFromJson("{}").ok());

  LeaseTableState s = good;
  s.outstanding.push_back({0, 3});  // also done
  std::sort(s.outstanding.begin(), s.outstanding.end());
  EXPECT_FALSE(LeaseStateFromJson(ToJson(s)).ok());

  s = good;
  s.outstanding.push_back({1, 3});  // at the cursor: never issued
  EXPECT_FALSE(LeaseStateFromJson(ToJson(s)).ok());

  s = good;
  std::swap(s.outstanding[0], s.outstanding[1]);  // out of order
  EXPECT_FALSE(LeaseStateFromJson(ToJson(s)).ok());

  s = good;
  s.cursor = {1, 5};  // index past the epoch
  EXPECT_FALSE(LeaseStateFromJson(ToJson(s)).ok());

  s = good;
  s.done[0].above = {1};  // below low_water
  absl::StatusOr<LeaseTableState> bad = LeaseStateFromJson(ToJson(s));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("done epoch 0"));
}

// Random traffic: issue, heartbeat, expire, complete (also via stale ids), release and
// checkpoint/restore. Every place below the cursor is, at every check, either done or
// outstanding; each is accepted exactly once; after draining, all are done.
void RunRandomTraffic(int64_t items_per_epoch, uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  LeaseTable t(items_per_epoch);
  std::vector<std::string> ids;  // every id handed out since the last restore
  std::map<StreamPosition, int> accepted;
  int64_t now = 0;
  int64_t completions = 0;

  auto complete = [&](const std::string& id) {
    std::optional<LeaseInfo> info = t.Lookup(id);
    ASSERT_TRUE(info.has_value());
    const StreamPosition p{info->epoch, info->index};
    const bool was_accepted = accepted.count(p) > 0;
    const CompleteResult res = t.Complete(id);
    ASSERT_EQ(res, was_accepted ? CompleteResult::kDuplicate : CompleteResult::kAccepted);
    if (res == CompleteResult::kAccepted) {
      ASSERT_EQ(++accepted[p], 1);
      ++completions;
    }
  };
  auto check = [&]() {
    LeaseTableState s = t.Save();
    std::set<StreamPosition> outstanding(s.outstanding.begin(), s.outstanding.end());
    ASSERT_EQ(outstanding.size(), s.outstanding.size());
    StreamPosition p{0, 0};
    while (p < t.cursor()) {
      const bool done = accepted.count(p) > 0;
      ASSERT_EQ(t.IsDone(p), done) << p.epoch << "," << p.index;
      ASSERT_NE(done, outstanding.count(p) > 0) << p.epoch << "," << p.index;
      ++p.index;
      if (items_per_epoch > 0 && p.index == items_per_epoch) p = {p.epoch + 1, 0};
    }
  };

  for (int op = 0; op < 4000; ++op) {
    const int kind = uniform(0, 99);
    if (kind < 25) {
      const std::string actor = "actor-" + std::to_string(uniform(0, 3));
      for (const auto& l : t.Issue(actor, uniform(0, 4), now, uniform(5, 40), op)) {
        ids.push_back(l.lease_id);
      }
    } else if (kind < 40 && !ids.empty()) {
      const std::string actor = "actor-" + std::to_string(uniform(0, 3));
      std::vector<std::string> beat;
      for (int i = 0; i < 4; ++i) beat.push_back(ids[uniform(0, ids.size() - 1)]);
      t.Extend(actor, beat, now, uniform(5, 40));
    } else if (kind < 55) {
      now += uniform(0, 8);
      t.ExpireDue(now);
    } else if (kind < 85 && !ids.empty()) {
      // Mostly recent leases, sometimes any old one (late or retried groups).
      const int n = static_cast<int>(ids.size());
      complete(ids[uniform(0, 1) ? uniform(std::max(0, n - 8), n - 1) : uniform(0, n - 1)]);
      if (testing::Test::HasFatalFailure()) return;
    } else if (kind < 97 && !ids.empty()) {
      t.Release(ids[uniform(0, ids.size() - 1)]);
    } else if (kind >= 97) {
      absl::StatusOr<LeaseTableState> s = LeaseStateFromJson(ToJson(t.Save()));
      ASSERT_TRUE(s.ok()) << s.status();
      const LeaseCounters before = t.counters();
      t = LeaseTable::Restore(*s);
      ASSERT_EQ(t.counters().completed, before.completed);
      if (!ids.empty()) {
        ASSERT_EQ(t.Complete(ids.back()), CompleteResult::kUnknownLease);
      }
      ids.clear();
    }
    if (op % 50 == 0) {
      check();
      if (testing::Test::HasFatalFailure()) return;
    }
  }

  // Drain: let every lease expire, then work off the queue until nothing is left.
  for (int round = 0; round < 100 && (t.Queued() > 0 || t.InFlight() > 0); ++round) {
    now += 1000;
    t.ExpireDue(now);
    for (const auto& l : t.Issue("drainer", t.Queued(), now, 10, 0)) {
      ids.push_back(l.lease_id);
      ASSERT_EQ(t.Complete(l.lease_id), CompleteResult::kAccepted);
      ASSERT_EQ(++accepted[Pos(l)], 1);
      ++completions;
    }
  }
  ASSERT_EQ(t.Queued(), 0);
  ASSERT_EQ(t.InFlight(), 0);
  check();

  int64_t below_cursor = 0;
  for (StreamPosition p{0, 0}; p < t.cursor();) {
    ASSERT_EQ(accepted[p], 1) << p.epoch << "," << p.index;
    ++below_cursor;
    ++p.index;
    if (items_per_epoch > 0 && p.index == items_per_epoch) p = {p.epoch + 1, 0};
  }
  EXPECT_GT(below_cursor, 500);  // the traffic really moved through the stream
  EXPECT_EQ(completions, below_cursor);
  EXPECT_EQ(t.counters().completed, below_cursor);
  EXPECT_GT(t.counters().reissued, 50);
  EXPECT_GT(t.counters().duplicates, 50);

  // Fully done: the compact form is a bare low-water mark.
  LeaseTableState s = t.Save();
  EXPECT_TRUE(s.outstanding.empty());
  for (const auto& d : s.done) EXPECT_TRUE(d.above.empty());
  if (items_per_epoch == 0) {
    ASSERT_EQ(s.done.size(), 1u);
    EXPECT_EQ(s.done[0].low_water, s.cursor.index);
  } else {
    EXPECT_EQ(s.done_below_epoch, s.cursor.epoch);
  }
}

// Found by fuzz/checkpoint_readers_fuzz: a number that is not an integer (1e30 does not fit
// an int64; taking it as one was undefined behaviour) is refused, wherever it stands.
TEST(LeaseTableTest, RejectsNumbersThatAreNotIntegers) {
  std::vector<IssuedLease> ls;
  const std::string good = ToJson(MixedTable(&ls).Save());
  ASSERT_TRUE(LeaseStateFromJson(good).ok());
  const nlohmann::json j = nlohmann::json::parse(good);
  for (const nlohmann::json::json_pointer& where :
       {"/items_per_epoch"_json_pointer, "/cursor/1"_json_pointer, "/done/0/low_water"_json_pointer,
        "/counters/completed"_json_pointer, "/next_lease_seq"_json_pointer}) {
    for (double value : {1e30, 2.5}) {
      nlohmann::json bad = j;
      bad[where] = value;
      EXPECT_FALSE(LeaseStateFromJson(bad.dump()).ok()) << where.to_string() << " = " << value;
    }
  }
}

TEST(LeaseTableTest, RandomTrafficInfiniteStream) { RunRandomTraffic(0, 20240601); }
TEST(LeaseTableTest, RandomTrafficFiniteEpochs) { RunRandomTraffic(37, 7); }

}  // namespace
}  // namespace pmdrl
