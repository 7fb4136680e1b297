#include "learner/learner_setup.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "learner/training/communicator.h"
#include "learner/training/peak_memory.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

namespace fs = std::filesystem;

absl::StatusOr<std::string> PrepareRunDir(const Config& config) {
  std::error_code ec;
  fs::create_directories(config.run.dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create run.dir ", config.run.dir, ": ", ec.message()));
  }
  std::string config_yaml = ConfigToYaml(config);
  spdlog::info("effective config:\n{}", config_yaml);
  if (config.learner.rank == 0)
    std::ofstream(fs::path(config.run.dir) / "config.yaml") << config_yaml;
  return config_yaml;
}

absl::Status CheckMicroBatchBudget(const Config& config, const PromptSource& source) {
  const int64_t budget = config.learner.micro_batch_tokens;
  if (budget <= 0) return absl::OkStatus();
  size_t longest = 0;
  for (int64_t i = 0; i < source.ItemsPerEpoch(); ++i) {
    longest = std::max(longest, source.Get(0, i).tokens.size());
  }
  if (static_cast<int64_t>(longest) < budget) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("learner.micro_batch_tokens: ", budget, " tokens cannot hold the dataset's ",
                   "longest prompt (", longest, " tokens) and a response; raise it above ", longest,
                   " or set 0 for no limit"));
}

absl::StatusOr<LearnerStart> LoadLearnerStart(const Config& config, const PromptSource& source) {
  LearnerStart start;
  if (!config.learner.resume.empty()) {
    absl::StatusOr<std::string> found = FindCheckpoint(config.run.dir, config.learner.resume);
    if (!found.ok()) return found.status();
    start.checkpoint = *found;
    absl::StatusOr<TrainerState> st = ReadTrainerState(start.checkpoint);
    if (!st.ok()) return st.status();
    start.state = *std::move(st);
  }
  const std::string model_dir = start.checkpoint.empty() ? config.model.path : start.checkpoint;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      Trainer::Create(config, source.tokenizer(), model_dir);
  if (!trainer.ok()) {
    return absl::Status(trainer.status().code(),
                        absl::StrCat("cannot create the policy: ", trainer.status().message()));
  }
  start.trainer = *std::move(trainer);
  start.table = LeaseTable(static_cast<int64_t>(source.ItemsPerEpoch()));
  if (start.checkpoint.empty()) return start;

  if (absl::Status s = start.trainer->LoadOptimizer(start.checkpoint); !s.ok()) return s;
  start.trainer->set_optimizer_steps(start.state.optimizer_steps);
  absl::StatusOr<LeaseTableState> ls = LeaseStateFromJson(start.state.lease_state_json);
  if (!ls.ok()) {
    return absl::Status(ls.status().code(),
                        absl::StrCat(start.checkpoint, ": ", ls.status().message()));
  }
  start.table = LeaseTable::Restore(*ls);
  absl::StatusOr<std::vector<v1::Group>> buffered = ReadBufferedGroups(start.checkpoint);
  if (!buffered.ok()) return buffered.status();
  start.buffered = *std::move(buffered);
  spdlog::info("resumed from {}: update {}, version {}, data cursor ({}, {}), {} buffered groups",
               start.checkpoint, start.state.update, start.state.version,
               start.table.cursor().epoch, start.table.cursor().index, start.buffered.size());
  return start;
}

absl::StatusOr<CoordinatorOptions> MakeCoordinatorOptions(const Config& config,
                                                          const ModelConfig& model) {
  CoordinatorOptions o;
  o.group_size = config.learner.group_size;
  o.prompts_per_update = config.learner.prompts_per_update;
  o.max_staleness = config.learner.max_staleness;
  o.lease_ttl_ms = static_cast<int64_t>(config.learner.lease_ttl_seconds * 1000);
  o.limits.vocab_size = model.vocab_size;
  o.limits.max_prompt_tokens = model.max_position_embeddings;
  o.limits.max_response_tokens = config.actor.max_new_tokens;
  o.limits.group_size = config.learner.group_size;
  absl::StatusOr<std::optional<double>> timeout_reward =
      TimeoutRewardValue(config.verifier.timeout_reward);
  if (!timeout_reward.ok()) return timeout_reward.status();
  o.requeue_timeouts = !timeout_reward->has_value();
  o.timeout_reward = static_cast<float>(timeout_reward->value_or(config.verifier.reward_incorrect));
  absl::StatusOr<std::string> json = ModelConfigToJson(model);
  if (!json.ok()) return json.status();
  o.model_config_json = *std::move(json);
  return o;
}

absl::StatusOr<std::unique_ptr<Communicator>> JoinLearnerRanks(const Config& config,
                                                               const std::string& token,
                                                               Trainer& trainer) {
  const int rank = static_cast<int>(config.learner.rank);
  CommOptions co;
  co.rank = rank;
  co.world_size = static_cast<int>(config.learner.world_size);
  co.store_address = config.learner.rendezvous;
  co.token = token;
  co.backend = config.learner.backend == LearnerBackend::kAuto
                   ? (config.learner.device == "cpu" ? "gloo" : "nccl")
                   : std::string(Name(config.learner.backend));
  if (config.learner.device.rfind("cuda:", 0) == 0) {
    co.cuda_device = std::stoi(config.learner.device.substr(5));
  }
  co.bucket_bytes = config.learner.bucket_mb << 20;
  co.timeout = std::chrono::milliseconds(
      static_cast<int64_t>(config.learner.collective_timeout_seconds * 1000));
  spdlog::info("joining {} learner ranks through {} ({})", co.world_size, co.store_address,
               co.backend);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(co);
  if (!comm.ok()) {
    return absl::Status(comm.status().code(),
                        absl::StrCat("rank ", rank, ": cannot join the other learner ranks: ",
                                     comm.status().message()));
  }
  if (absl::Status s = trainer.BroadcastWeights(comm->get()); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("rank ", rank, ": weight broadcast failed: ", s.message()));
  }
  return comm;
}

absl::Status RunFollower(const Config& config, Trainer& trainer, Communicator& comm,
                         MetricsRegistry& metrics) {
  const int rank = comm.rank();
  std::unique_ptr<MetricsServer> http;
  if (config.learner.metrics_port > 0) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> h = MetricsServer::Start(
        metrics, config.run.metrics_host, static_cast<int>(config.learner.metrics_port));
    if (h.ok()) http = *std::move(h);
  }
  auto& m_update = metrics.Gauge("pmdrl_learner_update", "policy updates done");
  auto& m_step = metrics.Gauge("pmdrl_learner_step_seconds", "seconds of the last update");
  auto& m_peak = metrics.Gauge("pmdrl_learner_peak_memory_bytes",
                               "peak resident (cpu) or allocated (cuda) bytes of the last update");
  spdlog::info("rank {} of {} ready", rank, comm.world_size());
  absl::Status result;
  while (true) {
    absl::StatusOr<std::string> payload = comm.Scatter({});
    if (!payload.ok()) {
      result = absl::Status(payload.status().code(),
                            absl::StrCat("rank ", rank, ": lost contact with the other learner ",
                                         "ranks: ", payload.status().message()));
      break;
    }
    v1::RankShare share;
    if (!share.ParseFromString(*payload)) {
      result = absl::DataLossError(absl::StrCat("rank ", rank, ": malformed share from rank 0"));
      break;
    }
    if (share.stop()) {
      spdlog::info("rank {}: rank 0 says training is over", rank);
      break;
    }
    if (share.gather_optimizer()) {  // rank 0 is about to checkpoint a sharded optimizer
      if (absl::Status s = trainer.GatherOptimizerState(&comm); !s.ok()) {
        result = absl::Status(s.code(), absl::StrCat("rank ", rank, ": ", s.message()));
        break;
      }
      continue;
    }
    if (share.mini_batches_size() == 0) continue;  // rank 0 is waiting for data
    ResetPeakMemory(config.learner.device);
    absl::StatusOr<UpdateStats> stats = trainer.TrainShare(share, &comm);
    if (!stats.ok()) {
      result = absl::Status(stats.status().code(),
                            absl::StrCat("rank ", rank, ": update ", share.update(),
                                         " failed: ", stats.status().message()));
      break;
    }
    m_update.Set(static_cast<double>(share.update()));
    m_step.Set(stats->seconds);
    m_peak.Set(static_cast<double>(PeakMemoryBytes(config.learner.device)));
    const int64_t update = static_cast<int64_t>(share.update());
    if (config.learner.checksum_every > 0 && update % config.learner.checksum_every == 0) {
      if (absl::Status s = trainer.CheckReplicas(&comm, update); !s.ok()) {
        result = s;
        break;
      }
    }
  }
  metrics.WriteRunSnapshot(config.run.dir, absl::StrCat("learner-", rank));
  return result;
}

}  // namespace pmdrl
