// `pmdrl local`'s ports and command lines: the loopback ports every process of the
// cluster gets, the command line of each child (learner ranks, verifiers, actors), and
// where their binaries are. Pure functions, apart from PickPorts asking the kernel for
// free ports; they own nothing and start nothing (cli/local_launcher.h does).
#ifndef PMDRL_CLI_LOCAL_PORTS_H_
#define PMDRL_CLI_LOCAL_PORTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// Loopback ports of a cluster: every process gets a metrics port, servers a port.
struct ClusterPorts {
  int learner = 0;
  int learner_metrics = 0;
  std::vector<int> verifier;          // one per verifier
  std::vector<int> verifier_metrics;  // one per verifier
  std::vector<int> actor_metrics;     // one per actor
  // Only with more than one learner rank (else 0 and empty):
  int rendezvous = 0;                     // the collectives' store, served by rank 0
  std::vector<int> learner_rank_metrics;  // ranks 1..N-1, [r - 1] for rank r
};

// base_port > 0: consecutive ports from it (learner, learner metrics, then each
// verifier's port and metrics port, then each actor's metrics port, then - with
// learners > 1 - the rendezvous port and each rank >= 1's metrics port). Otherwise
// free ports that the kernel hands out for 127.0.0.1:0, all distinct.
absl::StatusOr<ClusterPorts> PickPorts(int64_t base_port, int verifiers, int actors,
                                       int learners = 1);

// Everything needed to build the children's command lines.
struct ClusterPlan {
  std::string learner_bin, verifier_bin, actor_bin;
  std::string config_path;             // passed as --config when non-empty
  std::vector<std::string> overrides;  // the user's "section.key=value"
  std::string token_file;              // passed as --run.token_file when non-empty
  // Passed as --run.tls_cert/--run.tls_key/--run.tls_ca when cert is non-empty: the
  // certificates `pmdrl local` made for the run (cli/local_tls.h).
  std::string tls_cert, tls_key, tls_ca;
  bool resume = false;
  int learners = 1;  // data-parallel learner ranks; 1: no rank flags at all
  ClusterPorts ports;
};

// Command lines (argv, binary first). The user's overrides come before the
// launcher's per-process flags (listen addresses, names, ports), so the launcher's
// win: later flags override earlier ones.
// LearnerCommand is rank 0's (it serves actors and verifiers); with plan.learners > 1
// it also gets the rank, world size and rendezvous flags.
std::vector<std::string> LearnerCommand(const ClusterPlan& plan);
// Rank `rank` in 1..plan.learners-1: joins the collectives only, listens on an
// ephemeral loopback port and serves metrics on ports.learner_rank_metrics[rank - 1].
// Rank 0 gives LearnerCommand(plan).
std::vector<std::string> LearnerRankCommand(const ClusterPlan& plan, int rank);
std::vector<std::string> VerifierCommand(const ClusterPlan& plan, int index);
std::vector<std::string> ActorCommand(const ClusterPlan& plan, int index);

// Where a binary lives: $PMDRL_BIN_DIR/<name>, $PMDRL_BIN_DIR/<subdir>/<name> (when
// `env_bin_dir` is non-empty), then <exe_dir>/../<subdir>/<name> (the build tree) and
// <exe_dir>/<name> (an install prefix). The error lists every path tried.
absl::StatusOr<std::string> FindBinary(const std::string& name, const std::string& subdir,
                                       const std::string& exe_dir, const std::string& env_bin_dir);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOCAL_PORTS_H_
