// `pmdrl local`'s console and signals. Console: the launcher's stderr output, a
// progress line (one updating line on a TTY, else a line every ~10 s) and event lines
// through spdlog. Signals: while a SignalGuard lives, SIGINT/SIGTERM are recorded (the
// first one is the stop signal) and SIGUSR1/SIGUSR2 queue requests to add/remove an
// actor; each wakes WaitForWake. The handlers only record and write to a self-pipe
// (async-signal-safe). One SignalGuard at a time, owned by the launcher's thread, which
// is the only reader of the recorded state.
#ifndef PMDRL_CLI_LOCAL_CONSOLE_H_
#define PMDRL_CLI_LOCAL_CONSOLE_H_

#include <signal.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include "pmdrl/pmdrl.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

// `update U/N  reward R  eval A%  tokens/s T  actors a  elapsed S s`.
std::string FormatProgress(const v1::StatusResponse& status, int64_t total_updates);

// `demo: base accuracy A% -> final accuracy B% (N updates, S s)`; an accuracy the
// learner does not have (negative) reads "n/a".
std::string FormatDemoLine(const v1::StatusResponse& status);

// Stderr output: the progress line (one updating line on a TTY, else a line every
// ~10 s) and event lines through spdlog, which first clear an active progress line.
class Console {
 public:
  using Clock = std::chrono::steady_clock;

  Console();

  // Shows `line` as the progress line.
  void Progress(const std::string& line);
  // Ends an active progress line so that the next output starts on its own line.
  void Break();

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

// Installs the handlers for its lifetime and restores the previous ones after; also
// ignores SIGPIPE meanwhile, so that a closed stderr pipe (`pmdrl local ... | head`)
// cannot kill the launcher before it has stopped its children.
class SignalGuard {
 public:
  SignalGuard();
  ~SignalGuard();
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  struct sigaction old_int_, old_term_, old_pipe_, old_usr1_, old_usr2_;
};

// The first SIGINT/SIGTERM received, 0 if none.
int LauncherStopSignal();
// How many SIGINT/SIGTERM have been received.
int LauncherStopSignalCount();
// Takes one pending SIGUSR1 (add an actor) / SIGUSR2 (remove one) request: true if
// there was one.
bool TakeAddActorRequest();
bool TakeRemoveActorRequest();

// Sleeps up to `ms` milliseconds or until a signal arrives.
void WaitForWake(int ms);

// Sleeps up to `ms` milliseconds; true (at once) when a stop signal has arrived.
bool SleepOrSignal(int ms);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOCAL_CONSOLE_H_
