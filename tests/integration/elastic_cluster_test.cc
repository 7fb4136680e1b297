// The arith demo topology natively on loopback - learner, 3 actors, 2 verifiers under
// `pmdrl local` - changed while it trains: a 4th actor is added (SIGUSR1 to the
// launcher), the newest actor is removed (SIGUSR2) and a verifier is killed by pid.
// The run must end normally with every group accounted for.
#include <gtest/gtest.h>
#include <signal.h>

#include <regex>
#include <set>

#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::seconds;

nlohmann::json Cluster(const fs::path& run) {
  std::string text = ReadAll(run / "cluster.json");
  if (text.empty()) return nlohmann::json::object();
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

size_t ActorCount(const fs::path& run) {
  nlohmann::json c = Cluster(run);
  return c.is_object() && c.contains("actors") ? c["actors"].size() : 0;
}

uint64_t LastVersion(const fs::path& run) {
  auto rows = ReadCsv(run / "metrics.csv");
  return rows.empty() ? 0 : std::stoull(rows.back().at("version"));
}

size_t Updates(const fs::path& run) { return ReadCsv(run / "metrics.csv").size(); }

TEST(ElasticCluster, ActorsComeAndGoAndAVerifierDies) {
  fs::path dir = FreshDir("elastic");
  fs::path config = dir / "config.yaml";
  fs::path run = dir / "run";
  std::ofstream(config) << TestConfig(run);
  // The run ends on time, not on an update count, so it is still going whenever the
  // test gets to each step on a busy machine; short leases bring the removed actor's
  // work back quickly.
  Child local({Bin("cli/pmdrl"), "local", "--config", config.string(), "--local.actors=3",
               "--local.verifiers=2", "--learner.updates=1000000", "--learner.max_seconds=45",
               "--learner.lease_ttl_seconds=3", "--learner.checkpoint_every=0",
               "--learner.eval_every=1000"},
              (dir / "local.log").string());
  auto log = [&] { return ReadAll(dir / "local.log"); };

  ASSERT_TRUE(WaitFor([&] { return Updates(run) >= 3 || !local.running(); }, seconds(240)))
      << log();
  ASSERT_TRUE(local.running()) << "pmdrl local ended early\n" << log();
  nlohmann::json cluster = Cluster(run);
  ASSERT_EQ(cluster["actors"].size(), 3u);
  ASSERT_EQ(cluster["verifiers"].size(), 2u);
  const pid_t launcher = cluster["launcher_pid"].get<pid_t>();
  ASSERT_EQ(launcher, local.pid());

  // 1. Add an actor. It must train only with weights at least as new as the learner's
  //    when it was started.
  const uint64_t version_before_add = LastVersion(run);
  ASSERT_EQ(kill(launcher, SIGUSR1), 0);
  ASSERT_TRUE(WaitFor([&] { return ActorCount(run) == 4; }, seconds(30))) << log();
  cluster = Cluster(run);
  const std::string added = cluster["actors"][3]["name"].get<std::string>();
  const pid_t added_pid = cluster["actors"][3]["pid"].get<pid_t>();
  EXPECT_EQ(added, "actor-3");
  EXPECT_NE(log().find("SIGUSR1: added actor-3"), std::string::npos) << log();
  // Its first accepted group (its log says which actor_id and version it registered with).
  const fs::path added_log = run / "logs" / (added + ".log");
  std::smatch m;
  std::string registered_id;
  uint64_t registered_version = 0;
  const std::regex registered(R"(registered as (\S+) \(.*version (\d+))");
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string text = ReadAll(added_log);
        if (!std::regex_search(text, m, registered)) return false;
        registered_id = m[1];
        registered_version = std::stoull(m[2]);
        return true;
      },
      seconds(120)))
      << ReadAll(added_log);
  EXPECT_GE(registered_version, version_before_add);
  auto has_group_from = [&](const std::string& id) {
    for (const auto& g : ReadCsv(run / "groups.csv")) {
      if (g.at("actor_id") == id && g.at("outcome") == "ACK_ACCEPTED") return true;
    }
    return false;
  };
  ASSERT_TRUE(WaitFor([&] { return has_group_from(registered_id); }, seconds(120)))
      << "the added actor never contributed\n"
      << ReadAll(added_log);

  // 2. Remove the newest actor (the one just added): SIGTERM, reaped, gone from
  //    cluster.json.
  ASSERT_EQ(kill(launcher, SIGUSR2), 0);
  ASSERT_TRUE(WaitFor([&] { return ActorCount(run) == 3; }, seconds(30))) << log();
  ASSERT_TRUE(
      WaitFor([&] { return log().find(added + " stopped (") != std::string::npos; }, seconds(30)))
      << log();
  EXPECT_NE(kill(added_pid, 0), 0) << "the removed actor's pid is still there";
  for (const auto& a : Cluster(run)["actors"]) EXPECT_NE(a["name"].get<std::string>(), added);

  // 3. Kill a verifier by its pid: the actors fail over to the other one.
  const pid_t verifier = cluster["verifiers"][1]["pid"].get<pid_t>();
  const std::string verifier_name = cluster["verifiers"][1]["name"].get<std::string>();
  ASSERT_EQ(kill(verifier, SIGTERM), 0);
  ASSERT_TRUE(WaitFor([&] { return log().find(verifier_name + " exited") != std::string::npos; },
                      seconds(30)))
      << log();
  const size_t updates_at_kill = Updates(run);

  std::optional<int> rc = local.Wait(seconds(300));
  ASSERT_TRUE(rc.has_value()) << log();
  ASSERT_EQ(*rc, 0) << log();
  EXPECT_GT(Updates(run), updates_at_kill + 2) << "training went on with one verifier";

  // Every classified group: no place trained twice, sampled with weights at least as
  // new as the lease; the added actor's groups all at >= its registration version.
  auto groups = ReadCsv(run / "groups.csv");
  std::set<std::pair<std::string, std::string>> accepted_places;
  uint64_t accepted = 0, stale = 0, duplicate = 0, from_added = 0, released = 0;
  size_t last_from_killed = 0;  // 1 + the row of the killed verifier's last group
  for (const auto& g : groups) {
    // A place given back untrained (its group went stale in the buffer) may be accepted
    // again: trained at most once means no two ACK_ACCEPTED rows without a release between.
    if (g.at("outcome") == "RELEASED_STALE_IN_BUFFER") {
      EXPECT_EQ(accepted_places.erase({g.at("epoch"), g.at("index")}), 1u)
          << "place (" << g.at("epoch") << ", " << g.at("index") << ") released unaccepted";
      ++released;
      continue;
    }
    const uint64_t v = std::stoull(g.at("policy_version"));
    EXPECT_GE(v, std::stoull(g.at("issued_at_version"))) << g.at("lease_id");
    EXPECT_LE(v, std::stoull(g.at("learner_version"))) << g.at("lease_id");
    const std::string& outcome = g.at("outcome");
    if (outcome == "ACK_ACCEPTED") {
      ++accepted;
      EXPECT_TRUE(accepted_places.insert({g.at("epoch"), g.at("index")}).second)
          << "place (" << g.at("epoch") << ", " << g.at("index") << ") accepted twice, unreleased";
    } else if (outcome == "ACK_STALE") {
      ++stale;
    } else if (outcome == "ACK_DUPLICATE") {
      ++duplicate;
    }
    if (g.at("actor_id") == registered_id) {
      ++from_added;
      EXPECT_GE(v, registered_version) << "the added actor generated before it had the weights";
      EXPECT_GE(v, version_before_add);
    }
    if (g.at("verifier_id") == verifier_name) last_from_killed = (&g - groups.data()) + 1;
  }
  EXPECT_GE(from_added, 1u);
  EXPECT_GT(last_from_killed, 0u) << "the killed verifier had scored nothing";
  // After its last group, the survivor carried the run on alone.
  uint64_t accepted_after_kill = 0;
  for (size_t i = last_from_killed; i < groups.size(); ++i) {
    if (groups[i].at("outcome") == "RELEASED_STALE_IN_BUFFER") continue;  // learner's record
    EXPECT_NE(groups[i].at("verifier_id"), verifier_name);
    if (groups[i].at("outcome") == "ACK_ACCEPTED") ++accepted_after_kill;
  }
  EXPECT_GT(accepted_after_kill, 0u);

  // Nothing lost or counted twice: what the verifiers forwarded (the killed one wrote
  // its counts on SIGTERM) is what the learner classified.
  std::string learner_prom = ReadAll(run / "metrics" / "learner.prom");
  ASSERT_FALSE(learner_prom.empty());
  double forwarded = 0;
  for (const auto& v : cluster["verifiers"]) {
    std::string prom = ReadAll(run / "metrics" / (v["name"].get<std::string>() + ".prom"));
    ASSERT_FALSE(prom.empty()) << v["name"];
    forwarded += MetricValue(prom, "pmdrl_verifier_groups_forwarded_total");
  }
  auto learner_count = [&](const char* outcome) {
    return MetricValue(learner_prom, "pmdrl_learner_groups_total", {{"outcome", outcome}});
  };
  EXPECT_EQ(learner_count("accepted"), static_cast<double>(accepted));
  EXPECT_EQ(learner_count("stale"), static_cast<double>(stale));
  EXPECT_EQ(learner_count("duplicate"), static_cast<double>(duplicate));
  EXPECT_EQ(learner_count("rejected"), 0);
  EXPECT_EQ(MetricValue(learner_prom, "pmdrl_learner_places_released_total",
                        {{"reason", "stale_in_buffer"}}),
            static_cast<double>(released));
  EXPECT_EQ(learner_count("accepted") + learner_count("stale") + learner_count("duplicate") +
                learner_count("rejected"),
            forwarded);
  // The actors that ran to the end dropped no group unacked: the verifier's
  // disappearance was absorbed by failing over.
  for (int i = 0; i < 3; ++i) {
    std::string name = "actor-" + std::to_string(i);
    std::string prom = ReadAll(run / "metrics" / (name + ".prom"));
    ASSERT_FALSE(prom.empty()) << name;
    EXPECT_EQ(MetricValue(prom, "pmdrl_actor_groups_sent_total", {{"status", "unknown"}}), 0)
        << name;
  }
}

}  // namespace
}  // namespace pmdrl
