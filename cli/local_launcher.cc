#include "cli/local_launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cli/child_process.h"
#include "cli/local_console.h"
#include "cli/local_ports.h"
#include "cli/local_tls.h"
#include "cli/plot.h"
#include "common/auth.h"
#include "common/rpc.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "learner/training/checkpoint.h"
#include "nlohmann/json.hpp"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Writes `token` to `path` readable by the owner only (also when the file existed).
absl::Status WriteTokenFile(const std::string& path, const std::string& token) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  std::string line = token + "\n";
  bool ok = fchmod(fd, 0600) == 0 &&
            write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ok = (close(fd) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string ExeDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return exe.parent_path().string();
}

// Appends --learner.resume=auto to a learner's argv unless it is there already.
void AddResumeFlag(std::vector<std::string>* argv) {
  if (std::find(argv->begin(), argv->end(), "--learner.resume=auto") == argv->end()) {
    argv->push_back("--learner.resume=auto");
  }
}

// One run of `pmdrl local`. Owns the child processes it starts: it signals only
// their pids, reaps every one of them before Run returns (the destructor SIGKILLs and
// reaps any left by an early return), and is the only waitpid caller for them.
class Launcher {
 public:
  Launcher(Config config, LocalArgs args)
      : config_(std::move(config)),
        args_(std::move(args)),
        restarts_left_(config_.local.restarts) {}
  ~Launcher() { KillAll(); }

  int Run();

 private:
  enum class Outcome { kFinished, kSignal, kFailed };

  absl::Status Prepare();
  // Certificates of the run (cli/local_tls.h) unless local.tls is false or run.tls_*
  // name files, and this process's transport security set to match.
  absl::Status PrepareTls();
  absl::StatusOr<Child> Start(const std::string& name, std::vector<std::string> argv, int port,
                              int metrics_port);
  // Polls GetStatus until it answers. kFinished here means "ready". A learner (or rank)
  // SIGKILLed meanwhile is restarted as in Supervise, while local.restarts allows.
  Outcome WaitForLearner();
  Outcome Supervise();
  // wait_for_ready: wait (up to the timeout) for the connection instead of failing
  // at once while it is down.
  absl::StatusOr<v1::StatusResponse> GetStatus(int timeout_ms, bool wait_for_ready);
  // Reaps exited children and reports them, restarting killed ones while local.restarts
  // allows (see Restart); returns false when the learner exited and was not restarted.
  bool CheckChildren();
  // Starts `c` again after it was killed by a signal (not by us: we reap our own), when
  // local.restarts has some left: an actor or verifier as it was, the learner (one rank
  // only) with learner.resume=auto once a checkpoint exists. Never once the launcher
  // itself was asked to stop. False: not restarted.
  bool Restart(Child& c);
  // Several learner ranks live and die together: no collective goes on without every
  // rank. When one was killed by a signal and local.restarts has some left, SIGKILLs the
  // others and starts every rank again (learner.resume=auto once a checkpoint exists),
  // which costs one restart. True: restarted; false: nothing to do; an error: a rank
  // could not be started. `starting` (the ranks are still loading): SIGKILL only (kill
  // -9, the OOM killer); another signal then is a crash that would come again.
  absl::StatusOr<bool> RestartKilledLearnerGroup(bool starting);
  // Whether run.dir holds a complete checkpoint for a restarted learner to resume from.
  bool HasCheckpoint() const;
  // A fresh GetStatus channel to a restarted rank 0.
  void ReconnectToLearner();
  // Reaps learner ranks >= 1. An exit with code 0 is normal (rank 0 ends them at the
  // end of training); any other exit is reported with its log's tail and returns false.
  bool CheckLearnerRanks();
  void WriteClusterJson();
  // Serves pending SIGUSR1 / SIGUSR2 requests: starts actors / stops the newest ones.
  void ScaleActors();
  void AddActor();
  void RemoveNewestActor();
  // Reaps removed actors; SIGKILLs one still running `grace` after its SIGTERM.
  void ReapRetired(std::chrono::seconds grace);
  int RunningActors() const;
  // SIGTERM, wait up to `grace`, then SIGKILL; reaps every member.
  void StopGroup(std::vector<Child*> group, std::chrono::seconds grace);
  void StopAll();
  void KillAll();
  void Summarise();

  Config config_;
  LocalArgs args_;
  Console console_;
  ClusterPlan plan_;
  fs::path run_dir_;
  std::string token_;
  TlsFiles tls_;                      // what the children use (all empty: plaintext)
  Child learner_;                     // rank 0
  std::vector<Child> learner_ranks_;  // ranks 1..N-1, [r - 1] for rank r
  std::vector<Child> verifiers_, actors_;
  // Actors removed by SIGUSR2: SIGTERMed at `since`, reaped in the supervise loop.
  struct Retired {
    Child child;
    Clock::time_point since;
  };
  std::vector<Retired> retired_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  v1::StatusResponse last_status_;
  int64_t restarts_left_ = 0;  // local.restarts still unused
  bool warned_no_actors_ = false;
  bool warned_no_verifiers_ = false;
};

absl::Status Launcher::Prepare() {
  std::string env_bin_dir = std::getenv("PMDRL_BIN_DIR") ? std::getenv("PMDRL_BIN_DIR") : "";
  std::string exe_dir = ExeDir();
  absl::StatusOr<std::string> learner =
      FindBinary("pmdrl-learner", "learner", exe_dir, env_bin_dir);
  if (!learner.ok()) return learner.status();
  absl::StatusOr<std::string> verifier =
      FindBinary("pmdrl-verifier", "verifier", exe_dir, env_bin_dir);
  if (!verifier.ok()) return verifier.status();
  absl::StatusOr<std::string> actor = FindBinary("pmdrl-actor", "actor", exe_dir, env_bin_dir);
  if (!actor.ok()) return actor.status();
  plan_.learner_bin = *learner;
  plan_.verifier_bin = *verifier;
  plan_.actor_bin = *actor;

  std::error_code ec;
  run_dir_ = fs::absolute(config_.run.dir, ec);
  fs::create_directories(run_dir_ / "logs", ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", (run_dir_ / "logs").string(), ": ", ec.message()));
  }
  if (!args_.config_path.empty()) plan_.config_path = fs::absolute(args_.config_path).string();
  plan_.overrides = args_.overrides;
  plan_.resume = args_.resume;
  plan_.learners = static_cast<int>(config_.local.learners);

  absl::StatusOr<ClusterPorts> ports =
      PickPorts(config_.local.base_port, static_cast<int>(config_.local.verifiers),
                static_cast<int>(config_.local.actors), plan_.learners);
  if (!ports.ok()) return ports.status();
  plan_.ports = *ports;

  token_ = RandomToken();
  plan_.token_file = (run_dir_ / "token").string();
  if (absl::Status s = WriteTokenFile(plan_.token_file, token_); !s.ok()) return s;
  return PrepareTls();
}

absl::Status Launcher::PrepareTls() {
  // The user's own files (run.tls_*) reach the children through the config and the
  // overrides; otherwise, by default, the run gets certificates of its own.
  TlsFiles tls{config_.run.tls_cert, config_.run.tls_key, config_.run.tls_ca};
  if (tls.cert.empty() && config_.local.tls) {
    absl::StatusOr<TlsFiles> made = MakeLocalCertificates((run_dir_ / "tls").string());
    if (!made.ok()) return made.status();
    tls = *made;
    plan_.tls_cert = tls.cert;
    plan_.tls_key = tls.key;
    plan_.tls_ca = tls.ca;
  }
  // Our own GetStatus channel is a client of the learner like any other.
  if (absl::Status s = ConfigureTransportSecurity(tls); !s.ok()) return s;
  tls_ = tls;
  if (tls.cert.empty()) {
    console_.Info("gRPC in plaintext (local.tls=false)");
  } else {
    console_.Info("gRPC over {} TLS; certificates: {}", tls.ca.empty() ? "server-only" : "mutual",
                  fs::path(tls.cert).parent_path().string());
  }
  return absl::OkStatus();
}

absl::StatusOr<Child> Launcher::Start(const std::string& name, std::vector<std::string> argv,
                                      int port, int metrics_port) {
  Child child;
  child.name = name;
  child.port = port;
  child.metrics_port = metrics_port;
  child.log_path = (run_dir_ / "logs" / (name + ".log")).string();
  child.argv = argv;
  absl::StatusOr<pid_t> pid =
      Spawn(std::move(argv), ChildEnvironment(token_), child.log_path, "pmdrl local");
  if (!pid.ok()) {
    return absl::Status(pid.status().code(),
                        absl::StrCat("starting ", name, ": ", pid.status().message()));
  }
  child.pid = *pid;
  child.alive = true;
  console_.Info("started {} (pid {}{}), log {}", name, child.pid,
                port ? absl::StrCat(", port ", port) : "", child.log_path);
  return child;
}

absl::StatusOr<v1::StatusResponse> Launcher::GetStatus(int timeout_ms, bool wait_for_ready) {
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(wait_for_ready);
  AddBearer(&ctx, token_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::GetStatusRequest request;
  v1::StatusResponse response;
  grpc::Status s = stub_->GetStatus(&ctx, request, &response);
  if (!s.ok()) return ToAbsl(s);
  return response;
}

Launcher::Outcome Launcher::WaitForLearner() {
  // Not MakeChannel: the learner is still starting, and gRPC's default reconnect
  // backoff (1 s, growing 1.6x) would add seconds to start-up. Loopback, tiny
  // messages: quick retries and default limits are right here.
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  channel_ = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", learner_.port),
                                       ClientCredentials(), channel_args);
  stub_ = v1::Coordinator::NewStub(channel_);
  // Every rank loads the model before rank 0 can serve; on a small machine they
  // compete for the cores, so allow more time per extra rank.
  const int timeout_s = 60 + 30 * static_cast<int>(learner_ranks_.size());
  Clock::time_point deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (true) {
    // A learner SIGKILLed while it loads (local.restarts) starts again, as it would
    // later: with several ranks all of them, since the others wait for it at the
    // rendezvous. Another signal this early is a crash that would only come again.
    absl::StatusOr<bool> regrouped = RestartKilledLearnerGroup(/*starting=*/true);
    if (!regrouped.ok()) {
      console_.Error("{}", std::string(regrouped.status().message()));
      return Outcome::kFailed;
    }
    if (*regrouped) deadline = Clock::now() + std::chrono::seconds(timeout_s);
    if (!CheckLearnerRanks()) return Outcome::kFailed;
    if (Reap(learner_)) {
      if (plan_.learners == 1 && WIFSIGNALED(learner_.wait_status) &&
          WTERMSIG(learner_.wait_status) == SIGKILL && Restart(learner_)) {
        deadline = Clock::now() + std::chrono::seconds(timeout_s);
        continue;
      }
      console_.Error("learner exited during start-up ({}); last lines of {}:\n{}",
                     DescribeWaitStatus(learner_.wait_status), learner_.log_path,
                     LogTail(learner_.log_path, 20));
      return Outcome::kFailed;
    }
    absl::StatusOr<v1::StatusResponse> status = GetStatus(1000, /*wait_for_ready=*/true);
    if (status.ok()) {
      last_status_ = *status;
      return Outcome::kFinished;
    }
    spdlog::debug("learner not ready yet: {}", status.status().ToString());
    if (status.status().code() != absl::StatusCode::kUnavailable &&
        status.status().code() != absl::StatusCode::kDeadlineExceeded) {
      console_.Error("learner GetStatus failed: {}", status.status().ToString());
      return Outcome::kFailed;
    }
    if (Clock::now() > deadline) {
      console_.Error(
          "learner did not answer GetStatus on port {} within {} s; last lines of {}:\n{}",
          learner_.port, timeout_s, learner_.log_path, LogTail(learner_.log_path, 20));
      return Outcome::kFailed;
    }
    if (SleepOrSignal(250)) return Outcome::kSignal;
  }
}

bool Launcher::CheckChildren() {
  bool changed = false;
  for (std::vector<Child>* group : {&verifiers_, &actors_}) {
    for (Child& c : *group) {
      if (Reap(c)) {
        console_.Warn("{} exited ({}); training continues", c.name,
                      DescribeWaitStatus(c.wait_status));
        Restart(c);
        changed = true;
      }
    }
  }
  ReapRetired(std::chrono::seconds(15));
  if (changed) WriteClusterJson();
  auto all_dead = [](const std::vector<Child>& g) {
    for (const Child& c : g) {
      if (c.alive) return false;
    }
    return !g.empty();
  };
  if (!warned_no_actors_ && all_dead(actors_)) {
    warned_no_actors_ = true;
    console_.Warn("every actor has exited: no new rollouts will arrive");
  }
  if (!warned_no_verifiers_ && all_dead(verifiers_)) {
    warned_no_verifiers_ = true;
    console_.Warn("every verifier has exited: no rollouts can be scored");
  }
  if (Reap(learner_) && plan_.learners == 1 && Restart(learner_)) WriteClusterJson();
  return learner_.alive;
}

bool Launcher::Restart(Child& c) {
  // After Ctrl-C the terminal's SIGINT may have killed a child that had no handler yet:
  // the cluster is stopping, nothing starts again.
  if (!WIFSIGNALED(c.wait_status) || restarts_left_ <= 0 || LauncherStopSignal() != 0) {
    return false;
  }
  std::vector<std::string> argv = c.argv;
  if (&c == &learner_ && HasCheckpoint()) AddResumeFlag(&argv);
  --restarts_left_;
  console_.Warn("restarting {} ({} of local.restarts left)", c.name, restarts_left_);
  absl::StatusOr<Child> again = Start(c.name, std::move(argv), c.port, c.metrics_port);
  if (!again.ok()) {
    console_.Error("{}", std::string(again.status().message()));
    return false;
  }
  c = *std::move(again);
  if (&c == &learner_) ReconnectToLearner();
  return true;
}

bool Launcher::HasCheckpoint() const { return FindCheckpoint(run_dir_.string(), "auto").ok(); }

void Launcher::ReconnectToLearner() {
  // A channel of its own to the new process, with MakeChannel's settings: measured
  // here, the start-up channel's (100 ms connect attempts) never completed a TLS
  // handshake with a learner restarted under a running cluster ("Handshake read
  // failed"), while MakeChannel's did.
  channel_ = MakeChannel(absl::StrCat("127.0.0.1:", learner_.port));
  stub_ = v1::Coordinator::NewStub(channel_);
}

absl::StatusOr<bool> Launcher::RestartKilledLearnerGroup(bool starting) {
  if (learner_ranks_.empty() || restarts_left_ <= 0 || LauncherStopSignal() != 0) return false;
  std::vector<Child*> ranks = {&learner_};
  for (Child& c : learner_ranks_) ranks.push_back(&c);
  // Peeked, not reaped: when no rank was killed, CheckLearnerRanks and CheckChildren
  // judge the exits as before. A rank killed first makes its peers fail their
  // collective and exit with an error; the killed one decides.
  const Child* killed = nullptr;
  int signal = 0;
  for (const Child* c : ranks) {
    signal = PeekKillSignal(*c);
    if (signal != 0) {
      killed = c;
      break;
    }
  }
  if (killed == nullptr || (starting && signal != SIGKILL)) return false;
  const std::string killed_name = killed->name;
  for (Child* c : ranks) KillAndReap(*c);
  --restarts_left_;
  const bool resume = HasCheckpoint();
  console_.Warn(
      "{} was killed (signal {}): restarting all {} learner ranks {} ({} of "
      "local.restarts left)",
      killed_name, signal, ranks.size(),
      resume ? "from the last complete checkpoint" : "from the start (no checkpoint yet)",
      restarts_left_);
  for (Child* c : ranks) {
    std::vector<std::string> argv = c->argv;
    if (resume) AddResumeFlag(&argv);
    absl::StatusOr<Child> again = Start(c->name, std::move(argv), c->port, c->metrics_port);
    if (!again.ok()) return again.status();
    *c = *std::move(again);
  }
  ReconnectToLearner();
  return true;
}

bool Launcher::CheckLearnerRanks() {
  bool ok = true;
  for (Child& c : learner_ranks_) {
    if (!Reap(c)) continue;
    int st = c.wait_status;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      console_.Info("{} exited ({})", c.name, DescribeWaitStatus(st));
      continue;
    }
    console_.Error(
        "learner rank {} ({}) exited before training finished ({}); last lines of "
        "{}:\n{}",
        &c - learner_ranks_.data() + 1, c.name, DescribeWaitStatus(st), c.log_path,
        LogTail(c.log_path, 20));
    ok = false;
  }
  return ok;
}

Launcher::Outcome Launcher::Supervise() {
  int failures = 0;
  while (true) {
    absl::StatusOr<bool> regrouped = RestartKilledLearnerGroup(/*starting=*/false);
    if (!regrouped.ok()) {
      console_.Error("{}", std::string(regrouped.status().message()));
      return Outcome::kFailed;
    }
    if (*regrouped) WriteClusterJson();
    if (!CheckLearnerRanks()) return Outcome::kFailed;
    if (!CheckChildren()) {
      console_.Error("learner exited before training finished ({}); last lines of {}:\n{}",
                     DescribeWaitStatus(learner_.wait_status), learner_.log_path,
                     LogTail(learner_.log_path, 20));
      return Outcome::kFailed;
    }
    ScaleActors();
    absl::StatusOr<v1::StatusResponse> status = GetStatus(2000, /*wait_for_ready=*/false);
    if (status.ok()) {
      if (failures >= 5) console_.Info("learner answers GetStatus again");
      failures = 0;
      last_status_ = *status;
      // "actors a" is what the coordinator counts (registered, heartbeating); the
      // processes count is what SIGUSR1 / SIGUSR2 change.
      console_.Progress(absl::StrCat(FormatProgress(last_status_, config_.learner.updates),
                                     "  actor processes ", RunningActors()));
      if (last_status_.finished()) {
        console_.Info("training finished at update {}", last_status_.update());
        return Outcome::kFinished;
      }
    } else if (++failures == 5) {
      console_.Warn("learner does not answer GetStatus: {}", status.status().ToString());
    }
    if (SleepOrSignal(500)) return Outcome::kSignal;
  }
}

void Launcher::WriteClusterJson() {
  nlohmann::json j;
  j["launcher_pid"] = static_cast<int64_t>(getpid());
  j["learner"] = {{"pid", learner_.pid},
                  {"port", learner_.port},
                  {"metrics_port", learner_.metrics_port},
                  {"log", learner_.log_path}};
  if (!learner_ranks_.empty()) {
    j["learners"] = nlohmann::json::array();
    j["learners"].push_back({{"rank", 0},
                             {"pid", learner_.pid},
                             {"metrics_port", learner_.metrics_port},
                             {"log", learner_.log_path}});
    for (size_t r = 1; r <= learner_ranks_.size(); ++r) {
      const Child& c = learner_ranks_[r - 1];
      j["learners"].push_back(
          {{"rank", r}, {"pid", c.pid}, {"metrics_port", c.metrics_port}, {"log", c.log_path}});
    }
  }
  j["verifiers"] = nlohmann::json::array();
  for (const Child& c : verifiers_) {
    j["verifiers"].push_back({{"name", c.name},
                              {"pid", c.pid},
                              {"port", c.port},
                              {"metrics_port", c.metrics_port},
                              {"log", c.log_path},
                              {"alive", c.alive}});
  }
  // The current actors, oldest first (SIGUSR2 removes the last); removed ones leave
  // the list, ones that exited by themselves stay with alive false.
  j["actors"] = nlohmann::json::array();
  for (const Child& c : actors_) {
    j["actors"].push_back({{"name", c.name},
                           {"pid", c.pid},
                           {"metrics_port", c.metrics_port},
                           {"log", c.log_path},
                           {"alive", c.alive}});
  }
  j["token_file"] = plan_.token_file;
  // What a client of this cluster needs to connect (common/rpc.h TlsFiles); absent in
  // plaintext.
  if (!tls_.cert.empty()) {
    j["tls"] = {{"cert", tls_.cert}, {"key", tls_.key}, {"ca", tls_.ca}};
  }
  // Written whole under a temporary name and renamed: a reader never sees half a file.
  fs::path path = run_dir_ / "cluster.json";
  fs::path tmp = run_dir_ / "cluster.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) {
      console_.Warn("cannot write {}", tmp.string());
      return;
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) console_.Warn("cannot write {}: {}", path.string(), ec.message());
}

int Launcher::RunningActors() const {
  int n = 0;
  for (const Child& c : actors_) n += c.alive ? 1 : 0;
  return n;
}

void Launcher::ScaleActors() {
  // One request at a time, each fully served (started, or SIGTERMed) before the next.
  while (true) {
    bool served = false;
    if (TakeAddActorRequest()) {
      AddActor();
      served = true;
    }
    if (TakeRemoveActorRequest()) {
      RemoveNewestActor();
      served = true;
    }
    if (!served) break;
  }
}

void Launcher::AddActor() {
  // A fresh loopback port from the kernel, also with local.base_port: the ports after
  // the cluster's own block may belong to anyone.
  absl::StatusOr<ClusterPorts> port = PickPorts(0, 0, 1);
  if (!port.ok()) {
    console_.Error("cannot add an actor: {}", std::string(port.status().message()));
    return;
  }
  // Names never repeat (actor-<n>, n = its metrics-port slot), so each log and
  // actor_id stays one process's.
  plan_.ports.actor_metrics.push_back(port->actor_metrics.at(0));
  const int index = static_cast<int>(plan_.ports.actor_metrics.size()) - 1;
  absl::StatusOr<Child> c = Start(absl::StrCat("actor-", index), ActorCommand(plan_, index), 0,
                                  plan_.ports.actor_metrics[index]);
  if (!c.ok()) {
    console_.Error("cannot add an actor: {}", std::string(c.status().message()));
    return;
  }
  actors_.push_back(*c);
  warned_no_actors_ = false;
  console_.Info("SIGUSR1: added {}; {} actor processes", c->name, RunningActors());
  WriteClusterJson();
}

void Launcher::RemoveNewestActor() {
  for (size_t i = actors_.size(); i-- > 0;) {
    Child& c = actors_[i];
    Reap(c);
    if (!c.alive) continue;
    kill(c.pid, SIGTERM);
    retired_.push_back({c, Clock::now()});
    actors_.erase(actors_.begin() + static_cast<std::ptrdiff_t>(i));
    console_.Info("SIGUSR2: stopping {} (pid {}); {} actor processes", retired_.back().child.name,
                  retired_.back().child.pid, RunningActors());
    WriteClusterJson();
    return;
  }
  console_.Warn("SIGUSR2: no running actor to remove");
}

void Launcher::ReapRetired(std::chrono::seconds grace) {
  for (auto it = retired_.begin(); it != retired_.end();) {
    Child& c = it->child;
    if (!Reap(c) && c.alive && Clock::now() - it->since >= grace) {
      console_.Warn("{} did not stop within {} s of SIGTERM; killing it", c.name, grace.count());
      KillAndReap(c);
    }
    if (c.alive) {
      ++it;
      continue;
    }
    console_.Info("{} stopped ({})", c.name, DescribeWaitStatus(c.wait_status));
    it = retired_.erase(it);
  }
}

void Launcher::StopGroup(std::vector<Child*> group, std::chrono::seconds grace) {
  int signals_before = LauncherStopSignalCount();
  for (Child* c : group) {
    Reap(*c);
    if (c->alive) kill(c->pid, SIGTERM);
  }
  Clock::time_point deadline = Clock::now() + grace;
  while (true) {
    bool any_alive = false;
    for (Child* c : group) {
      Reap(*c);
      any_alive = any_alive || c->alive;
    }
    if (!any_alive) {
      spdlog::debug("{} stopped after {:.2f} s", group.front()->name,
                    std::chrono::duration<double>(Clock::now() - (deadline - grace)).count());
      return;
    }
    if (Clock::now() >= deadline) {
      for (Child* c : group) {
        if (c->alive) {
          console_.Warn("{} did not stop within {} s of SIGTERM; killing it", c->name,
                        grace.count());
        }
      }
      break;
    }
    if (LauncherStopSignalCount() > signals_before) {  // asked again: do not wait
      console_.Warn("interrupted again; killing the remaining processes");
      break;
    }
    WaitForWake(50);
  }
  for (Child* c : group) KillAndReap(*c);
}

void Launcher::StopAll() {
  std::vector<Child*> actors, verifiers;
  for (Child& c : actors_) actors.push_back(&c);
  for (Retired& r : retired_) actors.push_back(&r.child);
  for (Child& c : verifiers_) verifiers.push_back(&c);
  console_.Break();
  if (!actors.empty()) StopGroup(actors, std::chrono::seconds(10));
  if (!verifiers.empty()) StopGroup(verifiers, std::chrono::seconds(10));
  // Close our connection first: a gRPC server's shutdown can wait for its clients'
  // connections to go away.
  stub_.reset();
  channel_.reset();
  // Rank 0 first: it ends training and tells the other ranks to stop; they follow.
  if (learner_.pid > 0) StopGroup({&learner_}, std::chrono::seconds(30));
  std::vector<Child*> ranks;
  for (Child& c : learner_ranks_) ranks.push_back(&c);
  if (!ranks.empty()) StopGroup(ranks, std::chrono::seconds(30));
}

void Launcher::KillAll() {
  std::vector<Child*> all;
  for (Child& c : actors_) all.push_back(&c);
  for (Retired& r : retired_) all.push_back(&r.child);
  for (Child& c : verifiers_) all.push_back(&c);
  all.push_back(&learner_);
  for (Child& c : learner_ranks_) all.push_back(&c);
  for (Child* c : all) KillAndReap(*c);
}

void Launcher::Summarise() {
  std::string csv = (run_dir_ / "metrics.csv").string();
  std::string svg = (run_dir_ / "curve.svg").string();
  absl::Status s = WriteCurveSvg(csv, svg, absl::StrCat("pmdrl: ", run_dir_.filename().string()));
  if (s.ok()) {
    console_.Info("wrote {}", svg);
  } else {
    console_.Warn("no curve: {}", s.ToString());
  }
  std::printf("%s\n", FormatDemoLine(last_status_).c_str());
  std::fflush(stdout);
}

int Launcher::Run() {
  absl::Status prepared = Prepare();
  if (!prepared.ok()) {
    console_.Error("{}", std::string(prepared.message()));
    return 1;
  }
  SignalGuard signals;
  const ClusterPorts& ports = plan_.ports;
  absl::StatusOr<Child> learner =
      Start("learner", LearnerCommand(plan_), ports.learner, ports.learner_metrics);
  if (!learner.ok()) {
    console_.Error("{}", std::string(learner.status().message()));
    return 1;
  }
  learner_ = *learner;
  // Every rank starts before we wait: rank 0 serves only once all have joined the
  // rendezvous.
  for (int r = 1; r < plan_.learners; ++r) {
    absl::StatusOr<Child> c = Start(absl::StrCat("learner-", r), LearnerRankCommand(plan_, r), 0,
                                    ports.learner_rank_metrics[r - 1]);
    if (!c.ok()) {
      console_.Error("{}", std::string(c.status().message()));
      StopAll();
      return 1;
    }
    learner_ranks_.push_back(*c);
  }
  Outcome outcome = WaitForLearner();
  if (outcome == Outcome::kFinished) {  // the learner is ready
    for (int i = 0; i < config_.local.verifiers && outcome == Outcome::kFinished; ++i) {
      absl::StatusOr<Child> c = Start(absl::StrCat("verifier-", i), VerifierCommand(plan_, i),
                                      ports.verifier[i], ports.verifier_metrics[i]);
      if (c.ok()) {
        verifiers_.push_back(*c);
      } else {
        console_.Error("{}", std::string(c.status().message()));
        outcome = Outcome::kFailed;
      }
    }
    for (int i = 0; i < config_.local.actors && outcome == Outcome::kFinished; ++i) {
      absl::StatusOr<Child> c =
          Start(absl::StrCat("actor-", i), ActorCommand(plan_, i), 0, ports.actor_metrics[i]);
      if (c.ok()) {
        actors_.push_back(*c);
      } else {
        console_.Error("{}", std::string(c.status().message()));
        outcome = Outcome::kFailed;
      }
    }
    if (outcome == Outcome::kFinished) {
      WriteClusterJson();
      outcome = Supervise();
    }
  }

  console_.Break();
  switch (outcome) {
    case Outcome::kFinished:
      console_.Info("stopping the cluster");
      break;
    case Outcome::kSignal:
      console_.Info("signal {}: stopping the cluster", LauncherStopSignal());
      break;
    case Outcome::kFailed:
      console_.Info("stopping the cluster after a failure");
      break;
  }
  StopAll();

  switch (outcome) {
    case Outcome::kFinished: {
      Summarise();
      int st = learner_.wait_status;
      if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        console_.Error("learner did not shut down cleanly ({}); see {}", DescribeWaitStatus(st),
                       learner_.log_path);
        return 1;
      }
      // Training is done and rank 0 is: a rank that then stops untidily (its peer
      // went away first) cost nothing, but is worth a look.
      for (const Child& c : learner_ranks_) {
        if (!(WIFEXITED(c.wait_status) && WEXITSTATUS(c.wait_status) == 0)) {
          console_.Warn("{} did not shut down cleanly ({}); see {}", c.name,
                        DescribeWaitStatus(c.wait_status), c.log_path);
        }
      }
      return 0;
    }
    case Outcome::kSignal:
      return 128 + LauncherStopSignal();
    case Outcome::kFailed:
      return 1;
  }
  return 1;
}

}  // namespace

int RunLocalCluster(Config config, LocalArgs args) {
  Launcher launcher(std::move(config), std::move(args));
  return launcher.Run();
}

}  // namespace pmdrl
