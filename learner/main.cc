// pmdrl-learner: learner rank 0. Serves the Coordinator and Learner services, trains
// the policy with PMD-mean on the rollout batches the verifiers forward, publishes every
// new version to the actors, evaluates, checkpoints, and writes <run.dir>/metrics.csv.
// Ranks >= 1 train their shares of rank 0's batches. This file only wires the parts:
// learner/learner_setup.h starts a run, learner/training_loop.h runs it.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/rpc.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/learner_service.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/coordinator/weight_feed_service.h"
#include "learner/coordinator/weight_publisher.h"
#include "learner/learner_setup.h"
#include "learner/run_outputs.h"
#include "learner/training/communicator.h"
#include "learner/training_loop.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

// Logs `status` (its message is the whole line) and returns `exit_code`.
int Fail(const absl::Status& status, int exit_code) {
  spdlog::error("{}", status.message());
  return exit_code;
}

int Run(int argc, char** argv) {
  InstallStopSignals();
  LimitBlasThreads();

  std::vector<std::string> positional;
  absl::StatusOr<Config> cfg = ConfigFromArgs(argc, argv, &positional);
  if (!cfg.ok()) {
    if (absl::IsNotFound(cfg.status())) {
      std::cout << "usage: pmdrl-learner --config FILE [--section.key=value ...]\n\n"
                << cfg.status().message();
      return 0;
    }
    std::cerr << "pmdrl-learner: " << cfg.status().message() << "\n";
    return 2;
  }
  if (!positional.empty()) {
    std::cerr << "pmdrl-learner: unexpected argument '" << positional[0] << "'\n";
    return 2;
  }
  const Config& config = *cfg;
  const int rank = static_cast<int>(config.learner.rank);
  InitLogging("learner", absl::StrCat("rank", rank));
  absl::StatusOr<std::string> token = LoadToken(config.run.token_file);
  if (!token.ok()) return Fail(token.status(), 2);
  if (absl::Status s =
          ConfigureTransportSecurity({config.run.tls_cert, config.run.tls_key, config.run.tls_ca});
      !s.ok()) {
    return Fail(s, 2);
  }
  absl::StatusOr<std::string> config_yaml = PrepareRunDir(config);
  if (!config_yaml.ok()) return Fail(config_yaml.status(), 1);

  absl::StatusOr<std::unique_ptr<PromptSource>> source = MakePromptSource(config);
  if (!source.ok()) return Fail(source.status(), 2);
  if (absl::Status s = CheckMicroBatchBudget(config, **source); !s.ok()) return Fail(s, 2);
  absl::StatusOr<LearnerStart> start = LoadLearnerStart(config, **source);
  if (!start.ok()) return Fail(start.status(), 2);
  Trainer& trainer = *start->trainer;
  const bool resumed = !start->checkpoint.empty();

  MetricsRegistry metrics("learner");
  std::unique_ptr<Communicator> comm;
  if (config.learner.world_size > 1) {
    absl::StatusOr<std::unique_ptr<Communicator>> joined =
        JoinLearnerRanks(config, *token, trainer);
    if (!joined.ok()) return Fail(joined.status(), 1);
    comm = *std::move(joined);
    if (rank > 0) {
      absl::Status s = RunFollower(config, trainer, *comm, metrics);
      return s.ok() ? 0 : Fail(s, 1);
    }
  }
  absl::StatusOr<CoordinatorOptions> copts = MakeCoordinatorOptions(config, trainer.model_config());
  if (!copts.ok()) return Fail(copts.status(), 1);
  GroupLog group_log;
  group_log.Open((fs::path(config.run.dir) / "groups.csv").string(), resumed);
  group_log.AttachTo(&*copts);
  Coordinator coordinator(*std::move(copts), source->get(), std::move(start->table), &metrics);
  coordinator.RestoreBuffer(std::move(start->buffered));
  WeightPublisher publisher({.delta = config.learner.weight_delta, .metrics = &metrics});
  TrainingLoop loop({.config = &config,
                     .source = source->get(),
                     .trainer = &trainer,
                     .coordinator = &coordinator,
                     .publisher = &publisher,
                     .metrics = &metrics,
                     .comm = comm.get(),
                     .config_yaml = *config_yaml},
                    start->state, resumed);

  CoordinatorService coordinator_service(&coordinator, *token, &metrics,
                                         [&loop](v1::StatusResponse* r) { loop.FillStatus(r); });
  LearnerService learner_service(&coordinator, *token, &metrics);
  WeightFeedService weight_feed(&publisher, *token,
                                static_cast<size_t>(config.learner.weight_chunk_bytes), &metrics);
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = StartServer(
      config.learner.listen, {&coordinator_service, &weight_feed, &learner_service}, &port);
  absl::StatusOr<std::unique_ptr<MetricsServer>> http = std::unique_ptr<MetricsServer>();
  if (server.ok() && config.learner.metrics_port > 0) {
    http = MetricsServer::Start(metrics, config.run.metrics_host,
                                static_cast<int>(config.learner.metrics_port));
  }
  if (!server.ok()) return Fail(server.status(), 1);
  if (!http.ok()) return Fail(http.status(), 1);
  spdlog::info("serving Coordinator, WeightFeed and Learner on {} (port {})", config.learner.listen,
               port);

  if (absl::Status s = loop.Start(); !s.ok()) return Fail(s, 1);
  absl::Status trained = loop.Run();
  if (!trained.ok()) spdlog::error("{}", trained.message());
  // Keep serving (late groups, status) until told to stop.
  while (trained.ok() && !StopRequested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  coordinator.Finish();
  publisher.Close();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  metrics.WriteRunSnapshot(config.run.dir, "learner");
  return trained.ok() ? 0 : 1;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) {
  pmdrl::UsePassiveOpenMpWait(argv);
  return pmdrl::Run(argc, argv);
}
