#include "cli/local.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/local_launcher.h"
#include "common/config.h"
#include "common/log.h"

namespace pmdrl {
namespace {

constexpr const char* kUsage =
    "usage: pmdrl local [--config FILE] [--resume] [--learners N] [--section.key=value ...]\n"
    "\n"
    "Starts a whole cluster on this machine: local.learners data-parallel learner ranks\n"
    "(rank 0 serves actors and verifiers), local.verifiers verifiers and local.actors\n"
    "actors, all bound to 127.0.0.1 and sharing a fresh random bearer token (written to\n"
    "<run.dir>/token, mode 0600). They talk mutual TLS with a throw-away CA and\n"
    "certificate that openssl makes in <run.dir>/tls for each run (--local.tls=false:\n"
    "plaintext; run.tls_cert, run.tls_key, run.tls_ca: your own files instead). Each\n"
    "child logs to <run.dir>/logs/<name>.log (learner rank r > 0: learner-<r>.log);\n"
    "pids, ports and the certificates' paths are in <run.dir>/cluster.json.\n"
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

}  // namespace

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
  return RunLocalCluster(*std::move(config), *std::move(args));
}

}  // namespace pmdrl
