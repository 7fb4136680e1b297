// Starting the child processes of `pmdrl local` (the cluster) and `pmdrl compare` (one
// `pmdrl local` per run).
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

}  // namespace pmdrl

#endif  // PMDRL_CLI_CHILD_PROCESS_H_
