#include "cli/local_ports.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pmdrl {

namespace fs = std::filesystem;

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

// The part every child shares: binary, --config, the user's overrides, the token file
// and the run's certificates.
std::vector<std::string> CommonPrefix(const ClusterPlan& plan, const std::string& binary) {
  std::vector<std::string> argv = {binary};
  if (!plan.config_path.empty()) {
    argv.push_back("--config");
    argv.push_back(plan.config_path);
  }
  for (const std::string& o : plan.overrides) argv.push_back("--" + o);
  if (!plan.token_file.empty()) argv.push_back("--run.token_file=" + plan.token_file);
  if (!plan.tls_cert.empty()) {
    argv.push_back("--run.tls_cert=" + plan.tls_cert);
    argv.push_back("--run.tls_key=" + plan.tls_key);
    argv.push_back("--run.tls_ca=" + plan.tls_ca);
  }
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

}  // namespace pmdrl
