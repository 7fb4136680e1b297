// Starting the child processes of `pmdrl local` (the cluster) and `pmdrl compare` (one
// `pmdrl local` per run), and tracking them: reaping, their logs' tails, exit statuses.
#ifndef PMDRL_CLI_CHILD_PROCESS_H_
#define PMDRL_CLI_CHILD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pmdrl {

// Starts `argv` (argv[0] a path) with environment `env`, stdout and stderr appended to
// `log_path` after a "==== <launcher>: <argv>" line, stdin from /dev/null, in the
// caller's process group, with default signal dispositions and an empty signal mask.
// The child gets SIGTERM should the thread that started it die (PR_SET_PDEATHSIG), so
// that thread must live as long as the child. Everything the child needs is prepared
// before fork, because the caller may have other threads (gRPC's): the child makes
// only async-signal-safe calls until execve. An exec failure is reported here, through
// a close-on-exec pipe, not as a child exiting 127.
absl::StatusOr<pid_t> Spawn(std::vector<std::string> argv, std::vector<std::string> env,
                            const std::string& log_path, absl::string_view launcher);

// A started child process as `pmdrl local`'s launcher tracks it.
struct Child {
  std::string name;  // "learner", "verifier-0", "actor-1"
  pid_t pid = -1;
  int port = 0;  // 0: not a server
  int metrics_port = 0;
  std::string log_path;
  std::vector<std::string> argv;  // the command it was started with, for a restart
  bool alive = false;
  int wait_status = 0;  // valid once !alive
};

// The caller's environment with PMDRL_TOKEN set to `token` (replacing any).
std::vector<std::string> ChildEnvironment(const std::string& token);

// Reaps `child` if it has exited (waitpid WNOHANG). Returns true when it was alive and
// now is not.
bool Reap(Child& child);

// SIGKILLs `child` if it is alive (an exited, unreaped one too) and reaps it, recording
// its wait status.
void KillAndReap(Child& child);

// The signal that killed `child` if it has exited by one, else 0; it is left unreaped
// (waitid WNOWAIT), so Reap still sees it exit.
int PeekKillSignal(const Child& child);

// The last `max_lines` lines of a log (of its last 8 KiB), each as "  | line\n", for an
// error report; "" when it cannot be read.
std::string LogTail(const std::string& path, int max_lines);

// "exit code 3", "signal 9" for a waitpid status.
std::string DescribeWaitStatus(int wait_status);

}  // namespace pmdrl

#endif  // PMDRL_CLI_CHILD_PROCESS_H_
