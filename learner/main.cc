// pmdrl-learner: learner rank 0. Serves the Coordinator and Learner services, trains
// the policy with PMD-mean on the rollout batches the verifiers forward, publishes every
// new version to the actors, evaluates, checkpoints, and writes <run.dir>/metrics.csv.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/model_config.h"
#include "common/process.h"
#include "common/rpc.h"
#include "learner/checkpoint.h"
#include "learner/communicator.h"
#include "learner/coordinator.h"
#include "learner/learner_service.h"
#include "learner/peak_memory.h"
#include "learner/prompt_source.h"
#include "learner/trainer.h"
#include "learner/weight_feed_service.h"
#include "learner/weight_publisher.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

// The tokenizer side of a Hugging Face model directory, copied next to a checkpoint's
// weights so that the checkpoint is a complete model directory (pmdrl generate,
// transformers, a later run's model.path).
void CopyTokenizerFiles(const std::string& model_dir, const std::string& checkpoint) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    const fs::path from = fs::path(model_dir) / name;
    if (!fs::exists(from)) continue;
    std::error_code ec;
    fs::copy_file(from, fs::path(checkpoint) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) spdlog::warn("cannot copy {} into {}: {}", from.string(), checkpoint, ec.message());
  }
}

// <run.dir>/samples.jsonl: one scored group per update (prompt, reference, every
// completion's text, tokens, reward and outcome), to see what the policy writes.
class SampleLog {
 public:
  void Open(const std::string& path, bool append) {
    out_.open(path, append ? std::ios::app : std::ios::trunc);
  }
  void Write(int64_t update, uint64_t version, const v1::Group& g) {
    if (!out_) return;
    nlohmann::json j;
    j["update"] = update;
    j["version"] = version;
    j["policy_version"] = g.policy_version();
    j["prompt"] = g.prompt_text();
    j["reference"] = g.reference();
    nlohmann::json completions = nlohmann::json::array();
    for (const v1::Completion& c : g.completions()) {
      completions.push_back({{"text", c.text()},
                             {"tokens", std::vector<int32_t>(c.tokens().begin(), c.tokens().end())},
                             {"reward", c.reward()},
                             {"stopped", c.stopped()},
                             {"outcome", v1::Outcome_Name(c.outcome())}});
    }
    j["completions"] = std::move(completions);
    // Model text may hold invalid UTF-8 (a character split by the length limit).
    out_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

// What GetStatus reports of the training side.
struct Progress {
  std::mutex mu;
  uint64_t update = 0;
  double mean_reward = 0;
  double eval_accuracy = -1;
  double base_accuracy = -1;
  std::vector<double> evaluations;
  int64_t eval_last = 3;
  double tokens_per_second = 0;
  double elapsed_offset = 0;  // seconds trained before a resume
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  double Elapsed() {
    return elapsed_offset +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  double FinalAccuracy() {
    if (evaluations.empty()) return -1;
    size_t n = std::min<size_t>(evaluations.size(), static_cast<size_t>(eval_last));
    return std::accumulate(evaluations.end() - n, evaluations.end(), 0.0) / n;
  }
};

// <run.dir>/metrics.csv: one row per update (row 0: the base evaluation).
class MetricsCsv {
 public:
  absl::Status Open(const std::string& path, bool append) {
    bool exists = fs::exists(path);
    out_.open(path, append ? std::ios::app : std::ios::trunc);
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path));
    if (!append || !exists) {
      out_ << "update,version,elapsed_seconds,mean_reward,eval_accuracy,loss,grad_norm,"
              "mixed_groups_fraction,trained_tokens_per_second,sampled_tokens_per_second,"
              "staleness_mean,logprob_mismatch,groups_accepted,groups_dropped_stale,"
              "mean_abs_delta,entropy,eval_avg_at_k,eval_pass_at_k,importance_weight_mean,"
              "peak_memory_bytes,oversize_sequences\n";
    }
    out_.flush();
    return absl::OkStatus();
  }
  void Row(int64_t update, uint64_t version, double elapsed, const UpdateStats* s,
           const EvalResult* eval, const Coordinator::Counts& c, double sampled_tps) {
    auto cell = [](double v) { return v >= 0 ? absl::StrFormat("%.4f", v) : std::string(); };
    const std::string e = eval != nullptr ? cell(eval->greedy_accuracy) : "";
    const std::string avg = eval != nullptr ? cell(eval->avg_at_k) : "";
    const std::string pass = eval != nullptr ? cell(eval->pass_at_k) : "";
    if (s == nullptr) {
      out_ << absl::StrFormat("%d,%d,%.2f,,%s,,,,,,,,%d,%d,,,%s,%s,,,\n", update, version, elapsed,
                              e, c.accepted, c.stale, avg, pass);
    } else {
      out_ << absl::StrFormat(
          "%d,%d,%.2f,%.4f,%s,%.6g,%.6g,%.4f,%.1f,%.1f,%.3f,%.6g,%d,%d,%.6g,%.6g,%s,%s,%.4f,%d,%"
          "d\n",
          update, version, elapsed, s->mean_reward, e, s->loss, s->grad_norm, s->mixed_fraction,
          s->seconds > 0 ? s->trained_tokens / s->seconds : 0.0, sampled_tps, s->staleness_mean,
          s->logprob_mismatch, c.accepted, c.stale, s->mean_abs_delta, s->entropy, avg, pass,
          s->importance_weight_mean, s->peak_memory_bytes, s->oversize_sequences);
    }
    out_.flush();
  }

 private:
  std::ofstream out_;
};

// learner.micro_batch_tokens must hold every prompt of the dataset with at least one
// response token: a budget below that would put every completion of the prompt into a
// micro-batch of its own, for the whole run. (Longer completions are only counted.)
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

// Ranks >= 1: train on the shares rank 0 hands out until it says stop. A rank 0 that
// dies shows as a failed collective after learner.collective_timeout_seconds at most.
int RunFollower(const Config& config, Trainer& trainer, Communicator& comm,
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
  int exit_code = 0;
  while (true) {
    absl::StatusOr<std::string> payload = comm.Scatter({});
    if (!payload.ok()) {
      spdlog::error("rank {}: lost contact with the other learner ranks: {}", rank,
                    payload.status().message());
      exit_code = 1;
      break;
    }
    v1::RankShare share;
    if (!share.ParseFromString(*payload)) {
      spdlog::error("rank {}: malformed share from rank 0", rank);
      exit_code = 1;
      break;
    }
    if (share.stop()) {
      spdlog::info("rank {}: rank 0 says training is over", rank);
      break;
    }
    if (share.gather_optimizer()) {  // rank 0 is about to checkpoint a sharded optimizer
      if (absl::Status s = trainer.GatherOptimizerState(&comm); !s.ok()) {
        spdlog::error("rank {}: {}", rank, s.message());
        exit_code = 1;
        break;
      }
      continue;
    }
    if (share.mini_batches_size() == 0) continue;  // rank 0 is waiting for data
    ResetPeakMemory(config.learner.device);
    absl::StatusOr<UpdateStats> stats = trainer.TrainShare(share, &comm);
    if (!stats.ok()) {
      spdlog::error("rank {}: update {} failed: {}", rank, share.update(),
                    stats.status().message());
      exit_code = 1;
      break;
    }
    m_update.Set(static_cast<double>(share.update()));
    m_step.Set(stats->seconds);
    m_peak.Set(static_cast<double>(PeakMemoryBytes(config.learner.device)));
    const int64_t update = static_cast<int64_t>(share.update());
    if (config.learner.checksum_every > 0 && update % config.learner.checksum_every == 0) {
      if (absl::Status s = trainer.CheckReplicas(&comm, update); !s.ok()) {
        spdlog::error("{}", s.message());
        exit_code = 1;
        break;
      }
    }
  }
  std::error_code ec;
  fs::create_directories(fs::path(config.run.dir) / "metrics", ec);
  (void)metrics.WriteSnapshot(
      (fs::path(config.run.dir) / "metrics" / absl::StrCat("learner-", rank, ".prom")).string());
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
  const int world = static_cast<int>(config.learner.world_size);
  InitLogging("learner", absl::StrCat("rank", rank));
  absl::StatusOr<std::string> token = LoadToken(config.run.token_file);
  if (!token.ok()) {
    spdlog::error("{}", token.status().message());
    return 2;
  }
  std::error_code ec;
  fs::create_directories(config.run.dir, ec);
  if (ec) {
    spdlog::error("cannot create run.dir {}: {}", config.run.dir, ec.message());
    return 1;
  }
  const std::string config_yaml = ConfigToYaml(config);
  spdlog::info("effective config:\n{}", config_yaml);
  if (rank == 0) std::ofstream(fs::path(config.run.dir) / "config.yaml") << config_yaml;

  absl::StatusOr<std::unique_ptr<PromptSource>> source = MakePromptSource(config);
  if (!source.ok()) {
    spdlog::error("{}", source.status().message());
    return 2;
  }
  if (absl::Status s = CheckMicroBatchBudget(config, **source); !s.ok()) {
    spdlog::error("{}", s.message());
    return 2;
  }

  // Resume point, if any.
  std::string checkpoint;
  TrainerState state;
  if (!config.learner.resume.empty()) {
    absl::StatusOr<std::string> found = FindCheckpoint(config.run.dir, config.learner.resume);
    if (!found.ok()) {
      spdlog::error("{}", found.status().message());
      return 2;
    }
    checkpoint = *found;
    absl::StatusOr<TrainerState> st = ReadTrainerState(checkpoint);
    if (!st.ok()) {
      spdlog::error("{}", st.status().message());
      return 2;
    }
    state = *st;
  }

  std::string model_dir = checkpoint.empty() ? config.model.path : checkpoint;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer_or =
      Trainer::Create(config, (*source)->tokenizer(), model_dir);
  if (!trainer_or.ok()) {
    spdlog::error("cannot create the policy: {}", trainer_or.status().message());
    return 2;
  }
  Trainer& trainer = **trainer_or;
  LeaseTable table(static_cast<int64_t>((*source)->ItemsPerEpoch()));
  std::vector<v1::Group> buffered;
  if (!checkpoint.empty()) {
    if (absl::Status s = trainer.LoadOptimizer(checkpoint); !s.ok()) {
      spdlog::error("{}", s.message());
      return 2;
    }
    trainer.set_optimizer_steps(state.optimizer_steps);
    absl::StatusOr<LeaseTableState> ls = LeaseStateFromJson(state.lease_state_json);
    if (!ls.ok()) {
      spdlog::error("{}: {}", checkpoint, ls.status().message());
      return 2;
    }
    table = LeaseTable::Restore(*ls);
    absl::StatusOr<std::vector<v1::Group>> bg = ReadBufferedGroups(checkpoint);
    if (!bg.ok()) {
      spdlog::error("{}", bg.status().message());
      return 2;
    }
    buffered = *std::move(bg);
    spdlog::info("resumed from {}: update {}, version {}, data cursor ({}, {}), {} buffered groups",
                 checkpoint, state.update, state.version, table.cursor().epoch,
                 table.cursor().index, buffered.size());
  }

  MetricsRegistry metrics("learner");
  std::unique_ptr<Communicator> comm;
  if (world > 1) {
    CommOptions co;
    co.rank = rank;
    co.world_size = world;
    co.store_address = config.learner.rendezvous;
    co.backend = config.learner.backend;
    if (co.backend == "auto") co.backend = config.learner.device == "cpu" ? "gloo" : "nccl";
    if (config.learner.device.rfind("cuda:", 0) == 0) {
      co.cuda_device = std::stoi(config.learner.device.substr(5));
    }
    co.bucket_bytes = config.learner.bucket_mb << 20;
    co.timeout = std::chrono::milliseconds(
        static_cast<int64_t>(config.learner.collective_timeout_seconds * 1000));
    spdlog::info("joining {} learner ranks through {} ({})", world, co.store_address, co.backend);
    absl::StatusOr<std::unique_ptr<Communicator>> c = CreateCommunicator(co);
    if (!c.ok()) {
      spdlog::error("rank {}: cannot join the other learner ranks: {}", rank, c.status().message());
      return 1;
    }
    comm = *std::move(c);
    if (absl::Status s = trainer.BroadcastWeights(comm.get()); !s.ok()) {
      spdlog::error("rank {}: weight broadcast failed: {}", rank, s.message());
      return 1;
    }
    if (rank > 0) return RunFollower(config, trainer, *comm, metrics);
  }
  CoordinatorOptions copts;
  copts.group_size = config.learner.group_size;
  copts.prompts_per_update = config.learner.prompts_per_update;
  copts.max_staleness = config.learner.max_staleness;
  copts.lease_ttl_ms = static_cast<int64_t>(config.learner.lease_ttl_seconds * 1000);
  copts.limits.vocab_size = trainer.model_config().vocab_size;
  copts.limits.max_prompt_tokens = trainer.model_config().max_position_embeddings;
  copts.limits.max_response_tokens = config.actor.max_new_tokens;
  copts.limits.group_size = config.learner.group_size;
  {
    std::string tmp = (fs::path(config.run.dir) / ".model_config.json").string();
    if (absl::Status s = WriteModelConfig(trainer.model_config(), tmp); !s.ok()) {
      spdlog::error("{}", s.message());
      return 1;
    }
    std::ifstream in(tmp);
    copts.model_config_json.assign(std::istreambuf_iterator<char>(in), {});
  }
  // groups.csv: every classified group, in arrival order (tests and audits read it).
  std::ofstream group_log((fs::path(config.run.dir) / "groups.csv").string(),
                          checkpoint.empty() ? std::ios::trunc : std::ios::app);
  if (checkpoint.empty()) {
    group_log << "actor_id,verifier_id,lease_id,epoch,index,policy_version,issued_at_version,"
                 "learner_version,outcome\n";
  }
  copts.on_group = [&group_log](const v1::Group& g, v1::AckStatus status, uint64_t version) {
    group_log << g.actor_id() << ',' << g.verifier_id() << ',' << g.lease_id() << ',' << g.epoch()
              << ',' << g.index() << ',' << g.policy_version() << ',' << g.issued_at_version()
              << ',' << version << ',' << v1::AckStatus_Name(status) << '\n';
    group_log.flush();
  };
  Coordinator coordinator(copts, source->get(), std::move(table), &metrics);
  coordinator.SetVersion(state.version);
  coordinator.RestoreBuffer(std::move(buffered));

  // The weights go to the actors in one dtype, converted once per version here.
  const WireDtype weight_dtype = *ParseWireDtype(WeightWireDtypeName(config));
  WeightPublisher publisher({.delta = config.learner.weight_delta, .metrics = &metrics});
  publisher.Publish(trainer.Snapshot(state.version, weight_dtype));

  Progress progress;
  progress.update = static_cast<uint64_t>(state.update);
  progress.base_accuracy = state.base_accuracy;
  progress.evaluations = state.evaluations;
  progress.eval_last = config.learner.eval_last;
  progress.elapsed_offset = state.elapsed_seconds;
  if (!state.evaluations.empty()) progress.eval_accuracy = state.evaluations.back();

  CoordinatorService coordinator_service(
      &coordinator, *token, &metrics, [&progress](v1::StatusResponse* r) {
        std::lock_guard<std::mutex> lock(progress.mu);
        r->set_update(progress.update);
        r->set_mean_reward(progress.mean_reward);
        r->set_eval_accuracy(progress.eval_accuracy);
        r->set_base_accuracy(progress.base_accuracy);
        r->set_final_accuracy(progress.FinalAccuracy());
        r->set_trained_tokens_per_second(progress.tokens_per_second);
        r->set_elapsed_seconds(progress.Elapsed());
      });
  LearnerService learner_service(&coordinator, *token, &metrics);
  WeightFeedService weight_feed(&publisher, *token,
                                static_cast<size_t>(config.learner.weight_chunk_bytes), &metrics);
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = StartServer(
      config.learner.listen, {&coordinator_service, &weight_feed, &learner_service}, &port);
  if (!server.ok()) {
    spdlog::error("{}", server.status().message());
    return 1;
  }
  std::unique_ptr<MetricsServer> http;
  if (config.learner.metrics_port > 0) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> h = MetricsServer::Start(
        metrics, config.run.metrics_host, static_cast<int>(config.learner.metrics_port));
    if (!h.ok()) {
      spdlog::error("{}", h.status().message());
      return 1;
    }
    http = *std::move(h);
  }
  spdlog::info("serving Coordinator, WeightFeed and Learner on {} (port {})", config.learner.listen,
               port);

  auto& m_update = metrics.Gauge("pmdrl_learner_update", "policy updates done");
  auto& m_version = metrics.Gauge("pmdrl_learner_policy_version", "current policy version");
  auto& m_loss = metrics.Gauge("pmdrl_learner_loss", "PMD-mean loss of the last update");
  auto& m_reward = metrics.Gauge("pmdrl_learner_mean_reward", "mean reward of the last batch");
  auto& m_grad = metrics.Gauge("pmdrl_learner_grad_norm", "gradient norm before clipping");
  auto& m_tps = metrics.Gauge("pmdrl_learner_tokens_per_second", "trained tokens per second");
  auto& m_step = metrics.Gauge("pmdrl_learner_step_seconds", "seconds of the last update");
  auto& m_mismatch = metrics.Gauge("pmdrl_learner_logprob_mismatch",
                                   "mean |learner - actor| token log-prob at the same version");
  auto& m_mixed =
      metrics.Gauge("pmdrl_learner_mixed_groups_ratio", "fraction of groups whose rewards differ");
  auto& m_equal = metrics.Counter("pmdrl_learner_equal_reward_groups_total",
                                  "groups whose rewards were all equal (no signal)");
  auto& m_eval = metrics.Gauge("pmdrl_learner_eval_accuracy", "held-out greedy accuracy");
  auto& m_eval_avg = metrics.Gauge("pmdrl_learner_eval_avg_at_k",
                                   "held-out mean correctness of learner.eval_k samples");
  auto& m_eval_pass = metrics.Gauge("pmdrl_learner_eval_pass_at_k",
                                    "held-out fraction of problems with a correct sample of k");
  auto& m_trained = metrics.Counter("pmdrl_learner_groups_trained_total", "groups trained on");
  auto& m_peak = metrics.Gauge("pmdrl_learner_peak_memory_bytes",
                               "peak resident (cpu) or allocated (cuda) bytes of the last update");
  auto& m_oversize =
      metrics.Counter("pmdrl_learner_oversize_sequences_total",
                      "sequences longer than learner.micro_batch_tokens, trained alone");
  auto& m_wait = metrics.Counter("pmdrl_learner_wait_seconds_total",
                                 "seconds the learner waited for rollout data");

  MetricsCsv csv;
  if (absl::Status s =
          csv.Open((fs::path(config.run.dir) / "metrics.csv").string(), !checkpoint.empty());
      !s.ok()) {
    spdlog::error("{}", s.message());
    return 1;
  }
  SampleLog samples;
  samples.Open((fs::path(config.run.dir) / "samples.jsonl").string(), !checkpoint.empty());
  const auto& held_out = (*source)->HeldOut();
  EvalResult last_eval;
  auto describe = [&](const EvalResult& r) {
    std::string d = absl::StrFormat("greedy %.1f%%", 100 * r.greedy_accuracy);
    if (r.k > 0) {
      absl::StrAppendFormat(&d, ", avg@%d %.1f%%, pass@%d %.1f%%", r.k, 100 * r.avg_at_k, r.k,
                            100 * r.pass_at_k);
    }
    absl::StrAppendFormat(&d, " (%d problems, %.0f%% unparsable)", held_out.size(),
                          100 * r.greedy_parse_errors);
    return d;
  };
  auto evaluate = [&]() {
    EvalResult r =
        trainer.Evaluate(**source, held_out, config.actor.max_new_tokens, config.learner.eval_k);
    last_eval = r;
    std::lock_guard<std::mutex> lock(progress.mu);
    progress.evaluations.push_back(r.greedy_accuracy);
    progress.eval_accuracy = r.greedy_accuracy;
    m_eval.Set(r.greedy_accuracy);
    if (r.k > 0) {
      m_eval_avg.Set(r.avg_at_k);
      m_eval_pass.Set(r.pass_at_k);
    }
    return r.greedy_accuracy;
  };

  uint64_t version = state.version;
  int64_t update = state.update;
  if (checkpoint.empty()) {
    double base = evaluate();
    {
      std::lock_guard<std::mutex> lock(progress.mu);
      progress.base_accuracy = base;
    }
    spdlog::info("base policy: held-out greedy accuracy {:.1f}%; {}", 100 * base,
                 describe(last_eval));
    csv.Row(0, version, progress.Elapsed(), nullptr, &last_eval, coordinator.counts(), 0);
  }
  m_version.Set(static_cast<double>(version));
  m_update.Set(static_cast<double>(update));

  // ZeRO: the ranks hand their optimizer shards to rank 0 before it checkpoints, while
  // they still listen for shares.
  auto gather_optimizer = [&]() -> bool {
    if (comm == nullptr || config.learner.zero_stage == 0) return true;
    v1::RankShare gather;
    gather.set_version(version);
    gather.set_gather_optimizer(true);
    absl::Status s =
        comm->Scatter(std::vector<std::string>(world, gather.SerializeAsString())).status();
    if (s.ok()) s = trainer.GatherOptimizerState(comm.get());
    if (!s.ok()) spdlog::error("checkpoint: gathering the optimizer shards: {}", s.message());
    return s.ok();
  };
  auto checkpoint_now = [&]() {
    TrainerState st;
    st.update = update;
    st.version = version;
    st.optimizer_steps = trainer.optimizer_steps();
    {
      std::lock_guard<std::mutex> lock(progress.mu);
      st.elapsed_seconds = progress.Elapsed();
      st.base_accuracy = progress.base_accuracy;
      st.evaluations = progress.evaluations;
    }
    st.lease_state_json = ToJson(coordinator.SaveState());
    absl::StatusOr<std::string> dir =
        WriteCheckpoint(config.run.dir, st, trainer, coordinator.BufferedGroups(), config_yaml);
    if (!dir.ok()) {
      spdlog::error("checkpoint failed: {}", dir.status().message());
    } else {
      if ((*source)->tokenizer_name() == "hf") CopyTokenizerFiles(config.model.path, *dir);
      spdlog::info("checkpoint {}", *dir);
    }
  };

  int exit_code = 0;
  int64_t last_eval_update = update;  // the base evaluation, or the resumed state
  double best_reward = -std::numeric_limits<double>::infinity();
  int64_t last_checkpoint_update = update;
  auto last_update_time = std::chrono::steady_clock::now();
  // Peak memory windows tile the run: one opens when the previous update is logged.
  bool memory_window_open = false;
  while (!StopRequested() && update < config.learner.updates) {
    if (!memory_window_open) {
      ResetPeakMemory(config.learner.device);
      memory_window_open = true;
    }
    if (config.learner.max_seconds > 0 && progress.Elapsed() >= config.learner.max_seconds) {
      spdlog::info("learner.max_seconds reached after {} updates", update);
      break;
    }
    auto wait_start = std::chrono::steady_clock::now();
    std::optional<std::vector<v1::Group>> batch =
        coordinator.PopBatch(version, std::chrono::milliseconds(500));
    m_wait.Increment(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count());
    if (!batch) {
      // Followers wait in a collective: tell them nothing is coming yet, so only a dead
      // rank, never an idle one, runs into the collective timeout.
      if (comm != nullptr) {
        v1::RankShare tick;
        tick.set_version(version);
        if (absl::StatusOr<std::string> r =
                comm->Scatter(std::vector<std::string>(world, tick.SerializeAsString()));
            !r.ok()) {
          spdlog::error("lost the other learner ranks: {}", r.status().message());
          exit_code = 1;
          break;
        }
      }
      continue;
    }
    absl::StatusOr<UpdateStats> stats = trainer.Update(*batch, version, comm.get());
    if (!stats.ok()) {
      const bool lost_rank = comm != nullptr && (absl::IsUnavailable(stats.status()) ||
                                                 absl::IsDeadlineExceeded(stats.status()) ||
                                                 absl::IsFailedPrecondition(stats.status()));
      spdlog::error("update {} failed{}: {}", update + 1,
                    lost_rank ? " because another learner rank died or stopped answering" : "",
                    stats.status().message());
      exit_code = 1;
      break;
    }
    ++update;
    ++version;
    // The coordinator learns the version first: an actor may receive the weights and
    // submit a group stamped with the new version at once, and that must not look like
    // a version from the future.
    coordinator.SetVersion(version);
    publisher.Retire();  // without deltas the old version need not overlap the new one
    publisher.Publish(trainer.Snapshot(version, weight_dtype));

    int64_t sampled = 0;
    for (const v1::Group& g : *batch) {
      for (const v1::Completion& c : g.completions()) sampled += c.tokens_size();
    }
    auto now = std::chrono::steady_clock::now();
    double since = std::chrono::duration<double>(now - last_update_time).count();
    last_update_time = now;
    double sampled_tps = since > 0 ? sampled / since : 0;

    double eval = -1;
    if (update % config.learner.eval_every == 0 || update == config.learner.updates) {
      eval = evaluate();
      last_eval_update = update;
    }
    if (!batch->empty()) samples.Write(update, version, batch->front());
    {
      std::lock_guard<std::mutex> lock(progress.mu);
      progress.update = static_cast<uint64_t>(update);
      progress.mean_reward = stats->mean_reward;
      progress.tokens_per_second = stats->trained_tokens / std::max(stats->seconds, 1e-9);
    }
    if (comm != nullptr && config.learner.checksum_every > 0 &&
        update % config.learner.checksum_every == 0) {
      if (absl::Status s = trainer.CheckReplicas(comm.get(), update); !s.ok()) {
        spdlog::error("{}", s.message());
        exit_code = 1;
        break;
      }
    }
    m_update.Set(static_cast<double>(update));
    m_version.Set(static_cast<double>(version));
    m_loss.Set(stats->loss);
    m_reward.Set(stats->mean_reward);
    m_grad.Set(stats->grad_norm);
    m_tps.Set(stats->trained_tokens / std::max(stats->seconds, 1e-9));
    m_step.Set(stats->seconds);
    m_mismatch.Set(stats->logprob_mismatch);
    m_mixed.Set(stats->mixed_fraction);
    m_equal.Increment(static_cast<double>(stats->equal_reward_groups));
    m_trained.Increment(static_cast<double>(batch->size()));
    m_oversize.Increment(static_cast<double>(stats->oversize_sequences));
    stats->peak_memory_bytes = PeakMemoryBytes(config.learner.device);
    memory_window_open = false;
    m_peak.Set(static_cast<double>(stats->peak_memory_bytes));
    csv.Row(update, version, progress.Elapsed(), &*stats, eval >= 0 ? &last_eval : nullptr,
            coordinator.counts(), sampled_tps);
    spdlog::info(
        "update {} version {}: loss {:.4g} reward {:.3f} mixed {:.2f} grad {:.3g} |delta| {:.3g} "
        "mismatch {:.2g} {:.0f} tok/s peak memory {:.2f} GB{}{}",
        update, version, stats->loss, stats->mean_reward, stats->mixed_fraction, stats->grad_norm,
        stats->mean_abs_delta, stats->logprob_mismatch,
        stats->trained_tokens / std::max(stats->seconds, 1e-9), stats->peak_memory_bytes / 1e9,
        stats->oversize_sequences > 0
            ? absl::StrCat(" (", stats->oversize_sequences,
                           " sequences over learner.micro_batch_tokens, each trained alone)")
            : "",
        eval >= 0 ? absl::StrCat(" eval ", describe(last_eval)) : "");
    best_reward = std::max(best_reward, stats->mean_reward);
    // A policy that had signal and lost it: sampled reward near the floor and almost no
    // group with mixed rewards left to learn from (DESIGN.md: lr 1e-3 did this).
    if (stats->mixed_fraction < 0.1 && stats->mean_reward < -0.8 && best_reward > -0.5) {
      spdlog::warn(
          "possible collapse: mean reward {:.2f} and only {:.0f}% of groups have mixed rewards; "
          "consider a lower learner.lr or a larger learner.tau",
          stats->mean_reward, 100 * stats->mixed_fraction);
    }
    if (config.learner.checkpoint_every > 0 && update % config.learner.checkpoint_every == 0) {
      if (gather_optimizer()) checkpoint_now();
      last_checkpoint_update = update;
    }
  }
  // The final checkpoint below runs after the other ranks have stopped: gather first.
  bool final_gathered = true;
  if (exit_code == 0 && !StopRequested() && last_checkpoint_update != update) {
    final_gathered = gather_optimizer();
  }
  if (comm != nullptr && exit_code == 0) {
    v1::RankShare stop;
    stop.set_stop(true);
    (void)comm->Scatter(std::vector<std::string>(world, stop.SerializeAsString()));
  }
  if (exit_code == 0 && !StopRequested()) {
    if (last_eval_update != update) evaluate();
    if (last_checkpoint_update != update && final_gathered) checkpoint_now();
    coordinator.Finish();
    spdlog::info("training finished: {} updates, final accuracy {:.1f}% (mean of last {})", update,
                 100 * progress.FinalAccuracy(), config.learner.eval_last);
    // Keep serving (late groups, status) until told to stop.
    while (!StopRequested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  coordinator.Finish();
  publisher.Close();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  fs::create_directories(fs::path(config.run.dir) / "metrics", ec);
  if (absl::Status s =
          metrics.WriteSnapshot((fs::path(config.run.dir) / "metrics" / "learner.prom").string());
      !s.ok()) {
    spdlog::warn("{}", s.message());
  }
  return exit_code;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) { return pmdrl::Run(argc, argv); }
