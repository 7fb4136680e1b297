#include "cli/local_console.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"

namespace pmdrl {
namespace {

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

}  // namespace

SignalGuard::SignalGuard() {
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

SignalGuard::~SignalGuard() {
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

Console::Console() : tty_(isatty(STDERR_FILENO) == 1) {}

void Console::Progress(const std::string& line) {
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

void Console::Break() {
  if (line_active_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    line_active_ = false;
  }
}

int LauncherStopSignal() { return g_signal.load(); }
int LauncherStopSignalCount() { return g_signal_count.load(); }

bool TakeAddActorRequest() {
  if (g_add_actor.load() <= 0) return false;
  g_add_actor.fetch_sub(1);
  return true;
}

bool TakeRemoveActorRequest() {
  if (g_remove_actor.load() <= 0) return false;
  g_remove_actor.fetch_sub(1);
  return true;
}

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

}  // namespace pmdrl
