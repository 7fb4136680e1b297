// LeaseTable operation sequences (learner/coordinator/lease_table.h) against a model of its
// promises. The input picks the stream (finite with 1..8 places per epoch, or infinite), how many
// retired lease ids are remembered, and then a sequence of Issue, Extend, ExpireDue,
// Complete, Release, Drop, Reopen, time steps and Save -> JSON -> Restore round trips.
// Checked after every operation:
//  - no lease id is ever issued twice (across restores too); a live lease is never
//    forgotten; an id from before a restore is unknown after it;
//  - Issue never hands out a done place; fresh places come in stream order, each once;
//  - every result (Complete accepted/duplicate/unknown, Release, Drop, Reopen, Extend,
//    ExpireDue) is the one the model expects, and the counters add up
//    (issued, reissued, expired, duplicates, completed), InFlight() counts live leases;
//  - nothing is lost: every issued place is either done or outstanding (Save() lists
//    exactly the issued places that are not done), IsDone agrees with the model;
//  - ToJson(Save()) parses back with LeaseStateFromJson to the same JSON, and a restored
//    table saves the same state.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.h"
#include "learner/coordinator/lease_table.h"

namespace {

using pmdrl::CompleteResult;
using pmdrl::LeaseTable;
using pmdrl::StreamPosition;

struct ModelLease {
  StreamPosition pos;
  std::string actor;
  int64_t deadline = 0;
  bool live = true;
};

class Model {
 public:
  Model(int64_t items_per_epoch, size_t max_remembered)
      : n_(items_per_epoch),
        max_remembered_(max_remembered),
        table_(items_per_epoch, max_remembered) {}

  void Issue(const std::string& actor, int64_t max_n, int64_t ttl) {
    const std::vector<pmdrl::IssuedLease> out = table_.Issue(actor, max_n, now_, ttl, version_);
    FUZZ_CHECK(static_cast<int64_t>(out.size()) == std::max<int64_t>(max_n, 0));
    for (const pmdrl::IssuedLease& l : out) {
      const StreamPosition p{l.epoch, l.index};
      FUZZ_CHECK(all_ids_.insert(l.lease_id).second);  // never issued twice
      FUZZ_CHECK(!done_.count(p));                     // never a done place
      FUZZ_CHECK(l.deadline_ms == now_ + ttl && l.issued_at_version == version_);
      ++issued_;
      if (issued_places_.count(p)) {
        ++reissued_;
      } else {
        FUZZ_CHECK(p == cursor_);  // fresh places in stream order
        issued_places_.insert(p);
        ++cursor_.index;
        if (n_ > 0 && cursor_.index >= n_) cursor_ = {cursor_.epoch + 1, 0};
      }
      leases_[l.lease_id] = {p, actor, l.deadline_ms, true};
      order_.push_back(l.lease_id);
    }
  }

  void Extend(const std::string& actor, const std::vector<std::string>& ids, int64_t ttl) {
    int64_t want = 0;
    for (const std::string& id : ids) {
      auto it = leases_.find(id);
      if (it == leases_.end() || !it->second.live || it->second.actor != actor) continue;
      it->second.deadline = std::max(it->second.deadline, now_ + ttl);
      ++want;
    }
    FUZZ_CHECK(table_.Extend(actor, ids, now_, ttl) == want);
  }

  void ExpireDue() {
    int64_t want = 0;
    for (auto& [id, l] : leases_) {
      if (l.live && l.deadline <= now_) {
        l.live = false;
        ++want;
      }
    }
    expired_ += want;
    FUZZ_CHECK(table_.ExpireDue(now_) == want);
  }

  void Complete(const std::string& id) {
    const CompleteResult r = table_.Complete(id);
    auto it = leases_.find(id);
    if (it == leases_.end()) {
      FUZZ_CHECK(r == CompleteResult::kUnknownLease);
      return;
    }
    if (r == CompleteResult::kUnknownLease) {
      FUZZ_CHECK(!it->second.live);  // only a retired id may be forgotten
      FUZZ_CHECK(max_remembered_ < (size_t{1} << 20));
      leases_.erase(it);
      return;
    }
    if (done_.count(it->second.pos)) {
      FUZZ_CHECK(r == CompleteResult::kDuplicate);
      ++duplicates_;
    } else {
      FUZZ_CHECK(r == CompleteResult::kAccepted);
      done_.insert(it->second.pos);
      ++completed_;
    }
    it->second.live = false;
  }

  void Release(const std::string& id, bool drop) {
    auto it = leases_.find(id);
    const bool live = it != leases_.end() && it->second.live;
    FUZZ_CHECK((drop ? table_.Drop(id) : table_.Release(id)) == live);
    if (!live) return;
    it->second.live = false;
    if (drop) done_.insert(it->second.pos);
  }

  void Reopen(StreamPosition p) {
    const bool was_done = done_.count(p) > 0;
    FUZZ_CHECK(table_.Reopen(p) == was_done);
    done_.erase(p);
  }

  void SaveRestore() {
    const pmdrl::LeaseTableState saved = table_.Save();
    const std::string json = pmdrl::ToJson(saved);
    absl::StatusOr<pmdrl::LeaseTableState> parsed = pmdrl::LeaseStateFromJson(json);
    FUZZ_CHECK(parsed.ok());
    FUZZ_CHECK(pmdrl::ToJson(*parsed) == json);
    table_ = LeaseTable::Restore(*parsed, max_remembered_);
    FUZZ_CHECK(pmdrl::ToJson(table_.Save()) == json);
    // The old ids are unknown to the restored table; the places they held are queued.
    for (auto& [id, l] : leases_) old_ids_.push_back(id);
    leases_.clear();
    order_.clear();
  }

  void CompleteOld(size_t i) {
    if (old_ids_.empty()) return;
    FUZZ_CHECK(table_.Complete(old_ids_[i % old_ids_.size()]) == CompleteResult::kUnknownLease);
  }

  void Check(bool full) {
    int64_t live = 0;
    for (const auto& [id, l] : leases_) live += l.live ? 1 : 0;
    FUZZ_CHECK(table_.InFlight() == live);
    const pmdrl::LeaseCounters& c = table_.counters();
    FUZZ_CHECK(c.issued == issued_ && c.reissued == reissued_ && c.expired == expired_ &&
               c.duplicates == duplicates_ && c.completed == completed_);
    FUZZ_CHECK(table_.cursor() == cursor_);
    if (!full) return;
    std::vector<StreamPosition> want;
    for (const StreamPosition& p : issued_places_) {
      FUZZ_CHECK(table_.IsDone(p) == (done_.count(p) > 0));
      if (!done_.count(p)) want.push_back(p);
    }
    FUZZ_CHECK(!table_.IsDone(cursor_));
    const pmdrl::LeaseTableState s = table_.Save();
    FUZZ_CHECK(s.outstanding == want);  // nothing lost, nothing done still outstanding
    FUZZ_CHECK(table_.Queued() <= static_cast<int64_t>(want.size()));
  }

  std::string PickId(size_t i) const {
    if (order_.empty()) return "L0-none";
    return order_[i % order_.size()];
  }
  std::string ActorOf(const std::string& id) const {
    auto it = leases_.find(id);
    return it == leases_.end() ? "" : it->second.actor;
  }
  bool PickDone(size_t i, StreamPosition* p) const {
    if (done_.empty()) return false;
    auto it = done_.begin();
    std::advance(it, static_cast<long>(i % done_.size()));
    *p = *it;
    return true;
  }
  bool PickIssued(size_t i, StreamPosition* p) const {
    if (issued_places_.empty()) return false;
    auto it = issued_places_.begin();
    std::advance(it, static_cast<long>(i % issued_places_.size()));
    *p = *it;
    return true;
  }
  void Advance(int64_t ms) { now_ += ms; }
  void NextVersion() { ++version_; }

 private:
  const int64_t n_;
  const size_t max_remembered_;
  LeaseTable table_;
  int64_t now_ = 1000;
  int64_t version_ = 0;
  StreamPosition cursor_;
  std::map<std::string, ModelLease> leases_;  // ids issued since the last restore
  std::vector<std::string> order_;            // the same, in issue order
  std::vector<std::string> old_ids_;          // ids from before a restore
  std::set<std::string> all_ids_;
  std::set<StreamPosition> issued_places_, done_;
  int64_t issued_ = 0, reissued_ = 0, expired_ = 0, duplicates_ = 0, completed_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int64_t items_per_epoch = in.ConsumeIntegralInRange<int64_t>(0, 8);
  const size_t max_remembered =
      in.ConsumeBool() ? size_t{1} << 20 : in.ConsumeIntegralInRange<size_t>(0, 6);
  Model m(items_per_epoch, max_remembered);
  static const char* const kActors[] = {"actor-a", "actor-b", "actor-c"};
  int ops = 0;
  int restores = 0;  // a JSON round trip costs as much as dozens of other operations
  while (in.remaining_bytes() > 0 && ops++ < 64) {
    const std::string actor = kActors[in.ConsumeIntegralInRange<int>(0, 2)];
    switch (in.ConsumeIntegralInRange<int>(0, 10)) {
      case 0:
        m.Issue(actor, in.ConsumeIntegralInRange<int64_t>(0, 4),
                in.ConsumeIntegralInRange<int64_t>(1, 60));
        break;
      case 1: {
        std::vector<std::string> ids;
        const int k = in.ConsumeIntegralInRange<int>(0, 3);
        for (int i = 0; i < k; ++i) ids.push_back(m.PickId(in.ConsumeIntegral<uint16_t>()));
        const std::string who = ids.empty() || in.ConsumeBool() ? actor : m.ActorOf(ids[0]);
        m.Extend(who, ids, in.ConsumeIntegralInRange<int64_t>(1, 60));
        break;
      }
      case 2:
        m.ExpireDue();
        break;
      case 3:
      case 4:
        m.Complete(m.PickId(in.ConsumeIntegral<uint16_t>()));
        break;
      case 5:
        m.Release(m.PickId(in.ConsumeIntegral<uint16_t>()), /*drop=*/false);
        break;
      case 6:
        m.Release(m.PickId(in.ConsumeIntegral<uint16_t>()), /*drop=*/true);
        break;
      case 7: {
        StreamPosition p;
        const bool done = in.ConsumeBool();
        if (done ? m.PickDone(in.ConsumeIntegral<uint16_t>(), &p)
                 : m.PickIssued(in.ConsumeIntegral<uint16_t>(), &p)) {
          m.Reopen(p);
        }
        break;
      }
      case 8:
        if (restores++ < 3) m.SaveRestore();
        break;
      case 9:
        m.CompleteOld(in.ConsumeIntegral<uint16_t>());
        break;
      default:
        m.Advance(in.ConsumeIntegralInRange<int64_t>(0, 40));
        if (in.ConsumeBool()) m.NextVersion();
        break;
    }
    m.Check(/*full=*/(ops & 7) == 0);
  }
  m.Check(/*full=*/true);
  return 0;
}
