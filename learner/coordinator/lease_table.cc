#include "learner/coordinator/lease_table.h"

#include <algorithm>
#include <exception>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace pmdrl {
namespace {

// Debian's Abseil is built with its own absl::string_view, not std::string_view, so
// heterogeneous lookup needs the conversion spelled out.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace

LeaseTable::LeaseTable(int64_t items_per_epoch, size_t max_remembered)
    : items_per_epoch_(std::max<int64_t>(items_per_epoch, 0)),
      max_remembered_(max_remembered),
      // Ids must not repeat across coordinator restarts (the counter restarts from the
      // checkpoint, the random part does not), so seed from the OS, not from config.
      rng_(std::random_device{}()) {}

std::string LeaseTable::NewLeaseId() {
  return absl::StrFormat("L%d-%08x", next_seq_, static_cast<uint32_t>(rng_()));
}

StreamPosition LeaseTable::NextFresh() {
  StreamPosition p = cursor_;
  ++cursor_.index;
  if (items_per_epoch_ > 0 && cursor_.index >= items_per_epoch_) {
    ++cursor_.epoch;
    cursor_.index = 0;
  }
  return p;
}

bool LeaseTable::IsDone(StreamPosition p) const {
  if (p.epoch < done_below_epoch_) return true;
  auto it = done_.find(p.epoch);
  if (it == done_.end()) return false;
  return p.index < it->second.low_water || it->second.above.contains(p.index);
}

void LeaseTable::MarkDone(StreamPosition p) {
  if (IsDone(p)) return;
  EpochDone& e = done_[p.epoch];
  if (p.index == e.low_water) {
    ++e.low_water;
    // Pull the mark up over the done run that follows, keeping `above` small.
    while (e.above.erase(e.low_water) > 0) ++e.low_water;
  } else {
    e.above.insert(p.index);
  }
  CompactEpochs();
}

void LeaseTable::CompactEpochs() {
  // A finished epoch of a finite stream collapses into done_below_epoch_, but only
  // in order: an earlier epoch may still have places outstanding.
  while (items_per_epoch_ > 0) {
    auto first = done_.find(done_below_epoch_);
    if (first == done_.end() || first->second.low_water < items_per_epoch_) break;
    done_.erase(first);
    ++done_below_epoch_;
  }
}

void LeaseTable::Enqueue(StreamPosition p) {
  if (queued_.insert(p).second) queue_.push_back(p);
}

void LeaseTable::Retire(Record& r, const std::string& id) {
  r.live = false;
  live_.erase(r.seq);
  retired_.push_back(id);
  // May erase `r` itself when max_remembered_ is 0: do not touch it below.
  while (retired_.size() > max_remembered_) {
    leases_.erase(retired_.front());
    retired_.pop_front();
  }
}

std::vector<IssuedLease> LeaseTable::Issue(std::string_view actor_id, int64_t max_n, int64_t now_ms,
                                           int64_t ttl_ms, int64_t version) {
  std::vector<IssuedLease> out;
  while (static_cast<int64_t>(out.size()) < max_n) {
    StreamPosition pos;
    bool from_queue = false;
    // Lazy deletion: entries completed while queued are no longer in queued_.
    while (!queue_.empty() && !from_queue) {
      pos = queue_.front();
      queue_.pop_front();
      from_queue = queued_.erase(pos) > 0;
    }
    if (!from_queue) pos = NextFresh();

    IssuedLease lease{NewLeaseId(), pos.epoch, pos.index, now_ms + ttl_ms, version};
    Record rec{pos, std::string(actor_id), version, lease.deadline_ms, next_seq_};
    live_.emplace(next_seq_, lease.lease_id);
    leases_.emplace(lease.lease_id, std::move(rec));
    ++next_seq_;
    ++counters_.issued;
    if (from_queue) ++counters_.reissued;
    out.push_back(std::move(lease));
  }
  return out;
}

int64_t LeaseTable::Extend(std::string_view actor_id, const std::vector<std::string>& lease_ids,
                           int64_t now_ms, int64_t ttl_ms) {
  int64_t n = 0;
  for (const std::string& id : lease_ids) {
    auto it = leases_.find(id);
    if (it == leases_.end() || !it->second.live || it->second.actor_id != actor_id) continue;
    it->second.deadline_ms = std::max(it->second.deadline_ms, now_ms + ttl_ms);
    ++n;
  }
  return n;
}

int64_t LeaseTable::ExpireDue(int64_t now_ms) {
  std::vector<std::string> due;
  for (const auto& [seq, id] : live_) {
    if (leases_.at(id).deadline_ms <= now_ms) due.push_back(id);
  }
  for (const std::string& id : due) {
    Record& r = leases_.at(id);
    r.expired = true;
    ++counters_.expired;
    if (!IsDone(r.pos)) Enqueue(r.pos);
    Retire(r, id);
  }
  return static_cast<int64_t>(due.size());
}

std::optional<LeaseInfo> LeaseTable::Lookup(std::string_view lease_id) const {
  auto it = leases_.find(AbslView(lease_id));
  if (it == leases_.end()) return std::nullopt;
  const Record& r = it->second;
  return LeaseInfo{r.pos.epoch,   r.pos.index, r.actor_id, r.issued_at_version,
                   r.deadline_ms, r.expired,   r.live,     IsDone(r.pos)};
}

CompleteResult LeaseTable::Complete(std::string_view lease_id) {
  auto it = leases_.find(AbslView(lease_id));
  if (it == leases_.end()) return CompleteResult::kUnknownLease;
  Record& r = it->second;
  CompleteResult result = CompleteResult::kAccepted;
  if (IsDone(r.pos)) {
    ++counters_.duplicates;
    result = CompleteResult::kDuplicate;
  } else {
    MarkDone(r.pos);
    queued_.erase(r.pos);  // its queue_ entry is skipped lazily
    ++counters_.completed;
  }
  // Either way this lease's work has come back: it no longer holds a place in flight.
  if (r.live) Retire(r, it->first);
  return result;
}

bool LeaseTable::Release(std::string_view lease_id) {
  auto it = leases_.find(AbslView(lease_id));
  if (it == leases_.end() || !it->second.live) return false;
  Record& r = it->second;
  if (!IsDone(r.pos)) Enqueue(r.pos);
  Retire(r, it->first);
  return true;
}

bool LeaseTable::Drop(std::string_view lease_id) {
  auto it = leases_.find(AbslView(lease_id));
  if (it == leases_.end() || !it->second.live) return false;
  Record& r = it->second;
  MarkDone(r.pos);
  queued_.erase(r.pos);  // its queue_ entry is skipped lazily
  Retire(r, it->first);
  return true;
}

bool LeaseTable::Reopen(StreamPosition p) {
  if (!IsDone(p)) return false;
  // Whole epochs collapsed into done_below_epoch_ come back as explicit, fully done
  // epochs first, so that p's epoch has an entry to take p out of.
  while (done_below_epoch_ > p.epoch) {
    --done_below_epoch_;
    done_[done_below_epoch_].low_water = items_per_epoch_;
  }
  EpochDone& e = done_[p.epoch];
  if (p.index < e.low_water) {
    // The done run [p.index + 1, low_water) stays done, now listed in `above`.
    for (int64_t i = p.index + 1; i < e.low_water; ++i) e.above.insert(i);
    e.low_water = p.index;
  } else {
    e.above.erase(p.index);
  }
  Enqueue(p);
  return true;
}

LeaseTableState LeaseTable::Save() const {
  LeaseTableState s;
  s.items_per_epoch = items_per_epoch_;
  s.cursor = cursor_;
  s.done_below_epoch = done_below_epoch_;
  for (const auto& [epoch, e] : done_) {
    LeaseTableState::EpochDone d{epoch, e.low_water, {e.above.begin(), e.above.end()}};
    std::sort(d.above.begin(), d.above.end());
    s.done.push_back(std::move(d));
  }
  s.outstanding.assign(queued_.begin(), queued_.end());
  for (const auto& [seq, id] : live_) {
    const Record& r = leases_.at(id);
    if (!IsDone(r.pos)) s.outstanding.push_back(r.pos);
  }
  std::sort(s.outstanding.begin(), s.outstanding.end());
  s.outstanding.erase(std::unique(s.outstanding.begin(), s.outstanding.end()), s.outstanding.end());
  s.counters = counters_;
  s.next_lease_seq = next_seq_;
  return s;
}

LeaseTable LeaseTable::Restore(const LeaseTableState& state, size_t max_remembered) {
  LeaseTable t(state.items_per_epoch, max_remembered);
  t.cursor_ = state.cursor;
  t.done_below_epoch_ = state.done_below_epoch;
  for (const LeaseTableState::EpochDone& d : state.done) {
    t.done_[d.epoch].low_water = std::max(t.done_[d.epoch].low_water, d.low_water);
  }
  for (const LeaseTableState::EpochDone& d : state.done) {
    for (int64_t index : d.above) t.MarkDone({d.epoch, index});  // normalises
  }
  t.CompactEpochs();
  for (const StreamPosition& p : state.outstanding) {  // sorted: oldest places first
    if (!t.IsDone(p)) t.Enqueue(p);
  }
  t.counters_ = state.counters;
  t.next_seq_ = std::max<int64_t>(state.next_lease_seq, 1);
  return t;
}

// ---- JSON ----

namespace {

using nlohmann::json;

json PosJson(const StreamPosition& p) { return json::array({p.epoch, p.index}); }

// nlohmann's get<int64_t>() of a float outside int64's range is undefined behaviour
// (fuzz/checkpoint_readers_fuzz): every number here must be an integer.
int64_t Int(const json& j) {
  if (!j.is_number_integer()) throw std::invalid_argument("numbers must be integers");
  return j.get<int64_t>();
}

StreamPosition PosFromJson(const json& j) {
  if (!j.is_array() || j.size() != 2) throw std::invalid_argument("a place must be [epoch, index]");
  return {Int(j.at(0)), Int(j.at(1))};
}

absl::Status Check(bool ok, std::string_view what) {
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(absl::StrCat("lease state: ", std::string(what)));
}

absl::Status ValidateState(const LeaseTableState& s) {
  const int64_t n = s.items_per_epoch;
  auto in_stream = [&](StreamPosition p) {
    return p.epoch >= 0 && p.index >= 0 && (n == 0 ? p.epoch == 0 : p.index < n) && p < s.cursor;
  };
  if (auto st = Check(n >= 0, "items_per_epoch must be >= 0"); !st.ok()) return st;
  if (auto st = Check(s.cursor.epoch >= 0 && s.cursor.index >= 0 &&
                          (n == 0 ? s.cursor.epoch == 0 : s.cursor.index < n),
                      absl::StrCat("cursor [", s.cursor.epoch, ", ", s.cursor.index,
                                   "] is outside the stream"));
      !st.ok()) {
    return st;
  }
  if (auto st = Check(s.done_below_epoch >= 0 && s.done_below_epoch <= s.cursor.epoch,
                      "done_below_epoch must lie in [0, cursor epoch]");
      !st.ok()) {
    return st;
  }
  int64_t prev_epoch = -1;
  for (const auto& d : s.done) {
    const std::string where = absl::StrCat("done epoch ", d.epoch);
    if (auto st = Check(
            d.epoch > prev_epoch && d.epoch >= s.done_below_epoch && d.epoch <= s.cursor.epoch,
            absl::StrCat(where, ": epochs must ascend within ",
                         "[done_below_epoch, cursor epoch]"));
        !st.ok()) {
      return st;
    }
    prev_epoch = d.epoch;
    if (auto st =
            Check(d.low_water >= 0 && (d.low_water == 0 || in_stream({d.epoch, d.low_water - 1})),
                  absl::StrCat(where, ": low_water ", d.low_water, " out of range"));
        !st.ok()) {
      return st;
    }
    int64_t prev = d.low_water - 1;
    for (int64_t index : d.above) {
      if (auto st = Check(index > prev && in_stream({d.epoch, index}),
                          absl::StrCat(where, ": index ", index,
                                       " must ascend, lie above low_water and be issued"));
          !st.ok()) {
        return st;
      }
      prev = index;
    }
  }
  // Outstanding places: issued, not done, strictly ascending.
  LeaseTable probe = LeaseTable::Restore({n, s.cursor, s.done_below_epoch, s.done, {}, {}, 1});
  for (size_t i = 0; i < s.outstanding.size(); ++i) {
    const StreamPosition& p = s.outstanding[i];
    const std::string where = absl::StrCat("outstanding [", p.epoch, ", ", p.index, "]");
    if (auto st = Check(in_stream(p), absl::StrCat(where, " was never issued")); !st.ok())
      return st;
    if (auto st = Check(i == 0 || s.outstanding[i - 1] < p, absl::StrCat(where, " out of order"));
        !st.ok()) {
      return st;
    }
    if (auto st = Check(!probe.IsDone(p), absl::StrCat(where, " is also done")); !st.ok())
      return st;
  }
  const LeaseCounters& c = s.counters;
  if (auto st = Check(c.issued >= 0 && c.reissued >= 0 && c.expired >= 0 && c.duplicates >= 0 &&
                          c.completed >= 0 && s.next_lease_seq >= 1,
                      "counters must be >= 0 and next_lease_seq >= 1");
      !st.ok()) {
    return st;
  }
  return absl::OkStatus();
}

}  // namespace

std::string ToJson(const LeaseTableState& s) {
  json done = json::array();
  for (const auto& d : s.done) {
    done.push_back({{"epoch", d.epoch}, {"low_water", d.low_water}, {"above", d.above}});
  }
  json outstanding = json::array();
  for (const auto& p : s.outstanding) outstanding.push_back(PosJson(p));
  json j = {
      {"items_per_epoch", s.items_per_epoch},
      {"cursor", PosJson(s.cursor)},
      {"done_below_epoch", s.done_below_epoch},
      {"done", std::move(done)},
      {"outstanding", std::move(outstanding)},
      {"counters",
       {{"issued", s.counters.issued},
        {"reissued", s.counters.reissued},
        {"expired", s.counters.expired},
        {"duplicates", s.counters.duplicates},
        {"completed", s.counters.completed}}},
      {"next_lease_seq", s.next_lease_seq},
  };
  return j.dump();
}

absl::StatusOr<LeaseTableState> LeaseStateFromJson(std::string_view text) {
  LeaseTableState s;
  try {
    const json j = json::parse(text);
    s.items_per_epoch = Int(j.at("items_per_epoch"));
    s.cursor = PosFromJson(j.at("cursor"));
    s.done_below_epoch = Int(j.at("done_below_epoch"));
    for (const json& d : j.at("done")) {
      LeaseTableState::EpochDone e{Int(d.at("epoch")), Int(d.at("low_water")), {}};
      if (!d.at("above").is_array()) throw std::invalid_argument("above must be a list");
      for (const json& index : d.at("above")) e.above.push_back(Int(index));
      s.done.push_back(std::move(e));
    }
    for (const json& p : j.at("outstanding")) s.outstanding.push_back(PosFromJson(p));
    const json& c = j.at("counters");
    s.counters.issued = Int(c.at("issued"));
    s.counters.reissued = Int(c.at("reissued"));
    s.counters.expired = Int(c.at("expired"));
    s.counters.duplicates = Int(c.at("duplicates"));
    s.counters.completed = Int(c.at("completed"));
    s.next_lease_seq = Int(j.at("next_lease_seq"));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("lease state: bad JSON: ", e.what()));
  }
  if (absl::Status st = ValidateState(s); !st.ok()) return st;
  return s;
}

int64_t LeaseTable::InFlightOf(std::string_view actor_id) const {
  int64_t n = 0;
  for (const auto& [seq, id] : live_) {
    auto it = leases_.find(id);
    if (it != leases_.end() && it->second.actor_id == actor_id) ++n;
  }
  return n;
}

}  // namespace pmdrl
