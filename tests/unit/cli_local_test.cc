#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "cli/child_process.h"
#include "cli/local.h"
#include "cli/local_console.h"
#include "cli/local_ports.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<LocalArgs> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "local");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseLocalArgs(static_cast<int>(argv.size()), argv.data());
}

// Index of `flag` in `argv`, or -1.
int IndexOf(const std::vector<std::string>& argv, const std::string& flag) {
  auto it = std::find(argv.begin(), argv.end(), flag);
  return it == argv.end() ? -1 : static_cast<int>(it - argv.begin());
}

TEST(ParseLocalArgsTest, SplitsConfigResumeAndOverrides) {
  absl::StatusOr<LocalArgs> a =
      Parse({"--config", "x.yaml", "--resume", "--learner.updates=3", "--local.actors", "1"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->config_path, "x.yaml");
  EXPECT_TRUE(a->resume);
  EXPECT_FALSE(a->help);
  EXPECT_THAT(a->overrides, ElementsAre("learner.updates=3", "local.actors=1"));

  a = Parse({"--config=y.yaml", "-h"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->config_path, "y.yaml");
  EXPECT_TRUE(a->help);
  EXPECT_FALSE(a->resume);
}

TEST(ParseLocalArgsTest, RejectsPositionalAndMissingValue) {
  EXPECT_FALSE(Parse({"stray"}).ok());
  absl::StatusOr<LocalArgs> a = Parse({"--learner.updates"});
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("learner.updates"));
}

TEST(ParseLocalArgsTest, LearnersInBothForms) {
  absl::StatusOr<LocalArgs> a = Parse({"--learners", "3", "--learner.updates=2"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->learners, 3);
  // Not an override: the children must not see it.
  EXPECT_THAT(a->overrides, ElementsAre("learner.updates=2"));

  a = Parse({"--learners=2"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->learners, 2);
  EXPECT_TRUE(a->overrides.empty());

  a = Parse({});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->learners, 0);  // not given: local.learners decides
}

TEST(ParseLocalArgsTest, RejectsBadLearners) {
  for (std::vector<std::string> bad : {std::vector<std::string>{"--learners", "0"},
                                       {"--learners=-1"},
                                       {"--learners=x"},
                                       {"--learners", "2x"},
                                       {"--learners="},
                                       {"--learners"}}) {
    absl::StatusOr<LocalArgs> a = Parse(bad);
    ASSERT_FALSE(a.ok()) << bad.back();
    EXPECT_THAT(std::string(a.status().message()), HasSubstr("--learners")) << bad.back();
  }
}

TEST(PickPortsTest, BasePortGivesConsecutivePorts) {
  absl::StatusOr<ClusterPorts> p = PickPorts(41000, 2, 3);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->learner, 41000);
  EXPECT_EQ(p->learner_metrics, 41001);
  EXPECT_THAT(p->verifier, ElementsAre(41002, 41004));
  EXPECT_THAT(p->verifier_metrics, ElementsAre(41003, 41005));
  EXPECT_THAT(p->actor_metrics, ElementsAre(41006, 41007, 41008));
}

TEST(PickPortsTest, BasePortMustLeaveRoom) {
  absl::StatusOr<ClusterPorts> p = PickPorts(65530, 4, 4);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("local.base_port"));
}

TEST(PickPortsTest, OneLearnerHasNoRankPorts) {
  absl::StatusOr<ClusterPorts> p = PickPorts(41000, 2, 3, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->rendezvous, 0);
  EXPECT_TRUE(p->learner_rank_metrics.empty());
  EXPECT_THAT(p->actor_metrics, ElementsAre(41006, 41007, 41008));
}

TEST(PickPortsTest, ExtraRanksComeAfterTheOthers) {
  absl::StatusOr<ClusterPorts> p = PickPorts(41000, 2, 3, 3);
  ASSERT_TRUE(p.ok()) << p.status();
  // The single-learner layout is unchanged...
  EXPECT_EQ(p->learner, 41000);
  EXPECT_EQ(p->learner_metrics, 41001);
  EXPECT_THAT(p->verifier, ElementsAre(41002, 41004));
  EXPECT_THAT(p->actor_metrics, ElementsAre(41006, 41007, 41008));
  // ...and the store and the ranks' metrics follow it.
  EXPECT_EQ(p->rendezvous, 41009);
  EXPECT_THAT(p->learner_rank_metrics, ElementsAre(41010, 41011));

  // The extra ports count against the room below 65535.
  EXPECT_TRUE(PickPorts(65535 - 8, 2, 3, 1).ok());
  absl::StatusOr<ClusterPorts> tight = PickPorts(65535 - 8, 2, 3, 2);
  ASSERT_FALSE(tight.ok());
  EXPECT_THAT(std::string(tight.status().message()), HasSubstr("local.base_port"));

  EXPECT_FALSE(PickPorts(41000, 1, 1, 0).ok());
}

TEST(PickPortsTest, FreePortsWithRanksAreDistinct) {
  absl::StatusOr<ClusterPorts> p = PickPorts(0, 1, 2, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->learner_rank_metrics.size(), 3u);
  std::set<int> all = {p->learner, p->learner_metrics, p->rendezvous};
  for (int v : p->verifier) all.insert(v);
  for (int v : p->verifier_metrics) all.insert(v);
  for (int v : p->actor_metrics) all.insert(v);
  for (int v : p->learner_rank_metrics) all.insert(v);
  EXPECT_EQ(all.size(), 3u + 2 + 2 + 3);
  EXPECT_GT(*all.begin(), 0);
}

TEST(PickPortsTest, FreePortsAreDistinct) {
  absl::StatusOr<ClusterPorts> p = PickPorts(0, 3, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  std::set<int> all = {p->learner, p->learner_metrics};
  for (int v : p->verifier) all.insert(v);
  for (int v : p->verifier_metrics) all.insert(v);
  for (int v : p->actor_metrics) all.insert(v);
  EXPECT_EQ(all.size(), 2u + 3 * 2 + 4);
  EXPECT_GT(*all.begin(), 0);
  EXPECT_LE(*all.rbegin(), 65535);
}

ClusterPlan SamplePlan() {
  ClusterPlan plan;
  plan.learner_bin = "/b/pmdrl-learner";
  plan.verifier_bin = "/b/pmdrl-verifier";
  plan.actor_bin = "/b/pmdrl-actor";
  plan.config_path = "/c/arith.yaml";
  plan.overrides = {"learner.updates=5", "learner.listen=0.0.0.0:1", "actor.name=evil"};
  plan.token_file = "/r/token";
  plan.ports = *PickPorts(42000, 2, 2);
  return plan;
}

TEST(CommandTest, LearnerFlagsComeAfterUserOverrides) {
  ClusterPlan plan = SamplePlan();
  std::vector<std::string> argv = LearnerCommand(plan);
  ASSERT_GE(argv.size(), 3u);
  EXPECT_EQ(argv[0], "/b/pmdrl-learner");
  EXPECT_EQ(argv[1], "--config");
  EXPECT_EQ(argv[2], "/c/arith.yaml");
  int user = IndexOf(argv, "--learner.listen=0.0.0.0:1");
  int ours = IndexOf(argv, "--learner.listen=127.0.0.1:42000");
  ASSERT_GE(user, 0);
  ASSERT_GE(ours, 0);
  EXPECT_LT(user, ours);  // later flags win
  EXPECT_GE(IndexOf(argv, "--learner.updates=5"), 0);
  EXPECT_GE(IndexOf(argv, "--learner.metrics_port=42001"), 0);
  EXPECT_GE(IndexOf(argv, "--run.token_file=/r/token"), 0);
  EXPECT_EQ(IndexOf(argv, "--learner.resume=auto"), -1);
  plan.resume = true;
  EXPECT_EQ(LearnerCommand(plan).back(), "--learner.resume=auto");
}

// The run's certificates reach every child (learner ranks, verifiers, actors) when the
// launcher made them, and nothing TLS is passed when it did not (local.tls=false, or the
// user's own run.tls_* travel with the config and overrides).
TEST(CommandTest, EveryChildGetsTheRunsCertificates) {
  ClusterPlan plan = SamplePlan();
  plan.learners = 2;
  plan.ports = *PickPorts(42000, 2, 2, 2);
  auto all = [&] {
    return std::vector<std::vector<std::string>>{LearnerCommand(plan), LearnerRankCommand(plan, 1),
                                                 VerifierCommand(plan, 0), ActorCommand(plan, 1)};
  };
  for (const auto& argv : all()) {
    for (const auto& a : argv) EXPECT_EQ(a.rfind("--run.tls_", 0), std::string::npos) << a;
  }
  plan.tls_cert = "/r/tls/node.crt";
  plan.tls_key = "/r/tls/node.key";
  plan.tls_ca = "/r/tls/ca.crt";
  for (const auto& argv : all()) {
    EXPECT_GE(IndexOf(argv, "--run.tls_cert=/r/tls/node.crt"), 0) << argv[0];
    EXPECT_GE(IndexOf(argv, "--run.tls_key=/r/tls/node.key"), 0) << argv[0];
    EXPECT_GE(IndexOf(argv, "--run.tls_ca=/r/tls/ca.crt"), 0) << argv[0];
  }
}

TEST(CommandTest, VerifierAndActorAddressTheCluster) {
  ClusterPlan plan = SamplePlan();
  std::vector<std::string> v = VerifierCommand(plan, 1);
  EXPECT_EQ(v[0], "/b/pmdrl-verifier");
  EXPECT_GE(IndexOf(v, "--verifier.name=verifier-1"), 0);
  EXPECT_GE(IndexOf(v, "--verifier.listen=127.0.0.1:42004"), 0);
  EXPECT_GE(IndexOf(v, "--verifier.learner=127.0.0.1:42000"), 0);
  EXPECT_GE(IndexOf(v, "--verifier.metrics_port=42005"), 0);

  std::vector<std::string> a = ActorCommand(plan, 1);
  EXPECT_EQ(a[0], "/b/pmdrl-actor");
  int user = IndexOf(a, "--actor.name=evil");
  int ours = IndexOf(a, "--actor.name=actor-1");
  ASSERT_GE(user, 0);
  ASSERT_GT(ours, user);
  EXPECT_GE(IndexOf(a, "--actor.coordinator=127.0.0.1:42000"), 0);
  EXPECT_GE(IndexOf(a, "--actor.verifiers=127.0.0.1:42002,127.0.0.1:42004"), 0);
  EXPECT_GE(IndexOf(a, "--actor.metrics_port=42007"), 0);
}

TEST(CommandTest, SingleLearnerGetsNoRankFlags) {
  ClusterPlan plan = SamplePlan();
  ASSERT_EQ(plan.learners, 1);
  for (const std::string& a : LearnerCommand(plan)) {
    EXPECT_FALSE(a.rfind("--learner.rank", 0) == 0) << a;
    EXPECT_FALSE(a.rfind("--learner.world_size", 0) == 0) << a;
    EXPECT_FALSE(a.rfind("--learner.rendezvous", 0) == 0) << a;
  }
  EXPECT_EQ(LearnerRankCommand(plan, 0), LearnerCommand(plan));
}

ClusterPlan ThreeRankPlan() {
  ClusterPlan plan = SamplePlan();
  plan.learners = 3;
  plan.overrides.push_back("learner.metrics_port=7");
  plan.overrides.push_back("learner.rank=9");
  plan.ports = *PickPorts(42000, 2, 2, 3);  // rendezvous 42008, ranks' metrics 42009, 42010
  return plan;
}

TEST(CommandTest, RankZeroServesAndJoinsTheRendezvous) {
  ClusterPlan plan = ThreeRankPlan();
  std::vector<std::string> argv = LearnerCommand(plan);
  EXPECT_EQ(argv[0], "/b/pmdrl-learner");
  int user_rank = IndexOf(argv, "--learner.rank=9");
  int rank = IndexOf(argv, "--learner.rank=0");
  ASSERT_GE(user_rank, 0);
  ASSERT_GT(rank, user_rank);
  EXPECT_GT(IndexOf(argv, "--learner.listen=127.0.0.1:42000"),
            IndexOf(argv, "--learner.listen=0.0.0.0:1"));
  EXPECT_GE(IndexOf(argv, "--learner.metrics_port=42001"), 0);
  EXPECT_GT(IndexOf(argv, "--learner.world_size=3"), user_rank);
  EXPECT_GT(IndexOf(argv, "--learner.rendezvous=127.0.0.1:42008"), user_rank);
  EXPECT_EQ(LearnerRankCommand(plan, 0), argv);
  plan.resume = true;
  EXPECT_EQ(LearnerCommand(plan).back(), "--learner.resume=auto");
}

TEST(CommandTest, OtherRanksOnlyJoinTheCollectives) {
  ClusterPlan plan = ThreeRankPlan();
  for (int r : {1, 2}) {
    std::vector<std::string> argv = LearnerRankCommand(plan, r);
    ASSERT_GE(argv.size(), 3u);
    EXPECT_EQ(argv[0], "/b/pmdrl-learner");
    EXPECT_EQ(argv[1], "--config");
    EXPECT_GE(IndexOf(argv, "--run.token_file=/r/token"), 0);
    EXPECT_GE(IndexOf(argv, "--learner.updates=5"), 0);

    // The user's overrides come first, the launcher's per-rank flags last.
    int last_user = IndexOf(argv, "--learner.rank=9");
    ASSERT_GE(last_user, 0);
    EXPECT_LT(IndexOf(argv, "--learner.listen=0.0.0.0:1"), last_user);
    EXPECT_LT(IndexOf(argv, "--learner.metrics_port=7"), last_user);
    std::vector<std::string> ours = {
        "--learner.rank=" + std::to_string(r), "--learner.world_size=3",
        "--learner.rendezvous=127.0.0.1:42008", "--learner.listen=127.0.0.1:0",
        "--learner.metrics_port=" + std::to_string(42008 + r)};
    for (const std::string& flag : ours) {
      EXPECT_GT(IndexOf(argv, flag), last_user) << flag;
    }
    EXPECT_EQ(std::vector<std::string>(argv.end() - ours.size(), argv.end()), ours);
    // Not rank 0's serving address.
    EXPECT_EQ(IndexOf(argv, "--learner.listen=127.0.0.1:42000"), -1);
    EXPECT_EQ(IndexOf(argv, "--learner.metrics_port=42001"), -1);
  }
  plan.resume = true;
  EXPECT_EQ(LearnerRankCommand(plan, 2).back(), "--learner.resume=auto");
}

TEST(CommandTest, NoConfigFileMeansNoConfigFlag) {
  ClusterPlan plan = SamplePlan();
  plan.config_path.clear();
  EXPECT_EQ(IndexOf(LearnerCommand(plan), "--config"), -1);
}

class FindBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ =
        std::filesystem::temp_directory_path() / ("pmdrl_local_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(root_ / "cli");
    std::filesystem::create_directories(root_ / "learner");
    std::filesystem::create_directories(root_ / "bin");
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void MakeFile(const std::filesystem::path& p, bool executable) {
    std::ofstream(p) << "#!/bin/sh\n";
    chmod(p.c_str(), executable ? 0755 : 0644);
  }

  std::filesystem::path root_;
};

TEST_F(FindBinaryTest, PrefersEnvDirThenBuildTree) {
  MakeFile(root_ / "learner" / "pmdrl-learner", true);
  absl::StatusOr<std::string> found =
      FindBinary("pmdrl-learner", "learner", (root_ / "cli").string(), "");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, (root_ / "learner" / "pmdrl-learner").string());

  MakeFile(root_ / "bin" / "pmdrl-learner", true);
  found =
      FindBinary("pmdrl-learner", "learner", (root_ / "cli").string(), (root_ / "bin").string());
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(*found, (root_ / "bin" / "pmdrl-learner").string());
}

TEST_F(FindBinaryTest, MissingOrNotExecutableIsAClearError) {
  MakeFile(root_ / "learner" / "pmdrl-learner", false);
  absl::StatusOr<std::string> found =
      FindBinary("pmdrl-learner", "learner", (root_ / "cli").string(), (root_ / "bin").string());
  ASSERT_FALSE(found.ok());
  std::string message(found.status().message());
  EXPECT_THAT(message, HasSubstr("pmdrl-learner"));
  EXPECT_THAT(message, HasSubstr("PMDRL_BIN_DIR"));
  EXPECT_THAT(message, HasSubstr((root_ / "learner" / "pmdrl-learner").string()));
}

TEST(DescribeWaitStatusTest, ExitCodesAndSignals) {
  pid_t pid = fork();
  if (pid == 0) _exit(3);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_EQ(DescribeWaitStatus(status), "exit code 3");

  pid = fork();
  if (pid == 0) {
    pause();
    _exit(0);
  }
  kill(pid, SIGKILL);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_EQ(DescribeWaitStatus(status), "signal 9");
}

TEST(FormatTest, ProgressLine) {
  v1::StatusResponse s;
  s.set_update(12);
  s.set_mean_reward(0.25);
  s.set_eval_accuracy(0.456);
  s.set_trained_tokens_per_second(1234.4);
  s.set_live_actors(2);
  s.set_elapsed_seconds(35.2);
  EXPECT_EQ(FormatProgress(s, 100),
            "update 12/100  reward 0.250  eval 45.6%  tokens/s 1234  actors 2  elapsed 35 s");
  s.set_eval_accuracy(-1);
  EXPECT_THAT(FormatProgress(s, 100), HasSubstr("eval -  "));
}

TEST(FormatTest, DemoLine) {
  v1::StatusResponse s;
  s.set_update(100);
  s.set_base_accuracy(0.2);
  s.set_final_accuracy(0.637);
  s.set_elapsed_seconds(123.6);
  EXPECT_EQ(FormatDemoLine(s),
            "demo: base accuracy 20.0% -> final accuracy 63.7% (100 updates, 124 s)");
  s.set_base_accuracy(-1);
  EXPECT_EQ(FormatDemoLine(s),
            "demo: base accuracy n/a -> final accuracy 63.7% (100 updates, 124 s)");
}

}  // namespace
}  // namespace pmdrl
