// Data-parallel learner ranks as real processes (Gloo over loopback), started by
// `pmdrl local --learners N`: a 2-rank run trains and checks its replicas, a dead rank
// stops the others within the collective timeout, with local.restarts a killed rank
// restarts the group from its checkpoint, and a run resumes with another number of ranks.
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::seconds;

struct DpRun {
  fs::path dir, config, run;
};

DpRun MakeRun(const std::string& name) {
  DpRun r;
  r.dir = FreshDir(name);
  r.config = r.dir / "config.yaml";
  r.run = r.dir / "run";
  std::ofstream(r.config) << TestConfig(r.run);
  return r;
}

std::vector<std::string> Local(const DpRun& r, std::vector<std::string> extra) {
  std::vector<std::string> a = {Bin("cli/pmdrl"), "local", "--config", r.config.string()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

TEST(DataParallelCluster, TwoRanksTrainAndAgree) {
  DpRun r = MakeRun("dp2");
  Child local(Local(r, {"--learners", "2", "--learner.updates=8", "--learner.checksum_every=2"}),
              (r.dir / "local.log").string());
  std::optional<int> rc = local.Wait(seconds(420));
  std::string out = ReadAll(r.dir / "local.log");
  ASSERT_TRUE(rc.has_value()) << out;
  ASSERT_EQ(*rc, 0) << out << ReadAll(r.run / "logs" / "learner-1.log");
  auto rows = ReadCsv(r.run / "metrics.csv");
  EXPECT_EQ(rows.back().at("update"), "8");
  // Rank 1 trained every update and stopped when rank 0 said so.
  std::string rank1 = ReadAll(r.run / "logs" / "learner-1.log");
  EXPECT_NE(rank1.find("rank 0 says training is over"), std::string::npos) << rank1;
  std::string prom = ReadAll(r.run / "metrics" / "learner-1.prom");
  EXPECT_EQ(MetricValue(prom, "pmdrl_learner_update"), 8) << prom;
  EXPECT_EQ(ReadAll(r.run / "logs" / "learner.log").find("diverged"), std::string::npos);
}

TEST(DataParallelCluster, DeadRankStopsTheOthers) {
  DpRun r = MakeRun("dpdead");
  Child local(Local(r, {"--learners", "2", "--learner.updates=100000",
                        "--learner.collective_timeout_seconds=5"}),
              (r.dir / "local.log").string());
  ASSERT_TRUE(WaitFor([&] { return ReadCsv(r.run / "metrics.csv").size() >= 3; }, seconds(240)))
      << ReadAll(r.dir / "local.log");
  auto cluster = nlohmann::json::parse(ReadAll(r.run / "cluster.json"));
  ASSERT_EQ(cluster["learners"].size(), 2u);
  pid_t rank1 = cluster["learners"][1]["pid"].get<pid_t>();
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  auto killed = std::chrono::steady_clock::now();
  std::optional<int> rc = local.Wait(seconds(120));
  ASSERT_TRUE(rc.has_value()) << "the cluster hung after a learner rank died";
  EXPECT_NE(*rc, 0);
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_LT(took, 60) << "bounded by the 5 s collective timeout plus shutdown";
  std::string log = ReadAll(r.run / "logs" / "learner.log");
  EXPECT_NE(log.find("another learner rank died"), std::string::npos) << log;
}

// The pid in local.log's "started <name> (pid N" line, or 0 while there is none.
pid_t StartedPid(const fs::path& log, const std::string& name) {
  const std::string text = ReadAll(log);
  const std::string key = "started " + name + " (pid ";
  const size_t at = text.find(key);
  if (at == std::string::npos) return 0;
  return static_cast<pid_t>(std::atoi(text.c_str() + at + key.size()));
}

// With local.restarts, a killed rank takes its peers down and every rank starts again:
// rank 1 killed as it starts (rank 0 waits for it at the rendezvous), then rank 1 again
// (rank 0 then fails its collective) and rank 0 (rank 1 fails) from the last complete
// checkpoint, and the run still ends normally, each place trained once.
TEST(DataParallelCluster, KilledRankRestartsTheGroup) {
  DpRun r = MakeRun("dprestart");
  constexpr int kUpdates = 12;
  Child local(Local(r, {"--learners", "2", "--local.restarts=3",
                        "--learner.updates=" + std::to_string(kUpdates),
                        "--learner.collective_timeout_seconds=5"}),
              (r.dir / "local.log").string());
  // Within milliseconds of its start line, long before it has loaded LibTorch and its
  // model, so before the cluster is up (checked below: the verifiers start after).
  pid_t starting_rank1 = 0;
  ASSERT_TRUE(
      WaitFor([&] { return (starting_rank1 = StartedPid(r.dir / "local.log", "learner-1")) > 1; },
              seconds(60), std::chrono::milliseconds(5)))
      << ReadAll(r.dir / "local.log");
  ASSERT_EQ(kill(starting_rank1, SIGKILL), 0);
  auto pids = [&] {
    auto cluster = nlohmann::json::parse(ReadAll(r.run / "cluster.json"));
    return std::make_pair(cluster["learners"][0]["pid"].get<pid_t>(),
                          cluster["learners"][1]["pid"].get<pid_t>());
  };
  // metrics.csv: the base row, then one per update, each checkpointed (TestConfig).
  auto rows = [&] { return ReadCsv(r.run / "metrics.csv").size(); };
  ASSERT_TRUE(WaitFor([&] { return rows() >= 4; }, seconds(240))) << ReadAll(r.dir / "local.log");
  const auto [rank0, rank1] = pids();
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return pids().second != rank1 && rows() >= 8; }, seconds(240)))
      << ReadAll(r.dir / "local.log");
  const pid_t second_rank0 = pids().first;
  EXPECT_NE(second_rank0, rank0);
  ASSERT_EQ(kill(second_rank0, SIGKILL), 0);
  std::optional<int> rc = local.Wait(seconds(420));
  const std::string out = ReadAll(r.dir / "local.log");
  ASSERT_TRUE(rc.has_value()) << "pmdrl local did not finish\n" << out;
  ASSERT_EQ(*rc, 0) << out;
  const size_t at_startup = out.find(
      "learner-1 was killed (signal 9): restarting all 2 learner ranks from the start (no "
      "checkpoint yet)");
  ASSERT_NE(at_startup, std::string::npos) << out;
  EXPECT_LT(at_startup, out.find("started verifier-0")) << "killed during start-up\n" << out;
  for (const char* killed : {"learner-1", "learner"}) {
    EXPECT_NE(out.find(absl::StrCat(killed,
                                    " was killed (signal 9): restarting all 2 learner "
                                    "ranks from the last complete checkpoint")),
              std::string::npos)
        << killed << "\n"
        << out;
  }
  EXPECT_NE(pids().first, second_rank0);
  EXPECT_EQ(ReadCsv(r.run / "metrics.csv").back().at("update"), std::to_string(kUpdates));
  // The ledger: every trained place once, a full batch (TestConfig's 8) per update.
  std::set<Place> trained;
  ASSERT_NO_FATAL_FAILURE(CheckLedger(r.run, kUpdates, 8, &trained));
}

TEST(DataParallelCluster, ResumesWithAnotherWorldSize) {
  DpRun r = MakeRun("dpresume");
  {
    Child one(Local(r, {"--learner.updates=4"}), (r.dir / "one.log").string());
    std::optional<int> rc = one.Wait(seconds(300));
    ASSERT_TRUE(rc.has_value());
    ASSERT_EQ(*rc, 0) << ReadAll(r.dir / "one.log");
  }
  auto before = ReadCsv(r.run / "metrics.csv");
  ASSERT_EQ(before.back().at("update"), "4");
  Child two(Local(r, {"--learners", "2", "--learner.updates=8", "--resume"}),
            (r.dir / "two.log").string());
  std::optional<int> rc = two.Wait(seconds(300));
  ASSERT_TRUE(rc.has_value());
  ASSERT_EQ(*rc, 0) << ReadAll(r.dir / "two.log");
  auto rows = ReadCsv(r.run / "metrics.csv");
  ASSERT_GT(rows.size(), before.size());
  EXPECT_EQ(rows[before.size()].at("update"), "5");
  EXPECT_EQ(rows[before.size()].at("version"), "5");
  EXPECT_EQ(rows.back().at("update"), "8");
}

}  // namespace
}  // namespace pmdrl
