// `pmdrl local`: runs a whole cluster (local.learners data-parallel learner ranks,
// local.verifiers verifiers, local.actors actors) as child processes on this machine,
// bound to loopback, sharing a fresh random bearer token and (local.tls) talking mutual
// TLS with a throw-away CA made for the run, shows progress, stops
// everything cleanly and summarises a finished run (curve.svg and one "demo:" line on stdout).
#ifndef PMDRL_CLI_LOCAL_H_
#define PMDRL_CLI_LOCAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// Runs `pmdrl local`. argv[0] is the sub-command name ("local"); the rest are
// `--config FILE`, `--resume`, `--learners N`, `--help` and `--section.key=value`
// overrides.
// Returns the process exit code: 0 finished run, 2 usage or configuration error,
// 128+signal when stopped by SIGINT (130) or SIGTERM (143), 1 any other failure.
int RunLocal(int argc, char** argv);

// ---- Pieces of RunLocal without side effects, exposed for tests. The others are in
// cli/local_ports.h (ports, command lines), cli/local_console.h (progress output,
// signals) and cli/child_process.h (exit statuses); cli/local_launcher.h runs the
// cluster. ----

// The command line of `pmdrl local`, split up.
struct LocalArgs {
  std::string config_path;             // empty: built-in defaults
  bool resume = false;                 // --resume: the learner resumes from run.dir
  bool help = false;                   // --help / -h
  int64_t learners = 0;                // --learners N (>= 1); 0: not given, local.learners
  std::vector<std::string> overrides;  // "section.key=value", in command-line order
};

// Accepts `--config F` / `--config=F`, `--learners N` / `--learners=N`, `--resume`,
// `--help`, `-h`, `--k=v` and `--k v`. A positional argument, a flag missing its value
// or a --learners value that is not an integer >= 1 is an error.
absl::StatusOr<LocalArgs> ParseLocalArgs(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOCAL_H_
