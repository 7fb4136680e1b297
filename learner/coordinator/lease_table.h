// The coordinator's bookkeeping of prompt leases (docs/design.md "Data flow" steps 1, 4
// and 7). It hands out places in the data stream, (epoch, index), never the data.
//
// Promises:
//  - every place of the stream is issued, and once accepted (Complete) it is counted
//    exactly once, however many leases it was issued under; a place is done when
//    accepted or dropped (Drop), and only Reopen makes a done place outstanding again;
//  - a place whose lease expired or was released goes back to a re-issue queue and is
//    issued again before any fresh place; nothing is lost while the table lives, and
//    Save/Restore keeps every place that was issued but not done;
//  - a lease id stays known after expiry or release, so a late group for it is legal
//    (and then a duplicate when its place was accepted meanwhile).
//
// Pure logic: no clock (times are passed in as now_ms), no I/O, no locking: the caller
// serialises calls (thread-compatible).
#ifndef PMDRL_LEARNER_LEASE_TABLE_H_
#define PMDRL_LEARNER_LEASE_TABLE_H_

#include <compare>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"

namespace pmdrl {

// A place in the data stream. With a finite dataset index < items_per_epoch.
struct StreamPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  auto operator<=>(const StreamPosition&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const StreamPosition& p) {
    return H::combine(std::move(h), p.epoch, p.index);
  }
};

struct IssuedLease {
  std::string lease_id;
  int64_t epoch = 0;
  int64_t index = 0;
  int64_t deadline_ms = 0;
  int64_t issued_at_version = 0;
};

struct LeaseInfo {
  int64_t epoch = 0;
  int64_t index = 0;
  std::string actor_id;
  int64_t issued_at_version = 0;
  int64_t deadline_ms = 0;
  bool expired = false;  // ExpireDue retired it (its place may be re-issued)
  bool live = false;     // counted in InFlight(): not expired, released nor completed
  bool done = false;     // its place has been accepted (by this lease or another)
};

enum class CompleteResult { kAccepted, kDuplicate, kUnknownLease };

// Monotonic over the table's life, carried through Save/Restore.
struct LeaseCounters {
  int64_t issued = 0;      // leases handed out, re-issues included
  int64_t reissued = 0;    // of those, places taken from the re-issue queue
  int64_t expired = 0;     // leases retired by ExpireDue
  int64_t duplicates = 0;  // Complete calls answered kDuplicate
  int64_t completed = 0;   // places accepted
};

// What a checkpoint keeps. Done places are stored compactly per epoch: every index
// below low_water is done, plus the indices in `above`. Epochs below done_below_epoch
// are entirely done and not listed.
struct LeaseTableState {
  struct EpochDone {
    int64_t epoch = 0;
    int64_t low_water = 0;
    std::vector<int64_t> above;  // ascending, each > low_water
  };
  int64_t items_per_epoch = 0;  // 0: an infinite stream (epoch stays 0)
  StreamPosition cursor;        // the next fresh place
  int64_t done_below_epoch = 0;
  std::vector<EpochDone> done;              // ascending epochs >= done_below_epoch
  std::vector<StreamPosition> outstanding;  // issued, not done (leased or queued); sorted
  LeaseCounters counters;
  int64_t next_lease_seq = 1;
};

std::string ToJson(const LeaseTableState& state);
// Parses and checks ToJson's output (ranges, ordering, no place both done and outstanding).
absl::StatusOr<LeaseTableState> LeaseStateFromJson(std::string_view json);

class LeaseTable {
 public:
  // items_per_epoch == 0: an infinite stream. Lease records that are no longer live are
  // remembered (for late groups) up to max_remembered, oldest forgotten first.
  explicit LeaseTable(int64_t items_per_epoch, size_t max_remembered = size_t{1} << 20);

  // Up to max_n leases for actor_id, deadline now_ms + ttl_ms: first the re-issue
  // queue (oldest first), then fresh places from the cursor.
  std::vector<IssuedLease> Issue(std::string_view actor_id, int64_t max_n, int64_t now_ms,
                                 int64_t ttl_ms, int64_t version);

  // Heartbeat: moves the deadline of each of actor_id's live leases among lease_ids
  // to at least now_ms + ttl_ms. Other ids are ignored. Returns how many were extended.
  int64_t Extend(std::string_view actor_id, const std::vector<std::string>& lease_ids,
                 int64_t now_ms, int64_t ttl_ms);

  // Retires every live lease with deadline_ms <= now_ms; their places that are not
  // done go to the re-issue queue. Returns the number retired.
  int64_t ExpireDue(int64_t now_ms);

  // nullopt for an id this table never issued (or has forgotten).
  std::optional<LeaseInfo> Lookup(std::string_view lease_id) const;

  // Marks the lease's place done. kDuplicate when the place was done already.
  CompleteResult Complete(std::string_view lease_id);

  // The lease's group was dropped: a live lease is retired and its place re-queued
  // unless done. Returns false (and does nothing) when the lease is not live.
  bool Release(std::string_view lease_id);

  // The lease's group was rejected for good: a live lease is retired and its place
  // marked done without an accepted group, so it is never issued again (not counted
  // in counters().completed). Returns false (and does nothing) when the lease is not live.
  bool Drop(std::string_view lease_id);

  // The accepted group of done place `p` was discarded untrained (it grew too stale
  // while buffered): `p` is no longer done and goes to the re-issue queue. Costs
  // O(places done in p's epoch above p), which stays small as buffered groups are
  // recent. Returns false (and does nothing) when `p` is not done.
  bool Reopen(StreamPosition p);

  int64_t InFlight() const { return static_cast<int64_t>(live_.size()); }
  // Live leases of one actor.
  int64_t InFlightOf(std::string_view actor_id) const;
  int64_t Queued() const { return static_cast<int64_t>(queued_.size()); }
  const LeaseCounters& counters() const { return counters_; }
  StreamPosition cursor() const { return cursor_; }
  bool IsDone(StreamPosition p) const;

  // Outstanding places are restored into the re-issue queue; the old lease ids are
  // not restored (a restarted coordinator answers kUnknownLease for them).
  LeaseTableState Save() const;
  static LeaseTable Restore(const LeaseTableState& state, size_t max_remembered = size_t{1} << 20);

 private:
  struct Record {
    StreamPosition pos;
    std::string actor_id;
    int64_t issued_at_version = 0;
    int64_t deadline_ms = 0;
    int64_t seq = 0;
    bool live = true;
    bool expired = false;
  };
  struct EpochDone {
    int64_t low_water = 0;               // every index below is done
    absl::flat_hash_set<int64_t> above;  // done indices > low_water
  };

  void MarkDone(StreamPosition p);
  void CompactEpochs();
  void Enqueue(StreamPosition p);
  void Retire(Record& r, const std::string& id);  // live -> not live, remembered
  StreamPosition NextFresh();
  std::string NewLeaseId();

  int64_t items_per_epoch_;
  size_t max_remembered_;
  StreamPosition cursor_;
  // Done places: all of epochs < done_below_epoch_, then per epoch a low-water mark and
  // the done indices above it.
  int64_t done_below_epoch_ = 0;
  std::map<int64_t, EpochDone> done_;
  // Re-issue queue: FIFO with lazy deletion; queued_ is the truth, queue_ the order.
  std::deque<StreamPosition> queue_;
  absl::flat_hash_set<StreamPosition> queued_;
  absl::flat_hash_map<std::string, Record> leases_;
  std::map<int64_t, std::string> live_;  // seq -> id: deterministic expiry order
  std::deque<std::string> retired_;      // not-live ids, oldest first, for forgetting
  LeaseCounters counters_;
  int64_t next_seq_ = 1;
  std::mt19937_64 rng_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_LEASE_TABLE_H_
