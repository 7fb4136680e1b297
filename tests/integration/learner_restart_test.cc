// A learner, a verifier and an actor as separate processes on loopback; the learner is
// SIGKILLed mid-run and started again from its checkpoint on the same port (what Docker's
// restart policy does). The same actor process must register with the new coordinator
// and training must go on with it, without the actor being restarted.
#include <gtest/gtest.h>
#include <signal.h>

#include <regex>

#include "tests/free_port.h"
#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::seconds;

constexpr char kToken[] = "learner-restart-token";

// The update of the newest complete checkpoint (checkpoints/latest names its folder).
std::optional<int64_t> CheckpointUpdate(const fs::path& run) {
  std::string name = ReadLine(run / "checkpoints" / "latest");
  if (name.empty()) return std::nullopt;
  std::string manifest = ReadAll(run / "checkpoints" / name / "manifest.json");
  nlohmann::json j = nlohmann::json::parse(manifest, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("update")) return std::nullopt;
  return j["update"].get<int64_t>();
}

// The highest update in metrics.csv rows [from, end).
int64_t MaxUpdate(const fs::path& run, size_t from = 0) {
  auto rows = ReadCsv(run / "metrics.csv");
  int64_t best = -1;
  for (size_t i = from; i < rows.size(); ++i)
    best = std::max<int64_t>(best, std::stoll(rows[i]["update"]));
  return best;
}

TEST(LearnerRestart, TheSameActorRegistersAgainAndTrainingGoesOn) {
  fs::path dir = FreshDir("learner_restart");
  fs::path run = dir / "run";
  fs::path config = dir / "config.yaml";
  std::ofstream(config) << TestConfig(run);
  const std::string learner_addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::string verifier_addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::map<std::string, std::string> env = {{"PMDRL_TOKEN", kToken}};
  // Runs until killed; a checkpoint after every update.
  std::vector<std::string> learner_args = {Bin("learner/pmdrl-learner"),
                                           "--config",
                                           config.string(),
                                           "--learner.listen=" + learner_addr,
                                           "--learner.updates=1000000",
                                           "--learner.eval_every=1000000",
                                           "--learner.checkpoint_every=1",
                                           "--learner.lease_ttl_seconds=5"};
  auto learner = std::make_unique<Child>(learner_args, (dir / "learner-1.log").string(), env);
  Child verifier({Bin("verifier/pmdrl-verifier"), "--config", config.string(),
                  "--verifier.listen=" + verifier_addr, "--verifier.learner=" + learner_addr},
                 (dir / "verifier.log").string(), env);
  Child actor({Bin("actor/pmdrl-actor"), "--config", config.string(), "--actor.name=actor-0",
               "--actor.coordinator=" + learner_addr, "--actor.verifiers=" + verifier_addr},
              (dir / "actor.log").string(), env);
  auto logs = [&] {
    return "--- learner-1\n" + ReadAll(dir / "learner-1.log") + "--- learner-2\n" +
           ReadAll(dir / "learner-2.log") + "--- actor\n" + ReadAll(dir / "actor.log") +
           "--- verifier\n" + ReadAll(dir / "verifier.log");
  };

  // A few updates and a checkpoint of one of them.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::optional<int64_t> ckpt = CheckpointUpdate(run);
        return (ckpt.has_value() && *ckpt >= 2 && MaxUpdate(run) >= 3) || !learner->running() ||
               !actor.running();
      },
      seconds(60)))
      << logs();
  ASSERT_TRUE(learner->running()) << logs();
  ASSERT_TRUE(actor.running()) << logs();
  ASSERT_TRUE(verifier.running()) << logs();

  // SIGKILL: no final checkpoint, no goodbye to the actor.
  const pid_t actor_pid = actor.pid();
  ASSERT_EQ(kill(learner->pid(), SIGKILL), 0);
  ASSERT_TRUE(learner->Wait(seconds(30)).has_value());
  learner.reset();
  const std::optional<int64_t> ckpt = CheckpointUpdate(run);
  ASSERT_TRUE(ckpt.has_value()) << logs();
  const size_t rows_before = ReadCsv(run / "metrics.csv").size();

  learner_args.push_back("--learner.resume=auto");
  learner = std::make_unique<Child>(learner_args, (dir / "learner-2.log").string(), env);

  // The same actor process registers with the new coordinator...
  const std::regex again(R"(the coordinator restarted: registered again as (\S+))");
  std::string new_id;
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string text = ReadAll(dir / "actor.log");
        std::smatch m;
        if (std::regex_search(text, m, again)) new_id = m[1];
        return !new_id.empty() || !actor.running() || !learner->running();
      },
      seconds(60)))
      << logs();
  ASSERT_TRUE(actor.running()) << "the actor exited instead of registering again\n" << logs();
  ASSERT_TRUE(learner->running()) << logs();
  EXPECT_EQ(actor.pid(), actor_pid);
  std::smatch first;
  const std::string actor_log = ReadAll(dir / "actor.log");
  ASSERT_TRUE(std::regex_search(actor_log, first, std::regex(R"(registered as (\S+) \()")));
  EXPECT_NE(first[1].str(), new_id) << "a restarted coordinator issued an old actor_id again";
  EXPECT_NE(ReadAll(dir / "learner-2.log").find("resumed from"), std::string::npos) << logs();

  // ...and the resumed learner trains past its checkpoint with the actor's groups.
  ASSERT_TRUE(WaitFor(
      [&] { return MaxUpdate(run, rows_before) > *ckpt + 3 || !learner->running(); }, seconds(60)))
      << "checkpoint update " << *ckpt << ", last update since the restart "
      << MaxUpdate(run, rows_before) << "\n"
      << logs();
  EXPECT_TRUE(actor.running()) << logs();
  EXPECT_TRUE(learner->running()) << logs();
  EXPECT_EQ(actor.pid(), actor_pid);
  // The groups trained since are the re-registered actor's.
  bool accepted_from_new_id = false;
  for (const auto& g : ReadCsv(run / "groups.csv")) {
    if (g.at("actor_id") == new_id && g.at("outcome") == "ACK_ACCEPTED")
      accepted_from_new_id = true;
  }
  EXPECT_TRUE(accepted_from_new_id) << logs();
}

}  // namespace
}  // namespace pmdrl
