// Chaos: a `pmdrl local` run (arith, local.restarts on) in which this driver SIGKILLs the
// learner twice (once while it writes a checkpoint), an actor three times and a verifier
// once, at moments drawn from a seed; `pmdrl local` restarts each (the learner resumes
// from its last complete checkpoint). At the end the run must have reached its update
// target, and the books must balance exactly:
//  - ledger.csv lists every trained place once, learner.prompts_per_update per update;
//  - every place below the data cursor of the final checkpoint is exactly one of:
//    trained (in the ledger), buffered (accepted, in buffered_groups.pb), outstanding
//    (to be issued again), or dropped after two rejections (with its groups.csv rows);
//  - so every acked place (an ACK_ACCEPTED row in groups.csv) is one of those.
// The seed comes from $PMDRL_CHAOS_SEED (default 1); $PMDRL_CHAOS_RUNS runs that many
// seeds in a row, seed, seed + 1, ... (the "5 times in a row").
#include <gtest/gtest.h>
#include <sys/inotify.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/str_format.h"
#include "pmdrl/pmdrl.pb.h"
#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kUpdates = 80;
constexpr int kPromptsPerUpdate = 64;  // examples/arith.yaml

struct ClusterPids {
  pid_t learner = -1;
  std::vector<pid_t> actors, verifiers;
};

// The live pids `pmdrl local` lists in cluster.json (rewritten on every change).
ClusterPids ReadPids(const fs::path& run) {
  ClusterPids p;
  try {
    auto j = nlohmann::json::parse(ReadAll(run / "cluster.json"));
    p.learner = j["learner"]["pid"].get<pid_t>();
    for (const char* kind : {"actors", "verifiers"}) {
      for (const auto& c : j[kind]) {
        if (c.contains("alive") && !c["alive"].get<bool>()) continue;
        (std::string(kind) == "actors" ? p.actors : p.verifiers).push_back(c["pid"].get<pid_t>());
      }
    }
  } catch (const std::exception&) {
    p.learner = -1;  // being rewritten; the caller polls again
  }
  return p;
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

int64_t LastUpdate(const fs::path& run) {
  auto rows = ReadCsv(run / "metrics.csv");
  return rows.empty() ? 0 : std::stoll(rows.back().at("update"));
}

// Waits for a checkpoint's temporary folder to appear in run/checkpoints, then SIGKILLs
// `learner` at once. True when the folder is still there after the kill: the learner
// died in the middle of that write.
bool KillDuringCheckpoint(const fs::path& run, pid_t learner, seconds timeout) {
  const fs::path dir = run / "checkpoints";
  if (!WaitFor([&] { return fs::exists(dir); }, timeout)) return false;
  const int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return false;
  inotify_add_watch(fd, dir.c_str(), IN_CREATE | IN_MOVED_TO);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string caught;
  alignas(inotify_event) char buf[4096];
  while (caught.empty() && std::chrono::steady_clock::now() < deadline && Alive(learner)) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) {
      std::this_thread::sleep_for(milliseconds(1));
      continue;
    }
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      const std::string name = ev->len > 0 ? ev->name : "";
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
        kill(learner, SIGKILL);
        caught = name;
        break;
      }
      p += sizeof(inotify_event) + ev->len;
    }
  }
  close(fd);
  if (caught.empty()) return false;
  WaitFor([&] { return !Alive(learner) || kill(learner, 0) != 0; }, seconds(10));
  return fs::exists(dir / caught);
}

std::set<Place> DonePlaces(const nlohmann::json& lease, int64_t* cursor_index) {
  std::set<Place> done;
  const int64_t cursor_epoch = lease["cursor"][0].get<int64_t>();
  EXPECT_EQ(cursor_epoch, 0) << "arith is one endless epoch";
  *cursor_index = lease["cursor"][1].get<int64_t>();
  for (const auto& d : lease["done"]) {
    const int64_t epoch = d["epoch"].get<int64_t>();
    for (int64_t i = 0; i < d["low_water"].get<int64_t>(); ++i) done.insert({epoch, i});
    for (const auto& i : d["above"]) done.insert({epoch, i.get<int64_t>()});
  }
  return done;
}

std::vector<v1::Group> ReadBuffered(const fs::path& checkpoint) {
  const std::string data = ReadAll(checkpoint / "buffered_groups.pb");
  std::vector<v1::Group> groups;
  size_t at = 0;
  while (at + 8 <= data.size()) {
    uint64_t n = 0;
    std::memcpy(&n, data.data() + at, 8);
    at += 8;
    v1::Group g;
    EXPECT_LE(at + n, data.size());
    EXPECT_TRUE(g.ParseFromArray(data.data() + at, static_cast<int>(n)));
    groups.push_back(g);
    at += n;
  }
  EXPECT_EQ(at, data.size()) << "buffered_groups.pb has a torn tail";
  return groups;
}

void RunChaos(uint32_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  const fs::path dir = FreshDir("chaos_" + std::to_string(seed));
  const fs::path run = dir / "run";
  // The arith demo's config from a random policy (about one update a second here), with
  // frequent checkpoints, a small held-out set and short leases (a killed actor's
  // places come back quickly). One learner rank: `pmdrl local` restarts a killed
  // learner only when it is the only rank.
  Child local(
      {Bin("cli/pmdrl"), "local", "--config", Src("examples/arith.yaml"),
       "--model.path=", "--run.dir=" + run.string(), "--run.seed=" + std::to_string(seed),
       "--local.learners=1", "--local.restarts=20", "--learner.updates=" + std::to_string(kUpdates),
       "--learner.max_seconds=0", "--learner.checkpoint_every=3", "--learner.eval_every=1000",
       "--task.eval_size=50", "--learner.lease_ttl_seconds=4"},
      (dir / "local.log").string());
  ASSERT_TRUE(
      WaitFor([&] { return LastUpdate(run) >= 1 && Alive(ReadPids(run).learner); }, seconds(180)))
      << ReadAll(dir / "local.log");

  enum Victim { kLearnerInCheckpoint, kLearner, kActor, kVerifier };
  std::vector<Victim> plan = {kLearnerInCheckpoint, kLearner, kActor, kActor, kActor, kVerifier};
  std::mt19937 rng(seed);
  std::shuffle(plan.begin(), plan.end(), rng);
  bool caught_in_checkpoint = false;
  for (Victim v : plan) {
    std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(500, 3000)(rng)));
    // The previous victim is back: a learner that answers (its update advances) and
    // the full set of actors and verifiers.
    ASSERT_TRUE(WaitFor(
        [&] {
          ClusterPids p = ReadPids(run);
          return Alive(p.learner) && p.actors.size() == 2 && p.verifiers.size() == 2;
        },
        seconds(120)))
        << ReadAll(dir / "local.log");
    ASSERT_LT(LastUpdate(run), kUpdates - 4) << "the run outpaced the driver";
    ClusterPids p = ReadPids(run);
    switch (v) {
      case kLearnerInCheckpoint: {
        // A write is short; try the next checkpoints until one is caught mid-way.
        for (int attempt = 0; attempt < 5 && !caught_in_checkpoint; ++attempt) {
          p = ReadPids(run);
          ASSERT_TRUE(WaitFor([&] { return Alive((p = ReadPids(run)).learner); }, seconds(120)));
          caught_in_checkpoint = KillDuringCheckpoint(run, p.learner, seconds(60));
          ASSERT_TRUE(WaitFor([&] { return Alive(ReadPids(run).learner); }, seconds(120)));
        }
        break;
      }
      case kLearner:
        ASSERT_EQ(kill(p.learner, SIGKILL), 0);
        break;
      case kActor: {
        const pid_t victim = p.actors[rng() % p.actors.size()];
        ASSERT_EQ(kill(victim, SIGKILL), 0);
        break;
      }
      case kVerifier: {
        const pid_t victim = p.verifiers[rng() % p.verifiers.size()];
        ASSERT_EQ(kill(victim, SIGKILL), 0);
        break;
      }
    }
    // Let pmdrl local see the death and restart it before the next one.
    std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_TRUE(caught_in_checkpoint) << "no checkpoint write was interrupted";

  std::optional<int> rc = local.Wait(seconds(420));
  const std::string out = ReadAll(dir / "local.log");
  ASSERT_TRUE(rc.has_value()) << "pmdrl local did not finish\n" << out;
  ASSERT_EQ(*rc, 0) << out;
  EXPECT_EQ(LastUpdate(run), kUpdates);

  // The ledger: every trained place once, a full batch per update.
  std::set<Place> trained;
  ASSERT_NO_FATAL_FAILURE(CheckLedger(run, kUpdates, kPromptsPerUpdate, &trained));

  // The final checkpoint accounts for every place below its cursor exactly once.
  const fs::path last = run / "checkpoints" / absl::StrFormat("update-%06d", kUpdates);
  auto state = nlohmann::json::parse(ReadAll(last / "trainer_state.json"));
  int64_t cursor = 0;
  const std::set<Place> done = DonePlaces(state["lease_state"], &cursor);
  std::set<Place> outstanding, buffered, dropped;
  for (const auto& o : state["lease_state"]["outstanding"]) {
    outstanding.insert({o[0].get<int64_t>(), o[1].get<int64_t>()});
  }
  for (const v1::Group& g : ReadBuffered(last)) {
    EXPECT_TRUE(buffered.insert({g.epoch(), g.index()}).second) << "buffered twice";
  }
  std::map<Place, int> rejected;
  std::set<Place> acked;
  for (const auto& row : ReadCsv(run / "groups.csv")) {
    const Place place{std::stoll(row.at("epoch")), std::stoll(row.at("index"))};
    if (row.at("outcome") == "ACK_REJECTED" && ++rejected[place] == 2) dropped.insert(place);
    if (row.at("outcome") == "ACK_ACCEPTED") acked.insert(place);
  }
  for (int64_t i = 0; i < cursor; ++i) {
    const Place place{0, i};
    const int where = trained.count(place) + buffered.count(place) + outstanding.count(place) +
                      dropped.count(place);
    EXPECT_EQ(where, 1) << "place (0, " << i << "): trained " << trained.count(place)
                        << " buffered " << buffered.count(place) << " outstanding "
                        << outstanding.count(place) << " dropped " << dropped.count(place);
    EXPECT_EQ(done.count(place), 1 - outstanding.count(place)) << "place (0, " << i << ")";
  }
  for (const Place& place : trained) EXPECT_LT(place.second, cursor);
  for (const Place& place : acked) EXPECT_LT(place.second, cursor) << "acked beyond the cursor";

  // The restarts really happened.
  int restarts = 0;
  for (size_t at = out.find("restarting"); at != std::string::npos;
       at = out.find("restarting", at + 1)) {
    ++restarts;
  }
  EXPECT_GE(restarts, 6) << out;
  fs::remove_all(dir);
}

TEST(Chaos, KillsAndRestartsLoseNothingAndTrainNothingTwice) {
  const char* seed_env = std::getenv("PMDRL_CHAOS_SEED");
  const char* runs_env = std::getenv("PMDRL_CHAOS_RUNS");
  const uint32_t seed = seed_env != nullptr ? static_cast<uint32_t>(std::atoi(seed_env)) : 1;
  const int runs = runs_env != nullptr ? std::max(1, std::atoi(runs_env)) : 1;
  for (int r = 0; r < runs && !HasFatalFailure() && !HasFailure(); ++r) {
    RunChaos(seed + static_cast<uint32_t>(r));
  }
}

}  // namespace
}  // namespace pmdrl
