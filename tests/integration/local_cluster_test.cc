// The whole loop on one machine: `pmdrl local` starts a learner, 2 verifiers and 2
// actors as real processes talking gRPC on loopback. These tests check the run's
// bookkeeping from the files and metrics the processes leave behind.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "common/auth.h"
#include "common/rpc.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::seconds;

struct LocalRun {
  fs::path dir;
  fs::path config;
};

LocalRun MakeRun(const std::string& name, const std::string& extra = "") {
  LocalRun r;
  r.dir = FreshDir(name);
  r.config = r.dir / "config.yaml";
  std::ofstream(r.config) << TestConfig(r.dir / "run", extra);
  return r;
}

std::vector<std::string> LocalArgs(const LocalRun& r, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {Bin("cli/pmdrl"), "local", "--config", r.config.string()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

TEST(LocalCluster, VersionsAndAccounting) {
  LocalRun r = MakeRun("accounting");
  Child local(LocalArgs(r), (r.dir / "local.log").string());
  std::optional<int> rc = local.Wait(seconds(420));
  std::string out = ReadAll(r.dir / "local.log");
  ASSERT_TRUE(rc.has_value()) << "pmdrl local did not finish\n" << out;
  ASSERT_EQ(*rc, 0) << out;
  EXPECT_NE(out.find("demo: base accuracy"), std::string::npos) << out;
  fs::path run = r.dir / "run";

  // Per-update metrics, a curve, and a row for every update 0..4.
  auto rows = ReadCsv(run / "metrics.csv");
  ASSERT_GE(rows.size(), 5u);
  EXPECT_EQ(rows.front().at("update"), "0");
  EXPECT_EQ(rows.back().at("update"), "4");
  EXPECT_TRUE(fs::exists(run / "curve.svg"));
  for (const auto& row : rows) {
    if (row.at("update") == "0" || row.at("logprob_mismatch").empty()) continue;
    // Groups stamped with the learner's current version are re-scored by the learner
    // with exactly those weights: a wrong stamp would show here.
    EXPECT_LT(std::stod(row.at("logprob_mismatch")), 1e-3) << "update " << row.at("update");
  }

  // Every classified group, in arrival order.
  auto groups = ReadCsv(run / "groups.csv");
  ASSERT_GE(groups.size(), 32u);
  std::map<std::string, uint64_t> last_version;
  std::set<std::pair<std::string, std::string>> accepted_places;
  uint64_t accepted = 0, stale = 0, duplicate = 0;
  for (const auto& g : groups) {
    // A place given back untrained (stale in the buffer) may be accepted again.
    if (g.at("outcome") == "RELEASED_STALE_IN_BUFFER") {
      EXPECT_EQ(accepted_places.erase({g.at("epoch"), g.at("index")}), 1u) << "released unaccepted";
      continue;
    }
    uint64_t v = std::stoull(g.at("policy_version"));
    uint64_t issued = std::stoull(g.at("issued_at_version"));
    uint64_t learner = std::stoull(g.at("learner_version"));
    // Sampled with weights at least as new as the learner's when the lease was issued.
    EXPECT_GE(v, issued) << g.at("lease_id");
    EXPECT_LE(v, learner);
    // An actor's versions never go backwards.
    auto it = last_version.find(g.at("actor_id"));
    if (it != last_version.end()) {
      EXPECT_GE(v, it->second) << g.at("actor_id");
    }
    last_version[g.at("actor_id")] = v;
    const std::string& outcome = g.at("outcome");
    if (outcome == "ACK_ACCEPTED") {
      ++accepted;
      EXPECT_TRUE(accepted_places.insert({g.at("epoch"), g.at("index")}).second)
          << "place accepted twice, unreleased";
    } else if (outcome == "ACK_STALE") {
      ++stale;
    } else if (outcome == "ACK_DUPLICATE") {
      ++duplicate;
    }
  }
  // (Which actors contributed depends on timing: a short run may finish before the
  // second actor has loaded its model.)
  EXPECT_GE(last_version.size(), 1u);

  // Nothing lost or counted twice: what the verifiers forwarded is what the learner
  // classified, each counted in /metrics.
  std::string learner_prom = ReadAll(run / "metrics" / "learner.prom");
  double forwarded = 0;
  for (const char* v : {"verifier-0", "verifier-1"}) {
    std::string prom = ReadAll(run / "metrics" / (std::string(v) + ".prom"));
    ASSERT_FALSE(prom.empty()) << v;
    forwarded += MetricValue(prom, "pmdrl_verifier_groups_forwarded_total");
  }
  double m_accepted =
      MetricValue(learner_prom, "pmdrl_learner_groups_total", {{"outcome", "accepted"}});
  double m_stale = MetricValue(learner_prom, "pmdrl_learner_groups_total", {{"outcome", "stale"}});
  double m_dup =
      MetricValue(learner_prom, "pmdrl_learner_groups_total", {{"outcome", "duplicate"}});
  EXPECT_EQ(m_accepted, static_cast<double>(accepted));
  EXPECT_EQ(m_stale, static_cast<double>(stale));
  EXPECT_EQ(m_dup, static_cast<double>(duplicate));
  double m_rejected =
      MetricValue(learner_prom, "pmdrl_learner_groups_total", {{"outcome", "rejected"}});
  EXPECT_EQ(duplicate, 0u);
  EXPECT_EQ(m_rejected, 0) << "a well-behaved cluster sends nothing the learner rejects";
  EXPECT_EQ(m_accepted + m_stale + m_dup + m_rejected, forwarded);
  EXPECT_GE(m_accepted, 4 * 8) << "4 updates of 8 groups";
}

// After each update, every actor's next batch uses the newest version: groups leased
// after version v was published are sampled at >= v. (Checked above through
// issued_at_version; here with one actor per verifier and strict staleness.)
TEST(LocalCluster, StrictOnPolicyRun) {
  LocalRun r = MakeRun("onpolicy", "");
  Child local(LocalArgs(r, {"--learner.max_staleness=0", "--learner.updates=3"}),
              (r.dir / "local.log").string());
  std::optional<int> rc = local.Wait(seconds(420));
  ASSERT_TRUE(rc.has_value());
  ASSERT_EQ(*rc, 0) << ReadAll(r.dir / "local.log");
  auto groups = ReadCsv(r.dir / "run" / "groups.csv");
  for (const auto& g : groups) {
    if (g.at("outcome") != "ACK_ACCEPTED") continue;
    EXPECT_EQ(g.at("policy_version"), g.at("learner_version"))
        << "with max_staleness 0 an accepted group was sampled by the current weights";
  }
}

// Leases an actor holds, from the coordinator's GetStatus, over one channel kept open
// (a fresh mutual-TLS channel per question would be slower than a lease's life).
class LeaseProbe {
 public:
  explicit LeaseProbe(const fs::path& run) {
    auto cluster = nlohmann::json::parse(ReadAll(run / "cluster.json"));
    absl::StatusOr<std::string> token = LoadToken((run / "token").string());
    EXPECT_TRUE(token.ok()) << token.status();
    token_ = token.value_or("");
    // `pmdrl local` runs mutual TLS by default: this client shows the run's certificate.
    TlsFiles tls;
    if (cluster.contains("tls")) {
      tls = {cluster["tls"]["cert"].get<std::string>(), cluster["tls"]["key"].get<std::string>(),
             cluster["tls"]["ca"].get<std::string>()};
    }
    if (!ConfigureTransportSecurity(tls).ok()) return;
    stub_ = v1::Coordinator::NewStub(
        MakeChannel("127.0.0.1:" + std::to_string(cluster["learner"]["port"].get<int>())));
  }

  // The leases of the actor named `actor_name`, or -1 if GetStatus failed or does not
  // list it.
  int64_t HeldBy(const std::string& actor_name) {
    if (stub_ == nullptr) return -1;
    grpc::ClientContext ctx;
    AddBearer(&ctx, token_);
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::StatusResponse status;
    if (!stub_->GetStatus(&ctx, v1::GetStatusRequest(), &status).ok()) return -1;
    for (const auto& a : status.actors()) {
      if (a.actor_id().rfind(actor_name + "#", 0) == 0) return a.leases_in_flight();
    }
    return -1;
  }

 private:
  std::string token_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

// Runs a shell command (bounded by `timeout` inside it), returns stdout and stderr.
std::string Shell(const std::string& command) {
  std::string out;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

// The learner of a default `pmdrl local` run speaks mutual TLS only: `openssl s_client`
// with the run's certificate completes a verified handshake, while a plaintext client
// and a TLS client without a certificate are refused.
void ExpectLearnerPortIsMutualTls(const fs::path& run) {
  auto cluster = nlohmann::json::parse(ReadAll(run / "cluster.json"));
  ASSERT_TRUE(cluster.contains("tls")) << "pmdrl local runs TLS by default: " << cluster.dump();
  const std::string ca = cluster["tls"]["ca"], cert = cluster["tls"]["cert"],
                    key = cluster["tls"]["key"];
  const std::string address = "127.0.0.1:" + std::to_string(cluster["learner"]["port"].get<int>());
  const std::string handshake =
      Shell("timeout 60 openssl s_client -connect " + address + " -CAfile " + ca + " -cert " +
            cert + " -key " + key + " -alpn h2 -brief </dev/null");
  EXPECT_NE(handshake.find("CONNECTION ESTABLISHED"), std::string::npos) << handshake;
  EXPECT_NE(handshake.find("Verification: OK"), std::string::npos) << handshake;

  absl::StatusOr<std::string> token = LoadToken((run / "token").string());
  ASSERT_TRUE(token.ok()) << token.status();
  auto status_over = [&](std::shared_ptr<grpc::ChannelCredentials> credentials) {
    auto stub = v1::Coordinator::NewStub(grpc::CreateChannel(address, credentials));
    grpc::ClientContext ctx;
    AddBearer(&ctx, *token);
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::StatusResponse status;
    return stub->GetStatus(&ctx, v1::GetStatusRequest(), &status);
  };
  EXPECT_FALSE(status_over(grpc::InsecureChannelCredentials()).ok())
      << "a plaintext client was answered";
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = ReadAll(ca);
  EXPECT_FALSE(status_over(grpc::SslCredentials(no_cert)).ok())
      << "a client without a certificate was answered";
  grpc::SslCredentialsOptions with_cert = no_cert;
  with_cert.pem_cert_chain = ReadAll(cert);
  with_cert.pem_private_key = ReadAll(key);
  const grpc::Status ok = status_over(grpc::SslCredentials(with_cert));
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

TEST(LocalCluster, SigkillActorTrainingGoesOn) {
  // Strictly on-policy and one actor's batch larger than a rollout batch: whichever
  // actor leases holds every prompt of the next batch until it delivers.
  LocalRun r = MakeRun("killactor", "");
  // The run ends on time (learner.max_seconds), not on an update count, so it is still
  // going whenever the actor is caught, however fast this machine is.
  Child local(LocalArgs(r, {"--learner.updates=1000000", "--learner.max_seconds=60",
                            "--learner.lease_ttl_seconds=2", "--learner.max_staleness=0",
                            "--learner.checkpoint_every=0", "--actor.prompts_per_batch=16"}),
              (r.dir / "local.log").string());
  fs::path run = r.dir / "run";
  ASSERT_TRUE(WaitFor([&] { return ReadCsv(run / "metrics.csv").size() >= 2; }, seconds(240)))
      << ReadAll(r.dir / "local.log");
  ExpectLearnerPortIsMutualTls(run);
  auto cluster = nlohmann::json::parse(ReadAll(run / "cluster.json"));
  pid_t victim = cluster["actors"][0]["pid"].get<pid_t>();
  ASSERT_GT(victim, 1);
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    // The learner executed itself again with OpenMP's passive wait (UsePassiveOpenMpWait),
    // keeping the pid that cluster.json names; the actor keeps libgomp's default.
    const pid_t learner = cluster["learner"]["pid"].get<pid_t>();
    std::string learner_env =
        "\n" + ReadAll(fs::path("/proc") / std::to_string(learner) / "environ");
    std::replace(learner_env.begin(), learner_env.end(), '\0', '\n');
    EXPECT_NE(learner_env.find("\nOMP_WAIT_POLICY=passive\n"), std::string::npos) << learner_env;
    EXPECT_EQ(ReadAll(fs::path("/proc") / std::to_string(victim) / "environ").find("OMP_WAIT"),
              std::string::npos);
  }
  // The other actor is frozen meanwhile, so every lease goes to the victim: on a busy
  // machine the other actor could otherwise win every batch while the victim is caught.
  ASSERT_EQ(cluster["actors"].size(), 2u);
  const pid_t other = cluster["actors"][1]["pid"].get<pid_t>();
  ASSERT_GT(other, 1);
  ASSERT_EQ(kill(other, SIGSTOP), 0);
  // Whatever happens below, neither actor is left stopped (its SIGTERM would wait).
  struct Continue {
    pid_t a, b;
    ~Continue() {
      kill(a, SIGCONT);
      kill(b, SIGCONT);
    }
  } continue_both{victim, other};
  // Catch the actor holding leases, freeze it, and check that it still holds them once
  // what it had already sent has been classified; then kill it: those leases can only
  // come back through expiry and re-issue. (A lease of this tiny model lives a few
  // milliseconds in a cycle of ~100 ms, so the probe asks often.)
  LeaseProbe probe(run);
  int64_t held = 0;
  const auto give_up = std::chrono::steady_clock::now() + seconds(25);
  while (held <= 0 && std::chrono::steady_clock::now() < give_up) {
    if (probe.HeldBy("actor-0") <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (kill(victim, SIGSTOP) != 0) break;  // gone: reported below
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    held = probe.HeldBy("actor-0");
    if (held <= 0) kill(victim, SIGCONT);
  }
  kill(other, SIGCONT);
  ASSERT_GT(held, 0) << "never caught actor-0 holding a lease";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const int64_t update_at_kill = std::stoll(ReadCsv(run / "metrics.csv").back().at("update"));
  std::optional<int> rc = local.Wait(seconds(420));
  std::string out = ReadAll(r.dir / "local.log");
  ASSERT_TRUE(rc.has_value()) << out;
  ASSERT_EQ(*rc, 0) << out;
  EXPECT_NE(out.find("actor-0 exited (signal 9)"), std::string::npos) << out;
  auto rows = ReadCsv(run / "metrics.csv");
  EXPECT_GT(std::stoll(rows.back().at("update")), update_at_kill + 5) << "training went on";
  std::string prom = ReadAll(run / "metrics" / "learner.prom");
  EXPECT_GE(MetricValue(prom, "pmdrl_learner_leases_expired_total"), held) << prom;
  EXPECT_GE(MetricValue(prom, "pmdrl_learner_leases_reissued_total"), held) << prom;
}

TEST(LocalCluster, LearnerKilledAndResumed) {
  LocalRun r = MakeRun("resume", "");
  fs::path run = r.dir / "run";
  {
    Child local(LocalArgs(r, {"--learner.updates=30"}), (r.dir / "local1.log").string());
    ASSERT_TRUE(
        // A checkpoint of update 2 or later (older ones are pruned: learner.keep_checkpoints).
        WaitFor(
            [&] {
              const std::string latest = ReadAll(run / "checkpoints" / "latest");
              return latest.rfind("update-", 0) == 0 && std::atoll(latest.c_str() + 7) >= 2;
            },
            seconds(300)))
        << ReadAll(r.dir / "local1.log");
    auto cluster = nlohmann::json::parse(ReadAll(run / "cluster.json"));
    pid_t learner = cluster["learner"]["pid"].get<pid_t>();
    ASSERT_EQ(kill(learner, SIGKILL), 0);
    ASSERT_LT(std::stoll(ReadCsv(run / "metrics.csv").back().at("update")), 30)
        << "killed too late";
    std::optional<int> rc = local.Wait(seconds(120));
    ASSERT_TRUE(rc.has_value());
    EXPECT_NE(*rc, 0) << "a dead learner fails the run";
  }
  std::string latest = ReadLine(run / "checkpoints" / "latest");
  auto saved = nlohmann::json::parse(ReadAll(run / "checkpoints" / latest / "trainer_state.json"));
  int64_t saved_update = saved["update"].get<int64_t>();
  uint64_t saved_version = saved["version"].get<uint64_t>();
  int64_t saved_cursor = saved["lease_state"]["cursor"][1].get<int64_t>();
  ASSERT_GE(saved_update, 2);
  auto rows_before = ReadCsv(run / "metrics.csv");

  Child again(LocalArgs(r, {"--learner.updates=30", "--resume"}), (r.dir / "local2.log").string());
  std::optional<int> rc = again.Wait(seconds(420));
  std::string out = ReadAll(r.dir / "local2.log");
  ASSERT_TRUE(rc.has_value()) << out;
  ASSERT_EQ(*rc, 0) << out;
  std::string log = ReadAll(run / "logs" / "learner.log");
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_NE(log.find("data cursor (0, " + std::to_string(saved_cursor) + ")"), std::string::npos)
      << log;
  // The run continues at the saved update and version. The resume cut metrics.csv back
  // to the checkpoint (rows of updates trained after it were rolled back with the
  // weights), so the file lists updates 0..30 once each, in order, and the row after
  // the saved update is update saved+1 with version saved+1.
  auto rows = ReadCsv(run / "metrics.csv");
  ASSERT_GE(rows_before.size(), static_cast<size_t>(saved_update + 1));
  ASSERT_EQ(rows.size(), 31u);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(std::stoll(rows[i].at("update")), static_cast<int64_t>(i)) << "row " << i;
  }
  const size_t first_new = static_cast<size_t>(saved_update + 1);
  EXPECT_EQ(std::stoull(rows[first_new].at("version")), saved_version + 1);
  EXPECT_EQ(rows.back().at("update"), "30");
  auto final_state =
      nlohmann::json::parse(ReadAll(run / "checkpoints" / "update-000030" / "trainer_state.json"));
  EXPECT_GE(final_state["lease_state"]["cursor"][1].get<int64_t>(), saved_cursor);
}

}  // namespace
}  // namespace pmdrl
