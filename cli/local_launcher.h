// `pmdrl local`'s launcher: starts the cluster's child processes (learner ranks, then
// verifiers and actors once rank 0 answers), watches them and the learner's progress,
// serves SIGUSR1/SIGUSR2 (add/remove an actor), stops everything on the end of training,
// a failure or SIGINT/SIGTERM, and summarises a finished run. Writes <run.dir>/token,
// <run.dir>/tls/ (the run's CA and certificate, unless local.tls is false or run.tls_*
// name files), cluster.json and the children's logs.
// Ownership: the launcher owns the child processes it starts: it signals only their
// pids and reaps every one of them before it returns (SIGKILL for any left by an early
// return). Runs on the calling thread, which must be the only waitpid caller for them.
#ifndef PMDRL_CLI_LOCAL_LAUNCHER_H_
#define PMDRL_CLI_LOCAL_LAUNCHER_H_

#include "cli/local.h"
#include "common/config.h"

namespace pmdrl {

// Runs the cluster of `config` with `args`' config path, overrides and --resume.
// Returns the exit code of `pmdrl local` (cli/local.h: RunLocal).
int RunLocalCluster(Config config, LocalArgs args);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOCAL_LAUNCHER_H_
