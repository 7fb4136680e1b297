// pmdrl-verifier: serves Verifier.ScoreGroups, forwarding scored groups to the learner.
//   pmdrl-verifier [--config run.yaml] [--verifier.name=verifier-1] [--section.key=value ...]
// `pmdrl-verifier --grader-worker` is the hidden mode its grader processes run in
// (verifier/grader_process_pool.h); it is not meant to be started by hand.
// Exit codes: 0 after SIGINT/SIGTERM (or --help), 2 on a configuration or token error,
// 1 when a port cannot be bound or the grader processes cannot start.
#include <grpcpp/server.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/rpc.h"
#include "verifier/grader_process_pool.h"
#include "verifier/verifier_service.h"

namespace pmdrl {
namespace {

int Run(int argc, char** argv) {
  // SIGINT/SIGTERM only record themselves (common/process.h); the main thread polls
  // for them once serving. A signal that arrives earlier is kept and ends the serving
  // at once.
  InstallStopSignals();

  std::vector<std::string> positional;
  absl::StatusOr<Config> config = ConfigFromArgs(argc, argv, &positional);
  if (!config.ok()) {
    if (absl::IsNotFound(config.status())) {  // --help
      std::cout << config.status().message() << std::endl;
      return 0;
    }
    std::cerr << "pmdrl-verifier: " << config.status().message() << std::endl;
    return 2;
  }
  if (!positional.empty()) {
    std::cerr << "pmdrl-verifier: unexpected argument \"" << positional.front()
              << "\" (options are --section.key=value)" << std::endl;
    return 2;
  }
  const VerifierConfig& vc = config->verifier;
  InitLogging("verifier", vc.name);
  spdlog::debug("effective config:\n{}", ConfigToYaml(*config));

  absl::StatusOr<std::string> token = LoadToken(config->run.token_file);
  if (!token.ok()) {
    std::cerr << "pmdrl-verifier: " << token.status().message() << std::endl;
    return 2;
  }
  if (absl::Status s = ConfigureTransportSecurity(
          {config->run.tls_cert, config->run.tls_key, config->run.tls_ca});
      !s.ok()) {
    std::cerr << "pmdrl-verifier: " << s.message() << std::endl;
    return 2;
  }

  MetricsRegistry metrics("verifier");
  VerifierOptions options;
  options.scorer.verifier_id = vc.name;
  options.scorer.default_task = std::string(Name(config->task.name));
  options.scorer.timeout = std::chrono::milliseconds(vc.timeout_ms);
  options.scorer.reward_correct = static_cast<float>(vc.reward_correct);
  options.scorer.reward_incorrect = static_cast<float>(vc.reward_incorrect);
  options.scorer.threads = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  // The grader processes run this very binary (whatever its path now), in worker mode.
  options.scorer.grader_worker.executable = "/proc/self/exe";
  options.scorer.grader_worker.argv = {"pmdrl-verifier", "--grader-worker"};
  options.scorer.grader_worker.processes =
      vc.grader_processes > 0 ? static_cast<int>(vc.grader_processes)
                              : std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  options.learner = vc.learner;
  options.token = *token;
  options.limits = VerifierLimitsFor(*config);
  VerifierService service(std::move(options), &metrics);
  if (!service.scorer().init_status().ok()) {
    std::cerr << "pmdrl-verifier: " << service.scorer().init_status().message() << std::endl;
    return 1;
  }

  std::atomic<bool> serving{false};
  std::unique_ptr<MetricsServer> metrics_server;
  if (vc.metrics_port > 0) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> started = MetricsServer::Start(
        metrics, config->run.metrics_host, static_cast<int>(vc.metrics_port), [&serving] {
          return serving.load() ? absl::OkStatus()
                                : absl::UnavailableError("verifier is not serving");
        });
    if (!started.ok()) {
      spdlog::error("metrics endpoint: {}", std::string(started.status().message()));
      return 1;
    }
    metrics_server = *std::move(started);
  }

  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = StartServer(vc.listen, {&service}, &port);
  if (!server.ok()) {
    spdlog::error("verifier: {}", std::string(server.status().message()));
    return 1;
  }
  serving = true;
  const std::string host = vc.listen.substr(0, vc.listen.rfind(':'));
  spdlog::info("verifier {} listening on {}:{} (learner {}, task {}, timeout {} ms)", vc.name, host,
               port, vc.learner, Name(config->task.name), vc.timeout_ms);

  while (!StopRequested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int signal_number = StopSignal();
  spdlog::info("verifier: {} received, shutting down", strsignal(signal_number));
  serving = false;
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));

  metrics.WriteRunSnapshot(config->run.dir, vc.name);
  return 0;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) {
  // Worker mode before anything else: no config, no logging set-up, no threads.
  if (argc >= 2 && std::strcmp(argv[1], "--grader-worker") == 0) {
    const bool test_hooks = argc >= 3 && std::strcmp(argv[2], "--grader-test-hooks") == 0;
    return pmdrl::RunGraderWorker(STDIN_FILENO, STDOUT_FILENO, test_hooks);
  }
  return pmdrl::Run(argc, argv);
}
