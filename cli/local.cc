#include "cli/local.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/child_process.h"
#include "cli/plot.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/log.h"
#include "common/rpc.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: pmdrl local [--config FILE] [--resume] [--learners N] [--section.key=value ...]\n"
    "\n"
    "Starts a whole cluster on this machine: local.learners data-parallel learner ranks\n"
    "(rank 0 serves actors and verifiers), local.verifiers verifiers and local.actors\n"
    "actors, all bound to 127.0.0.1 and sharing a fresh random bearer token (written to\n"
    "<run.dir>/token, mode 0600). Each child logs to <run.dir>/logs/<name>.log (learner\n"
    "rank r > 0: learner-<r>.log); pids and ports are in <run.dir>/cluster.json.\n"
    "Overrides are passed to every child. A finished run writes <run.dir>/curve.svg and\n"
    "prints one 'demo:' line on stdout.\n"
    "\n"
    "  --config FILE   the run's YAML configuration\n"
    "  --resume        the learner resumes from the latest checkpoint in run.dir\n"
    "  --learners N    data-parallel learner ranks (same as local.learners; default 1)\n"
    "  --help          this text and every configuration key\n"
    "\n"
    "Elastic actors: while the run goes on, `kill -USR1 <pid of pmdrl local>` starts one\n"
    "more actor and `kill -USR2 <pid>` stops the newest one (SIGTERM; its leases expire\n"
    "and are re-issued). cluster.json is rewritten after every change (launcher_pid is\n"
    "the pid to signal) and the progress line counts the actor processes. A verifier\n"
    "is removed by killing its pid from cluster.json: actors fail over to the others.\n"
    "\n"
    "Exit codes: 0 finished run, 1 failure, 2 usage or configuration error,\n"
    "130 stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM.\n";

// ---------------------------------------------------------------- signals

// The launcher's own SIGINT/SIGTERM: the handler records the signal and wakes the
// poll loop through a self-pipe (both async-signal-safe).
std::atomic<int> g_signal{0};        // the first signal received, 0 if none
std::atomic<int> g_signal_count{0};  // every signal received
int g_wake_pipe[2] = {-1, -1};

// SIGUSR1 / SIGUSR2: requests to add / remove an actor, served by the supervise loop.
std::atomic<int> g_add_actor{0};
std::atomic<int> g_remove_actor{0};

void OnScaleSignal(int signo) {
  int saved = errno;
  (signo == SIGUSR1 ? g_add_actor : g_remove_actor).fetch_add(1);
  if (g_wake_pipe[1] >= 0) {
    char c = 1;
    [[maybe_unused]] ssize_t n = write(g_wake_pipe[1], &c, 1);
  }
  errno = saved;
}

void OnSignal(int signo) {
  int saved = errno;
  int expected = 0;
  g_signal.compare_exchange_strong(expected, signo);
  g_signal_count.fetch_add(1);
  if (g_wake_pipe[1] >= 0) {
    char c = 1;
    [[maybe_unused]] ssize_t n = write(g_wake_pipe[1], &c, 1);
  }
  errno = saved;
}

// Installs the handlers for its lifetime and restores the previous ones after.
class SignalGuard {
 public:
  SignalGuard() {
    g_signal.store(0);
    g_signal_count.store(0);
    if (pipe2(g_wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      g_wake_pipe[0] = g_wake_pipe[1] = -1;
    }
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = OnSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
    g_add_actor.store(0);
    g_remove_actor.store(0);
    struct sigaction scale;
    std::memset(&scale, 0, sizeof(scale));
    scale.sa_handler = OnScaleSignal;
    sigemptyset(&scale.sa_mask);
    scale.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &scale, &old_usr1_);
    sigaction(SIGUSR2, &scale, &old_usr2_);
    // A closed stderr pipe (`pmdrl local ... | head`) must not kill the launcher
    // before it has stopped its children.
    struct sigaction ign;
    std::memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old_pipe_);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGPIPE, &old_pipe_, nullptr);
    sigaction(SIGUSR1, &old_usr1_, nullptr);
    sigaction(SIGUSR2, &old_usr2_, nullptr);
    for (int& fd : g_wake_pipe) {
      if (fd >= 0) close(fd);
      fd = -1;
    }
  }

 private:
  struct sigaction old_int_, old_term_, old_pipe_, old_usr1_, old_usr2_;
};

// Sleeps up to `ms` milliseconds or until a signal arrives.
void WaitForWake(int ms) {
  if (g_wake_pipe[0] < 0) {
    usleep(ms * 1000);
    return;
  }
  struct pollfd p = {g_wake_pipe[0], POLLIN, 0};
  if (poll(&p, 1, ms) > 0) {
    char buf[64];
    while (read(g_wake_pipe[0], buf, sizeof(buf)) > 0) {
    }
  }
}

// Sleeps up to `ms` milliseconds; true (at once) when a signal has arrived.
bool SleepOrSignal(int ms) {
  if (g_signal.load() != 0) return true;
  WaitForWake(ms);
  return g_signal.load() != 0;
}

// ---------------------------------------------------------------- console

// Stderr output: the progress line (one updating line on a TTY, else a line every
// ~10 s) and event lines through spdlog, which first clear an active progress line.
class Console {
 public:
  Console() : tty_(isatty(STDERR_FILENO) == 1) {}

  void Progress(const std::string& line) {
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      std::fflush(stderr);
      line_active_ = true;
      return;
    }
    Clock::time_point now = Clock::now();
    if (!printed_ || now - last_ >= std::chrono::seconds(10)) {
      std::fprintf(stderr, "%s\n", line.c_str());
      std::fflush(stderr);
      last_ = now;
      printed_ = true;
    }
  }

  // Ends an active progress line so that the next output starts on its own line.
  void Break() {
    if (line_active_) {
      std::fprintf(stderr, "\r\033[K");
      std::fflush(stderr);
      line_active_ = false;
    }
  }

  template <typename... Args>
  void Info(spdlog::format_string_t<Args...> fmt, Args&&... args) {
    Break();
    spdlog::info(fmt, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void Warn(spdlog::format_string_t<Args...> fmt, Args&&... args) {
    Break();
    spdlog::warn(fmt, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void Error(spdlog::format_string_t<Args...> fmt, Args&&... args) {
    Break();
    spdlog::error(fmt, std::forward<Args>(args)...);
  }

 private:
  bool tty_;
  bool line_active_ = false;
  bool printed_ = false;
  Clock::time_point last_;
};

// ---------------------------------------------------------------- token

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

// ---------------------------------------------------------------- children

// A started child process as the launcher tracks it.
struct Child {
  std::string name;  // "learner", "verifier-0", "actor-1"
  pid_t pid = -1;
  int port = 0;  // 0: not a server
  int metrics_port = 0;
  std::string log_path;
  bool alive = false;
  int wait_status = 0;  // valid once !alive
};

std::vector<std::string> ChildEnvironment(const std::string& token) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (absl::StartsWith(*e, "PMDRL_TOKEN=")) continue;
    env.emplace_back(*e);
  }
  env.push_back("PMDRL_TOKEN=" + token);
  return env;
}

// Reaps `child` if it has exited. Returns true when it was alive and now is not.
bool Reap(Child& child) {
  if (!child.alive) return false;
  int status = 0;
  pid_t r = waitpid(child.pid, &status, WNOHANG);
  if (r == child.pid || (r < 0 && errno == ECHILD)) {
    child.alive = false;
    child.wait_status = r == child.pid ? status : 0;
    return true;
  }
  return false;
}

// The last `max_lines` lines of a log, for an error report.
std::string LogTail(const std::string& path, int max_lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff start = size > 8192 ? size - 8192 : 0;
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  size_t first = lines.size() > static_cast<size_t>(max_lines) ? lines.size() - max_lines : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&out, "  | ", lines[i], "\n");
  return out;
}

std::string ExeDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return exe.parent_path().string();
}

// ---------------------------------------------------------------- the launcher

// One run of `pmdrl local`. Owns the child processes it starts: it signals only
// their pids, reaps every one of them before Run returns (the destructor SIGKILLs and
// reaps any left by an early return), and is the only waitpid caller for them.
class Launcher {
 public:
  Launcher(Config config, LocalArgs args) : config_(std::move(config)), args_(std::move(args)) {}
  ~Launcher() { KillAll(); }

  int Run();

 private:
  enum class Outcome { kFinished, kSignal, kFailed };

  absl::Status Prepare();
  absl::StatusOr<Child> Start(const std::string& name, std::vector<std::string> argv, int port,
                              int metrics_port);
  // Polls GetStatus until it answers. kFinished here means "ready".
  Outcome WaitForLearner();
  Outcome Supervise();
  // wait_for_ready: wait (up to the timeout) for the connection instead of failing
  // at once while it is down.
  absl::StatusOr<v1::StatusResponse> GetStatus(int timeout_ms, bool wait_for_ready);
  // Reaps exited children and reports them; returns false when the learner exited.
  bool CheckChildren();
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
  return WriteTokenFile(plan_.token_file, token_);
}

absl::StatusOr<Child> Launcher::Start(const std::string& name, std::vector<std::string> argv,
                                      int port, int metrics_port) {
  Child child;
  child.name = name;
  child.port = port;
  child.metrics_port = metrics_port;
  child.log_path = (run_dir_ / "logs" / (name + ".log")).string();
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
                                       grpc::InsecureChannelCredentials(), channel_args);
  stub_ = v1::Coordinator::NewStub(channel_);
  // Every rank loads the model before rank 0 can serve; on a small machine they
  // compete for the cores, so allow more time per extra rank.
  const int timeout_s = 60 + 30 * static_cast<int>(learner_ranks_.size());
  Clock::time_point deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (true) {
    if (!CheckLearnerRanks()) return Outcome::kFailed;
    if (Reap(learner_)) {
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
  Reap(learner_);
  return learner_.alive;
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
  while (g_add_actor.load() > 0 || g_remove_actor.load() > 0) {
    if (g_add_actor.load() > 0) {
      g_add_actor.fetch_sub(1);
      AddActor();
    }
    if (g_remove_actor.load() > 0) {
      g_remove_actor.fetch_sub(1);
      RemoveNewestActor();
    }
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
      kill(c.pid, SIGKILL);
      int status = 0;
      pid_t r;
      while ((r = waitpid(c.pid, &status, 0)) < 0 && errno == EINTR) {
      }
      c.alive = false;
      c.wait_status = r == c.pid ? status : 0;
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
  int signals_before = g_signal_count.load();
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
    if (g_signal_count.load() > signals_before) {  // asked again: do not wait
      console_.Warn("interrupted again; killing the remaining processes");
      break;
    }
    WaitForWake(50);
  }
  for (Child* c : group) {
    if (!c->alive) continue;
    kill(c->pid, SIGKILL);
    int status = 0;
    pid_t r;
    while ((r = waitpid(c->pid, &status, 0)) < 0 && errno == EINTR) {
    }
    c->alive = false;
    c->wait_status = r == c->pid ? status : 0;
  }
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
  for (Child* c : all) {
    if (!c->alive || c->pid <= 0) continue;
    kill(c->pid, SIGKILL);
    while (waitpid(c->pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    c->alive = false;
  }
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
      console_.Info("signal {}: stopping the cluster", g_signal.load());
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
      return 128 + g_signal.load();
    case Outcome::kFailed:
      return 1;
  }
  return 1;
}

}  // namespace

// ---------------------------------------------------------------- pure helpers

absl::StatusOr<LocalArgs> ParseLocalArgs(int argc, char** argv) {
  LocalArgs args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      args.help = true;
      continue;
    }
    if (a == "--resume") {
      args.resume = true;
      continue;
    }
    if (!absl::StartsWith(a, "--") || a.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    }
    std::string body = a.substr(2), key = body, value;
    size_t eq = body.find('=');
    if (eq != std::string::npos) {
      key = body.substr(0, eq);
      value = body.substr(eq + 1);
    } else {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", key, " needs a value"));
      }
      value = argv[++i];
    }
    if (key == "config") {
      args.config_path = value;
    } else if (key == "learners") {
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--learners wants an integer >= 1, not '", value, "'"));
      }
      args.learners = n;
    } else {
      args.overrides.push_back(absl::StrCat(key, "=", value));
    }
  }
  return args;
}

absl::StatusOr<ClusterPorts> PickPorts(int64_t base_port, int verifiers, int actors, int learners) {
  if (learners < 1) {
    return absl::InvalidArgumentError(absl::StrCat("local.learners: ", learners, " < 1"));
  }
  // A single learner needs no rendezvous store: its port layout stays as it was.
  int extra = learners > 1 ? learners : 0;  // store + one metrics port per rank >= 1
  int count = 2 + 2 * verifiers + actors + extra;
  std::vector<int> ports;
  if (base_port > 0) {
    if (base_port + count - 1 > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("local.base_port: ", base_port, " + ", count, " ports runs past 65535"));
    }
    for (int i = 0; i < count; ++i) ports.push_back(static_cast<int>(base_port) + i);
  } else {
    // All sockets stay open until every port is read, so the kernel hands out
    // distinct ones.
    std::vector<int> fds;
    absl::Status status;
    for (int i = 0; i < count && status.ok(); ++i) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        status = absl::ResourceExhaustedError(absl::StrCat("socket: ", std::strerror(errno)));
        break;
      }
      fds.push_back(fd);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = 0;
      socklen_t len = sizeof(addr);
      if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
          getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        status = absl::UnavailableError(
            absl::StrCat("cannot bind a free port on 127.0.0.1: ", std::strerror(errno)));
        break;
      }
      ports.push_back(ntohs(addr.sin_port));
    }
    for (int fd : fds) close(fd);
    if (!status.ok()) return status;
  }
  ClusterPorts out;
  size_t next = 0;
  out.learner = ports[next++];
  out.learner_metrics = ports[next++];
  for (int i = 0; i < verifiers; ++i) {
    out.verifier.push_back(ports[next++]);
    out.verifier_metrics.push_back(ports[next++]);
  }
  for (int i = 0; i < actors; ++i) out.actor_metrics.push_back(ports[next++]);
  if (learners > 1) {
    out.rendezvous = ports[next++];
    for (int r = 1; r < learners; ++r) out.learner_rank_metrics.push_back(ports[next++]);
  }
  return out;
}

namespace {

// The part every child shares: binary, --config, the user's overrides, the token file.
std::vector<std::string> CommonPrefix(const ClusterPlan& plan, const std::string& binary) {
  std::vector<std::string> argv = {binary};
  if (!plan.config_path.empty()) {
    argv.push_back("--config");
    argv.push_back(plan.config_path);
  }
  for (const std::string& o : plan.overrides) argv.push_back("--" + o);
  if (!plan.token_file.empty()) argv.push_back("--run.token_file=" + plan.token_file);
  return argv;
}

std::string Loopback(int port) { return absl::StrCat("127.0.0.1:", port); }

// Rank, world size and the store's address; nothing for a single learner, so that
// its command line is what it was before ranks existed.
void AppendRankFlags(const ClusterPlan& plan, int rank, std::vector<std::string>* argv) {
  if (plan.learners <= 1) return;
  argv->push_back(absl::StrCat("--learner.rank=", rank));
  argv->push_back(absl::StrCat("--learner.world_size=", plan.learners));
  argv->push_back("--learner.rendezvous=" + Loopback(plan.ports.rendezvous));
}

}  // namespace

std::vector<std::string> LearnerCommand(const ClusterPlan& plan) {
  std::vector<std::string> argv = CommonPrefix(plan, plan.learner_bin);
  argv.push_back("--learner.listen=" + Loopback(plan.ports.learner));
  argv.push_back(absl::StrCat("--learner.metrics_port=", plan.ports.learner_metrics));
  AppendRankFlags(plan, 0, &argv);
  if (plan.resume) argv.push_back("--learner.resume=auto");
  return argv;
}

std::vector<std::string> LearnerRankCommand(const ClusterPlan& plan, int rank) {
  if (rank == 0) return LearnerCommand(plan);
  std::vector<std::string> argv = CommonPrefix(plan, plan.learner_bin);
  AppendRankFlags(plan, rank, &argv);
  // Ranks >= 1 serve no RPCs to the cluster: an ephemeral port cannot collide.
  argv.push_back("--learner.listen=127.0.0.1:0");
  argv.push_back(
      absl::StrCat("--learner.metrics_port=", plan.ports.learner_rank_metrics.at(rank - 1)));
  // Every rank holds the full model and optimizer state, so each restores it.
  if (plan.resume) argv.push_back("--learner.resume=auto");
  return argv;
}

std::vector<std::string> VerifierCommand(const ClusterPlan& plan, int index) {
  std::vector<std::string> argv = CommonPrefix(plan, plan.verifier_bin);
  argv.push_back(absl::StrCat("--verifier.name=verifier-", index));
  argv.push_back("--verifier.listen=" + Loopback(plan.ports.verifier.at(index)));
  argv.push_back("--verifier.learner=" + Loopback(plan.ports.learner));
  argv.push_back(absl::StrCat("--verifier.metrics_port=", plan.ports.verifier_metrics.at(index)));
  return argv;
}

std::vector<std::string> ActorCommand(const ClusterPlan& plan, int index) {
  std::vector<std::string> argv = CommonPrefix(plan, plan.actor_bin);
  std::vector<std::string> verifiers;
  for (int port : plan.ports.verifier) verifiers.push_back(Loopback(port));
  argv.push_back(absl::StrCat("--actor.name=actor-", index));
  argv.push_back("--actor.coordinator=" + Loopback(plan.ports.learner));
  argv.push_back("--actor.verifiers=" + absl::StrJoin(verifiers, ","));
  argv.push_back(absl::StrCat("--actor.metrics_port=", plan.ports.actor_metrics.at(index)));
  return argv;
}

absl::StatusOr<std::string> FindBinary(const std::string& name, const std::string& subdir,
                                       const std::string& exe_dir, const std::string& env_bin_dir) {
  std::vector<std::string> candidates;
  if (!env_bin_dir.empty()) {
    candidates.push_back((fs::path(env_bin_dir) / name).string());
    candidates.push_back((fs::path(env_bin_dir) / subdir / name).string());
  }
  if (!exe_dir.empty()) {
    candidates.push_back((fs::path(exe_dir) / ".." / subdir / name).lexically_normal().string());
    candidates.push_back((fs::path(exe_dir) / name).string());
  }
  for (const std::string& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec) && access(c.c_str(), X_OK) == 0) return c;
  }
  return absl::NotFoundError(absl::StrCat("cannot find the ", name, " executable (looked at ",
                                          absl::StrJoin(candidates, ", "),
                                          "); build it, or set PMDRL_BIN_DIR to its directory"));
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("signal ", WTERMSIG(wait_status));
  return absl::StrCat("wait status ", wait_status);
}

std::string FormatProgress(const v1::StatusResponse& s, int64_t total_updates) {
  std::string eval =
      s.eval_accuracy() < 0 ? "-" : absl::StrFormat("%.1f%%", s.eval_accuracy() * 100);
  return absl::StrFormat(
      "update %d/%d  reward %.3f  eval %s  tokens/s %.0f  actors %d  elapsed %.0f s", s.update(),
      total_updates, s.mean_reward(), eval, s.trained_tokens_per_second(), s.live_actors(),
      s.elapsed_seconds());
}

std::string FormatDemoLine(const v1::StatusResponse& s) {
  auto pct = [](double a) {
    return a < 0 ? std::string("n/a") : absl::StrFormat("%.1f%%", a * 100);
  };
  return absl::StrFormat("demo: base accuracy %s -> final accuracy %s (%d updates, %.0f s)",
                         pct(s.base_accuracy()), pct(s.final_accuracy()), s.update(),
                         s.elapsed_seconds());
}

int RunLocal(int argc, char** argv) {
  absl::StatusOr<LocalArgs> args = ParseLocalArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "pmdrl local: %s\n\n%s", std::string(args.status().message()).c_str(),
                 kUsage);
    return 2;
  }
  if (args->help) {
    std::printf("%s\nConfiguration keys (YAML 'section: {key: value}' or --section.key=value):\n%s",
                kUsage, ConfigHelp().c_str());
    return 0;
  }
  // --learners goes through the configuration (last, so it wins over
  // --local.learners) to be checked with the other keys; children do not need it.
  std::vector<std::string> overrides = args->overrides;
  if (args->learners > 0) overrides.push_back(absl::StrCat("local.learners=", args->learners));
  absl::StatusOr<Config> config = LoadConfig(args->config_path, overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "pmdrl local: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  InitLogging("local", "");
  Launcher launcher(*std::move(config), *std::move(args));
  return launcher.Run();
}

}  // namespace pmdrl
