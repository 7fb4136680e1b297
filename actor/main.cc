// pmdrl-actor: the rollout actor process. Leases prompts from the coordinator, samples
// groups of completions with the current policy and streams them to the verifiers.
//
//   pmdrl-actor --config run.yaml [--actor.name=actor-1 --actor.threads=2 ...]
//
// Exit status: 0 when the run is finished or on SIGINT/SIGTERM, 1 on a fatal error,
// 2 on a configuration error.
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "actor/actor.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/rpc.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  pmdrl::InstallStopSignals();
  // The weight stream's read buffers are reused instead of faulted in afresh per read.
  pmdrl::RetainFreedHeapMemory(size_t{128} << 20);

  std::vector<std::string> positional;
  absl::StatusOr<pmdrl::Config> config = pmdrl::ConfigFromArgs(argc, argv, &positional);
  if (!config.ok()) {
    if (absl::IsNotFound(config.status())) {  // --help
      std::printf("usage: pmdrl-actor [--config FILE] [--section.key=value ...]\n\n%s",
                  std::string(config.status().message()).c_str());
      return 0;
    }
    std::fprintf(stderr, "pmdrl-actor: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (!positional.empty()) {
    std::fprintf(stderr, "pmdrl-actor: unexpected argument '%s'\n", positional[0].c_str());
    return 2;
  }
  const pmdrl::ActorConfig& ac = config->actor;
  pmdrl::InitLogging("actor", ac.name);

  pmdrl::LimitBlasThreads();
  at::set_num_threads(static_cast<int>(ac.threads));

  absl::StatusOr<std::string> token = pmdrl::LoadToken(config->run.token_file);
  if (!token.ok()) {
    spdlog::error("{}", std::string(token.status().message()));
    return 2;
  }
  if (absl::Status s = pmdrl::ConfigureTransportSecurity(
          {config->run.tls_cert, config->run.tls_key, config->run.tls_ca});
      !s.ok()) {
    spdlog::error("{}", std::string(s.message()));
    return 2;
  }

  pmdrl::MetricsRegistry metrics("actor");
  std::unique_ptr<pmdrl::MetricsServer> metrics_server;
  if (ac.metrics_port > 0) {
    auto server = pmdrl::MetricsServer::Start(metrics, config->run.metrics_host,
                                              static_cast<int>(ac.metrics_port));
    if (!server.ok()) {
      spdlog::error("{}", std::string(server.status().message()));
      return 1;
    }
    metrics_server = *std::move(server);
  }

  pmdrl::ActorOptions options;
  options.config = ac;
  options.run_seed = config->run.seed;
  options.token = *token;
  pmdrl::Actor actor(std::move(options), &metrics);

  std::atomic<bool> done{false};
  std::thread signal_thread([&] {
    while (!done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (pmdrl::StopRequested()) {
        spdlog::info("signal {}: stopping", pmdrl::StopSignal());
        actor.Stop();
        return;
      }
    }
  });

  const absl::Status status = actor.Run();
  done.store(true);
  signal_thread.join();
  if (!status.ok()) spdlog::error("actor failed: {}", status.ToString());

  metrics.WriteRunSnapshot(config->run.dir, ac.name.empty() ? "actor" : ac.name);
  spdlog::info("exiting");
  return status.ok() ? 0 : 1;
}
