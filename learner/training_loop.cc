#include "learner/training_loop.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/wire_dtype.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/coordinator/weight_publisher.h"
#include "learner/evaluator.h"
#include "learner/ledger.h"
#include "learner/run_outputs.h"
#include "learner/training/communicator.h"
#include "learner/training/peak_memory.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

namespace fs = std::filesystem;

namespace {

// How long Run's steps wait for a batch before they tick the followers.
constexpr std::chrono::milliseconds kPollInterval{500};
// A checkpoint write that fails (a full or flaky disk) is tried this many times, waiting
// kCheckpointBackoff, then twice that, between tries, before the run stops: training on
// without a checkpoint would lose everything since the last one at the next crash.
constexpr int kCheckpointAttempts = 3;
constexpr std::chrono::milliseconds kCheckpointBackoff{1000};

}  // namespace

struct TrainingLoop::Impl {
  Impl(Parts p, const TrainerState& start, bool resumed);

  // The pieces of Step.
  absl::StatusOr<UpdateStats> Train(const std::vector<v1::Group>& batch);
  absl::Status Tick();  // tells waiting followers that no batch is coming yet
  absl::Status Record(const std::vector<v1::Group>& batch, UpdateStats& stats);
  // The pieces of Checkpoint: the followers' optimizer shards (while they still listen
  // for shares), then the checkpoint itself (logged), tried kCheckpointAttempts times.
  // A ZeRO Trainer::Save uses up the gathered shards, so a retry gathers them again when
  // `regather` (the followers still listen); at the end of the run it cannot.
  absl::Status GatherOptimizer();
  absl::StatusOr<std::string> WriteCheckpointNow(bool regather);
  // Hands `share` to every rank (rank 0 included, which ignores it).
  absl::Status Scatter(const v1::RankShare& share);
  absl::Status Finish();
  EvalResult Evaluate();
  TrainerState State() const;
  void Publish();
  std::string Describe(const EvalResult& r) const;

  Parts parts;
  const Config& config;
  Trainer& trainer;
  Evaluator evaluator;  // held-out evaluation of trainer.model()
  Coordinator& coordinator;
  WeightPublisher& publisher;
  Communicator* comm;
  const bool resumed;
  const WireDtype weight_dtype;  // the actors' weights, converted once per version here

  uint64_t version;
  int64_t update;
  int64_t last_eval_update;  // the base evaluation, or the resumed state
  int64_t last_checkpoint_update;
  EvalResult last_eval;
  double best_reward = -std::numeric_limits<double>::infinity();
  std::chrono::steady_clock::time_point last_update_time = std::chrono::steady_clock::now();
  // Peak memory windows tile the run: one opens when the previous update is logged.
  bool memory_window_open = false;

  mutable Progress progress;
  MetricsCsv csv;
  SampleLog samples;
  Ledger ledger;
  // The run files' lengths at the checkpoint resumed from (-1: fresh, or not recorded).
  const int64_t resume_ledger_bytes;
  const int64_t resume_metrics_bytes;
  const int64_t resume_samples_bytes;

  prometheus::Gauge& m_update;
  prometheus::Gauge& m_version;
  prometheus::Gauge& m_loss;
  prometheus::Gauge& m_reward;
  prometheus::Gauge& m_grad;
  prometheus::Gauge& m_tps;
  prometheus::Gauge& m_step;
  prometheus::Gauge& m_mismatch;
  prometheus::Gauge& m_mixed;
  prometheus::Counter& m_equal;
  prometheus::Gauge& m_eval;
  prometheus::Gauge& m_eval_avg;
  prometheus::Gauge& m_eval_pass;
  prometheus::Counter& m_trained;
  prometheus::Gauge& m_peak;
  prometheus::Counter& m_oversize;
  prometheus::Counter& m_wait;
};

TrainingLoop::Impl::Impl(Parts p, const TrainerState& start, bool resumed_run)
    : parts(std::move(p)),
      config(*parts.config),
      trainer(*parts.trainer),
      evaluator(config, trainer.model()),
      coordinator(*parts.coordinator),
      publisher(*parts.publisher),
      comm(parts.comm),
      resumed(resumed_run),
      weight_dtype(WeightWireDtype(config)),
      version(start.version),
      update(start.update),
      last_eval_update(start.update),
      last_checkpoint_update(start.update),
      resume_ledger_bytes(start.ledger_bytes),
      resume_metrics_bytes(start.metrics_bytes),
      resume_samples_bytes(start.samples_bytes),
      m_update(parts.metrics->Gauge("pmdrl_learner_update", "policy updates done")),
      m_version(parts.metrics->Gauge("pmdrl_learner_policy_version", "current policy version")),
      m_loss(parts.metrics->Gauge("pmdrl_learner_loss", "PMD-mean loss of the last update")),
      m_reward(parts.metrics->Gauge("pmdrl_learner_mean_reward", "mean reward of the last batch")),
      m_grad(parts.metrics->Gauge("pmdrl_learner_grad_norm", "gradient norm before clipping")),
      m_tps(parts.metrics->Gauge("pmdrl_learner_tokens_per_second", "trained tokens per second")),
      m_step(parts.metrics->Gauge("pmdrl_learner_step_seconds", "seconds of the last update")),
      m_mismatch(parts.metrics->Gauge("pmdrl_learner_logprob_mismatch",
                                      "mean |learner - actor| token log-prob at the same version")),
      m_mixed(parts.metrics->Gauge("pmdrl_learner_mixed_groups_ratio",
                                   "fraction of groups whose rewards differ")),
      m_equal(parts.metrics->Counter("pmdrl_learner_equal_reward_groups_total",
                                     "groups whose rewards were all equal (no signal)")),
      m_eval(parts.metrics->Gauge("pmdrl_learner_eval_accuracy", "held-out greedy accuracy")),
      m_eval_avg(parts.metrics->Gauge("pmdrl_learner_eval_avg_at_k",
                                      "held-out mean correctness of learner.eval_k samples")),
      m_eval_pass(parts.metrics->Gauge("pmdrl_learner_eval_pass_at_k",
                                       "held-out fraction of problems with a correct sample of k")),
      m_trained(parts.metrics->Counter("pmdrl_learner_groups_trained_total", "groups trained on")),
      m_peak(
          parts.metrics->Gauge("pmdrl_learner_peak_memory_bytes",
                               "peak resident (cpu) or allocated (cuda) bytes of the last update")),
      m_oversize(parts.metrics->Counter(
          "pmdrl_learner_oversize_sequences_total",
          "sequences longer than learner.micro_batch_tokens, trained alone")),
      m_wait(parts.metrics->Counter("pmdrl_learner_wait_seconds_total",
                                    "seconds the learner waited for rollout data")) {
  // A resumed learner reports its checkpoint's update from its first scrape, not 0.
  m_update.Set(static_cast<double>(update));
  m_version.Set(static_cast<double>(version));
  progress.update = static_cast<uint64_t>(start.update);
  progress.base_accuracy = start.base_accuracy;
  progress.evaluations = start.evaluations;
  progress.eval_last = config.learner.eval_last;
  progress.elapsed_offset = start.elapsed_seconds;
  if (!start.evaluations.empty()) progress.eval_accuracy = start.evaluations.back();
}

std::string TrainingLoop::Impl::Describe(const EvalResult& r) const {
  std::string d = absl::StrFormat("greedy %.1f%%", 100 * r.greedy_accuracy);
  if (r.k > 0) {
    absl::StrAppendFormat(&d, ", avg@%d %.1f%%, pass@%d %.1f%%", r.k, 100 * r.avg_at_k, r.k,
                          100 * r.pass_at_k);
  }
  absl::StrAppendFormat(&d, " (%d problems, %.0f%% unparsable)", parts.source->HeldOut().size(),
                        100 * r.greedy_parse_errors);
  return d;
}

absl::Status TrainingLoop::Impl::Scatter(const v1::RankShare& share) {
  const std::vector<std::string> payloads(static_cast<size_t>(comm->world_size()),
                                          share.SerializeAsString());
  return comm->Scatter(payloads).status();
}

absl::Status TrainingLoop::Impl::Tick() {
  // Followers wait in a collective: tell them nothing is coming yet, so only a dead
  // rank, never an idle one, runs into the collective timeout.
  if (comm == nullptr) return absl::OkStatus();
  v1::RankShare tick;
  tick.set_version(version);
  absl::Status s = Scatter(tick);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("lost the other learner ranks: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<UpdateStats> TrainingLoop::Impl::Train(const std::vector<v1::Group>& batch) {
  absl::StatusOr<UpdateStats> stats = trainer.Update(batch, version, comm);
  if (stats.ok()) return stats;
  const absl::Status& s = stats.status();
  const bool lost_rank =
      comm != nullptr &&
      (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsFailedPrecondition(s));
  return absl::Status(
      s.code(),
      absl::StrCat("update ", update + 1, " failed",
                   lost_rank ? " because another learner rank died or stopped answering" : "", ": ",
                   s.message()));
}

absl::Status TrainingLoop::Impl::Record(const std::vector<v1::Group>& batch, UpdateStats& stats) {
  int64_t sampled = 0;
  for (const v1::Group& g : batch) {
    for (const v1::Completion& c : g.completions()) sampled += c.tokens_size();
  }
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_update_time).count();
  last_update_time = now;
  double sampled_tps = since > 0 ? sampled / since : 0;

  bool evaluated = false;
  if (update % config.learner.eval_every == 0 || update == config.learner.updates) {
    Evaluate();
    evaluated = true;
  }
  if (!batch.empty()) samples.Write(update, version, batch.front());
  const double tokens_per_second = stats.trained_tokens / std::max(stats.seconds, 1e-9);
  {
    std::lock_guard<std::mutex> lock(progress.mu);
    progress.update = static_cast<uint64_t>(update);
    progress.mean_reward = stats.mean_reward;
    progress.tokens_per_second = tokens_per_second;
  }
  if (comm != nullptr && config.learner.checksum_every > 0 &&
      update % config.learner.checksum_every == 0) {
    if (absl::Status s = trainer.CheckReplicas(comm, update); !s.ok()) return s;
  }
  m_update.Set(static_cast<double>(update));
  m_version.Set(static_cast<double>(version));
  m_loss.Set(stats.loss);
  m_reward.Set(stats.mean_reward);
  m_grad.Set(stats.grad_norm);
  m_tps.Set(tokens_per_second);
  m_step.Set(stats.seconds);
  m_mismatch.Set(stats.logprob_mismatch);
  m_mixed.Set(stats.mixed_fraction);
  m_equal.Increment(static_cast<double>(stats.equal_reward_groups));
  m_trained.Increment(static_cast<double>(batch.size()));
  m_oversize.Increment(static_cast<double>(stats.oversize_sequences));
  stats.peak_memory_bytes = PeakMemoryBytes(config.learner.device);
  memory_window_open = false;
  m_peak.Set(static_cast<double>(stats.peak_memory_bytes));
  csv.Row(update, version, progress.Elapsed(), &stats, evaluated ? &last_eval : nullptr,
          coordinator.counts(), sampled_tps);
  spdlog::info(
      "update {} version {}: loss {:.4g} reward {:.3f} mixed {:.2f} grad {:.3g} |delta| {:.3g} "
      "mismatch {:.2g} {:.0f} tok/s peak memory {:.2f} GB{}{}",
      update, version, stats.loss, stats.mean_reward, stats.mixed_fraction, stats.grad_norm,
      stats.mean_abs_delta, stats.logprob_mismatch, tokens_per_second,
      stats.peak_memory_bytes / 1e9,
      stats.oversize_sequences > 0
          ? absl::StrCat(" (", stats.oversize_sequences,
                         " sequences over learner.micro_batch_tokens, each trained alone)")
          : "",
      evaluated ? absl::StrCat(" eval ", Describe(last_eval)) : "");
  best_reward = std::max(best_reward, stats.mean_reward);
  // A policy that had signal and lost it: sampled reward near the floor and almost no
  // group with mixed rewards left to learn from (too high a learning rate does this).
  if (stats.mixed_fraction < 0.1 && stats.mean_reward < -0.8 && best_reward > -0.5) {
    spdlog::warn(
        "possible collapse: mean reward {:.2f} and only {:.0f}% of groups have mixed rewards; "
        "consider a lower learner.lr or a larger learner.tau",
        stats.mean_reward, 100 * stats.mixed_fraction);
  }
  return absl::OkStatus();
}

absl::Status TrainingLoop::Impl::GatherOptimizer() {
  // ZeRO: the ranks hand their optimizer shards to rank 0 before it checkpoints, while
  // they still listen for shares.
  if (comm == nullptr || config.learner.zero_stage == 0) return absl::OkStatus();
  v1::RankShare gather;
  gather.set_version(version);
  gather.set_gather_optimizer(true);
  absl::Status s = Scatter(gather);
  if (s.ok()) s = trainer.GatherOptimizerState(comm);
  if (!s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("checkpoint: gathering the optimizer shards: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TrainingLoop::Impl::WriteCheckpointNow(bool regather) {
  // The lease state and the buffered groups as one view: taken apart, a group accepted
  // in between would be saved as outstanding and as buffered, and trained twice.
  CoordinatorSnapshot snapshot = coordinator.Snapshot();
  TrainerState st = State();
  st.lease_state_json = ToJson(snapshot.lease);
  const std::vector<v1::Group> buffered = std::move(snapshot.buffered);
  // The tokenizer files go into the temporary folder too, so that they are synced and
  // in place before the checkpoint counts as complete.
  const SaveCheckpointFiles save_files = [this](const std::string& dir) {
    if (absl::Status s = trainer.Save(dir); !s.ok()) return s;
    if (parts.source->tokenizer_name() == "hf") CopyTokenizerFiles(config.model.path, dir);
    return absl::OkStatus();
  };
  CheckpointWriteOptions options;
  options.keep = config.learner.keep_checkpoints;
  int attempt = 0;
  absl::StatusOr<std::string> dir =
      RetryCheckpointWrite(kCheckpointAttempts, kCheckpointBackoff, [&] {
        if (++attempt > 1 && regather) {
          if (absl::Status s = GatherOptimizer(); !s.ok()) return absl::StatusOr<std::string>(s);
        }
        // The ledger and the per-update files are durable up to here before the
        // checkpoint that records their lengths exists.
        absl::StatusOr<int64_t> ledger_bytes = ledger.Sync();
        if (!ledger_bytes.ok()) return absl::StatusOr<std::string>(ledger_bytes.status());
        const fs::path dir = config.run.dir;
        absl::StatusOr<int64_t> metrics_bytes = SyncedLength((dir / "metrics.csv").string());
        if (!metrics_bytes.ok()) return absl::StatusOr<std::string>(metrics_bytes.status());
        absl::StatusOr<int64_t> samples_bytes = SyncedLength((dir / "samples.jsonl").string());
        if (!samples_bytes.ok()) return absl::StatusOr<std::string>(samples_bytes.status());
        st.ledger_bytes = *ledger_bytes;
        st.metrics_bytes = *metrics_bytes;
        st.samples_bytes = *samples_bytes;
        return WriteCheckpoint(config.run.dir, st, save_files, buffered, parts.config_yaml,
                               options);
      });
  if (!dir.ok()) {
    return absl::Status(dir.status().code(),
                        absl::StrCat("update ", update, ": ", dir.status().message(),
                                     "; stopping the run (it resumes from the last checkpoint)"));
  }
  spdlog::info("checkpoint {}", *dir);
  return dir;
}

absl::Status TrainingLoop::Impl::Finish() {
  const bool stopped = StopRequested();
  coordinator.CloseAdmission();  // no batch is trained after this
  // The final checkpoint below runs after the other ranks have stopped: gather first.
  absl::Status final_gathered;
  if (last_checkpoint_update != update) final_gathered = GatherOptimizer();
  if (comm != nullptr) {
    v1::RankShare stop;
    stop.set_stop(true);
    (void)Scatter(stop);  // a follower that is gone already needs no stop
  }
  // A stop signal (docker stop, Ctrl-C in pmdrl local) also keeps the updates since the
  // last checkpoint: the loop stops between updates, so the state is whole. Only the
  // evaluation is skipped.
  if (!stopped && last_eval_update != update) Evaluate();
  if (last_checkpoint_update != update) {
    if (!final_gathered.ok()) {
      // Without the final checkpoint the run's last updates are lost: an error, not a
      // "training finished". A stopped run's followers may have been signalled too and
      // be gone with their optimizer shards: then its last checkpoint stands.
      if (!stopped) return final_gathered;
      spdlog::warn("stopped at update {} without a final checkpoint ({}); resume starts at {}",
                   update, std::string(final_gathered.message()), last_checkpoint_update);
      return absl::OkStatus();
    }
    last_checkpoint_update = update;
    if (absl::StatusOr<std::string> dir = WriteCheckpointNow(false); !dir.ok()) {
      return dir.status();
    }
  }
  if (stopped) {
    spdlog::info("stopped by signal {} at update {}", StopSignal(), update);
    return absl::OkStatus();
  }
  coordinator.Finish();
  spdlog::info("training finished: {} updates, final accuracy {:.1f}% (mean of last {})", update,
               100 * progress.FinalAccuracy(), config.learner.eval_last);
  return absl::OkStatus();
}

EvalResult TrainingLoop::Impl::Evaluate() {
  EvalResult r = evaluator.Evaluate(*parts.source, parts.source->HeldOut(),
                                    config.actor.max_new_tokens, config.learner.eval_k);
  last_eval = r;
  last_eval_update = update;
  std::lock_guard<std::mutex> lock(progress.mu);
  progress.evaluations.push_back(r.greedy_accuracy);
  progress.eval_accuracy = r.greedy_accuracy;
  m_eval.Set(r.greedy_accuracy);
  if (r.k > 0) {
    m_eval_avg.Set(r.avg_at_k);
    m_eval_pass.Set(r.pass_at_k);
  }
  return r;
}

TrainerState TrainingLoop::Impl::State() const {
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
  return st;
}

void TrainingLoop::Impl::Publish() {
  // The coordinator learns the version first: an actor may receive the weights and
  // submit a group stamped with the new version at once, and that must not look like
  // a version from the future.
  coordinator.SetVersion(version);
  publisher.Retire();  // without deltas the old version need not overlap the new one
  publisher.Publish(trainer.Snapshot(version, weight_dtype));
}

TrainingLoop::TrainingLoop(Parts parts, const TrainerState& start, bool resumed)
    : impl_(std::make_unique<Impl>(std::move(parts), start, resumed)) {
  Publish();
}

TrainingLoop::~TrainingLoop() = default;

absl::Status TrainingLoop::Start() {
  Impl& m = *impl_;
  const fs::path dir = m.config.run.dir;
  if (m.resumed) {
    // Rows of updates after the checkpoint were rolled back with the weights.
    for (const auto& [name, bytes] : {std::pair{"metrics.csv", m.resume_metrics_bytes},
                                      std::pair{"samples.jsonl", m.resume_samples_bytes}}) {
      if (absl::Status s = CutBack((dir / name).string(), bytes); !s.ok()) return s;
    }
  }
  if (absl::Status s =
          m.ledger.Open((dir / "ledger.csv").string(), m.resumed, m.resume_ledger_bytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = m.csv.Open((dir / "metrics.csv").string(), m.resumed); !s.ok()) return s;
  m.samples.Open((dir / "samples.jsonl").string(), m.resumed);
  if (!m.resumed) {
    EvalResult base = Evaluate();
    {
      std::lock_guard<std::mutex> lock(m.progress.mu);
      m.progress.base_accuracy = base.greedy_accuracy;
    }
    spdlog::info("base policy: held-out greedy accuracy {:.1f}%; {}", 100 * base.greedy_accuracy,
                 m.Describe(base));
    m.csv.Row(0, m.version, m.progress.Elapsed(), nullptr, &m.last_eval, m.coordinator.counts(), 0);
  }
  m.m_version.Set(static_cast<double>(m.version));
  m.m_update.Set(static_cast<double>(m.update));
  return absl::OkStatus();
}

absl::Status TrainingLoop::Run() {
  Impl& m = *impl_;
  while (!StopRequested() && m.update < m.config.learner.updates) {
    if (m.config.learner.max_seconds > 0 && m.progress.Elapsed() >= m.config.learner.max_seconds) {
      spdlog::info("learner.max_seconds reached after {} updates", m.update);
      break;
    }
    if (absl::StatusOr<bool> stepped = Step(kPollInterval); !stepped.ok()) {
      return stepped.status();
    }
  }
  return m.Finish();
}

absl::StatusOr<bool> TrainingLoop::Step(std::chrono::milliseconds wait) {
  Impl& m = *impl_;
  if (!m.memory_window_open) {
    ResetPeakMemory(m.config.learner.device);
    m.memory_window_open = true;
  }
  auto wait_start = std::chrono::steady_clock::now();
  std::optional<std::vector<v1::Group>> batch = m.coordinator.PopBatch(m.version, wait);
  m.m_wait.Increment(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count());
  if (!batch) {
    if (absl::Status s = m.Tick(); !s.ok()) return s;
    return false;
  }
  absl::StatusOr<UpdateStats> stats = m.Train(*batch);
  if (!stats.ok()) return stats.status();
  ++m.update;
  ++m.version;
  // The last update: the version published below must not open the coordinator's budget
  // for a batch that is never trained (those leases would postdate the final checkpoint).
  if (m.update >= m.config.learner.updates) m.coordinator.CloseAdmission();
  // The ledger row goes first: a run that cannot record what it trained stops here.
  if (absl::Status s = m.ledger.Append(m.update, *batch); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("update ", m.update, ": ", s.message()));
  }
  Publish();
  if (absl::Status s = m.Record(*batch, *stats); !s.ok()) return s;
  if (m.config.learner.checkpoint_every > 0 && m.update % m.config.learner.checkpoint_every == 0) {
    // A checkpoint that failed every attempt ends the run (see WriteCheckpointNow).
    if (absl::StatusOr<std::string> dir = Checkpoint(); !dir.ok()) return dir.status();
  }
  return true;
}

EvalResult TrainingLoop::Evaluate() { return impl_->Evaluate(); }

absl::StatusOr<std::string> TrainingLoop::Checkpoint() {
  Impl& m = *impl_;
  m.last_checkpoint_update = m.update;
  if (absl::Status s = m.GatherOptimizer(); !s.ok()) return s;
  return m.WriteCheckpointNow(/*regather=*/true);
}

void TrainingLoop::Publish() { impl_->Publish(); }

TrainerState TrainingLoop::State() const { return impl_->State(); }

int64_t TrainingLoop::update() const { return impl_->update; }
uint64_t TrainingLoop::version() const { return impl_->version; }

double TrainingLoop::FinalAccuracy() const {
  std::lock_guard<std::mutex> lock(impl_->progress.mu);
  return impl_->progress.FinalAccuracy();
}

void TrainingLoop::FillStatus(v1::StatusResponse* response) const {
  impl_->progress.Fill(response);
}

}  // namespace pmdrl
