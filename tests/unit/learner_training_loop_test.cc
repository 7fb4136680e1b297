// TrainingLoop without processes: a real Trainer on a tiny model, a real Coordinator fed
// by in-process actors (they lease prompts and submit scored groups of made-up
// completions) and a real WeightPublisher, wired as learner/main.cc wires them minus the
// servers. Checks one update end to end (version, published weights, metrics.csv,
// samples.jsonl, groups.csv, metrics, status), that a checkpoint restores the loop's
// state and that training then goes on identically, and how Run ends a run.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/config.h"
#include "common/metrics.h"
#include "common/process.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/coordinator/weight_publisher.h"
#include "learner/learner_setup.h"
#include "learner/run_outputs.h"
#include "learner/training/checkpoint.h"
#include "learner/training/trainer.h"
#include "learner/training_loop.h"
#include "nlohmann/json.hpp"
#include "tests/tiny_model_config.h"
#include "tests/weight_diff.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr int kGroupSize = 4;
constexpr int kMaxNewTokens = 4;

Config LoopConfig(const std::string& run_dir, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> o = {"model.hidden_size=32",
                                "model.intermediate_size=64",
                                "model.num_layers=2",
                                "model.num_heads=4",
                                "model.num_kv_heads=2",
                                "model.max_position=32",
                                "task.digits=2",
                                "task.eval_size=4",
                                "actor.max_new_tokens=" + std::to_string(kMaxNewTokens),
                                "learner.group_size=" + std::to_string(kGroupSize),
                                "learner.prompts_per_update=2",
                                "learner.mini_batches=1",
                                "learner.lr=0.01",
                                "learner.warmup_steps=0",
                                "learner.max_staleness=2",
                                "learner.eval_every=1",
                                "learner.checkpoint_every=0",
                                "learner.updates=10",
                                "learner.max_seconds=60",
                                "run.dir=" + run_dir};
  o.insert(o.end(), extra.begin(), extra.end());
  absl::StatusOr<Config> c = LoadConfig("", o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : Config();
}

// Learner rank 0 in one process, built from learner/learner_setup.h like main does.
struct Learner {
  Config config;
  std::unique_ptr<PromptSource> source;
  LearnerStart start;
  MetricsRegistry metrics{"learner"};
  GroupLog groups;
  std::unique_ptr<Coordinator> coordinator;
  WeightPublisher publisher;
  std::unique_ptr<TrainingLoop> loop;

  Trainer& trainer() { return *start.trainer; }
};

absl::StatusOr<std::unique_ptr<Learner>> MakeLearner(const Config& config) {
  auto l = std::make_unique<Learner>();
  l->config = config;
  absl::StatusOr<std::unique_ptr<PromptSource>> source = MakePromptSource(l->config);
  if (!source.ok()) return source.status();
  l->source = *std::move(source);
  absl::StatusOr<LearnerStart> start = LoadLearnerStart(l->config, *l->source);
  if (!start.ok()) return start.status();
  l->start = *std::move(start);
  const bool resumed = !l->start.checkpoint.empty();
  absl::StatusOr<CoordinatorOptions> copts =
      MakeCoordinatorOptions(l->config, l->trainer().model_config());
  if (!copts.ok()) return copts.status();
  l->groups.Open((fs::path(l->config.run.dir) / "groups.csv").string(), resumed);
  Learner* raw = l.get();
  copts->on_group = [raw](const v1::Group& g, v1::AckStatus s, uint64_t v) {
    raw->groups.Write(g, s, v);
  };
  l->coordinator = std::make_unique<Coordinator>(*std::move(copts), l->source.get(),
                                                 std::move(l->start.table), &l->metrics);
  l->coordinator->RestoreBuffer(std::move(l->start.buffered));
  l->loop = std::make_unique<TrainingLoop>(TrainingLoop::Parts{.config = &l->config,
                                                               .source = l->source.get(),
                                                               .trainer = &l->trainer(),
                                                               .coordinator = l->coordinator.get(),
                                                               .publisher = &l->publisher,
                                                               .metrics = &l->metrics,
                                                               .comm = nullptr,
                                                               .config_yaml = "test: true\n"},
                                           l->start.state, resumed);
  return l;
}

// The actors and verifiers of a run, in-process: lease prompts from the coordinator and
// answer each lease with a scored group. The completions depend only on the place
// (epoch, index), so the same place gets the same group from any coordinator.
class FakeActors {
 public:
  explicit FakeActors(Coordinator* coordinator) : coordinator_(coordinator) {
    v1::RegisterActorRequest r;
    r.set_name("fake");
    actor_id_ = coordinator_->RegisterActor(r).actor_id();
  }

  std::vector<v1::Lease> Lease(int n) {
    v1::LeasePromptsRequest r;
    r.set_actor_id(actor_id_);
    r.set_max_prompts(static_cast<uint32_t>(n));
    absl::StatusOr<v1::LeasePromptsResponse> leased = coordinator_->LeasePrompts(r);
    EXPECT_TRUE(leased.ok()) << leased.status();
    if (!leased.ok()) return {};
    EXPECT_EQ(leased->leases_size(), n);
    return {leased->leases().begin(), leased->leases().end()};
  }

  // Submits the group for `lease` sampled at `version`; returns its ack status.
  v1::AckStatus Submit(const v1::Lease& lease, uint64_t version) {
    absl::StatusOr<v1::GroupAck> ack = coordinator_->Submit(Score(lease, version));
    EXPECT_TRUE(ack.ok()) << ack.status();
    return ack.ok() ? ack->status() : v1::ACK_UNKNOWN;
  }

 private:
  v1::Group Score(const v1::Lease& lease, uint64_t version) const {
    v1::Group g;
    g.set_lease_id(lease.lease_id());
    g.set_epoch(lease.epoch());
    g.set_index(lease.index());
    g.set_actor_id(actor_id_);
    g.set_verifier_id("fake-verifier");
    g.set_policy_version(version);
    g.set_issued_at_version(lease.issued_at_version());
    *g.mutable_prompt_tokens() = lease.prompt_tokens();
    g.set_prompt_text(lease.prompt_text());
    g.set_reference(lease.reference());
    g.set_task("arith");
    std::mt19937 rng(static_cast<uint32_t>(lease.epoch() * 7919 + lease.index()));
    for (int c = 0; c < kGroupSize; ++c) {
      v1::Completion* comp = g.add_completions();
      const int len = 1 + static_cast<int>(rng() % kMaxNewTokens);
      for (int i = 0; i < len; ++i) {
        comp->add_tokens(i + 1 == len ? CharTokenizer::kEos : 3 + static_cast<int>(rng() % 10));
        comp->add_logprobs(-0.5f - 0.25f * static_cast<float>(rng() % 8));
      }
      const bool correct = (c + lease.index()) % 2 == 0;  // every group has mixed rewards
      comp->set_reward(correct ? 1.f : -1.f);
      comp->set_outcome(correct ? v1::OUTCOME_CORRECT : v1::OUTCOME_INCORRECT);
      comp->set_stopped(true);
      comp->set_text("42");
    }
    return g;
  }

  Coordinator* coordinator_;
  std::string actor_id_;
};

std::vector<std::string> Lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// metrics.csv as rows of cells, keyed by the header.
struct Csv {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string Cell(size_t row, const std::string& column) const {
    for (size_t i = 0; i < header.size(); ++i) {
      if (header[i] == column && i < rows.at(row).size()) return rows.at(row)[i];
    }
    ADD_FAILURE() << "no column " << column;
    return "";
  }
};

Csv ReadCsv(const fs::path& path) {
  Csv csv;
  std::vector<std::string> lines = Lines(path);
  if (lines.empty()) return csv;
  csv.header = absl::StrSplit(lines[0], ',');
  for (size_t i = 1; i < lines.size(); ++i) {
    csv.rows.push_back(absl::StrSplit(lines[i], ','));
    EXPECT_EQ(csv.rows.back().size(), csv.header.size()) << lines[i];
  }
  return csv;
}

// The value of an unlabelled metric in the registry's text format; -1 if absent.
double MetricValue(const MetricsRegistry& metrics, const std::string& name) {
  std::istringstream in(metrics.Serialize());
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

TEST(TrainingLoop, OneUpdateFromFedGroups) {
  const std::string dir = FreshTempDir("training_loop", "update");
  auto learner = MakeLearner(LoopConfig(dir));
  ASSERT_TRUE(learner.ok()) << learner.status();
  Learner& l = **learner;
  TrainingLoop& loop = *l.loop;
  const std::shared_ptr<const WeightVersion> before = l.trainer().Snapshot(0);

  // Construction publishes version 0; Start evaluates the base policy (row 0).
  ASSERT_NE(l.publisher.Latest().full, nullptr);
  EXPECT_EQ(l.publisher.Latest().full->version, 0u);
  ASSERT_TRUE(loop.Start().ok());
  EXPECT_EQ(loop.State().evaluations.size(), 1u);
  EXPECT_GE(loop.State().base_accuracy, 0.0);

  // No groups yet: a poll trains nothing.
  absl::StatusOr<bool> idle = loop.Step(milliseconds(10));
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_FALSE(*idle);
  EXPECT_EQ(loop.version(), 0u);

  FakeActors actors(l.coordinator.get());
  for (const v1::Lease& lease : actors.Lease(2)) {
    EXPECT_EQ(actors.Submit(lease, 0), v1::ACK_ACCEPTED);
  }
  absl::StatusOr<bool> stepped = loop.Step(milliseconds(5000));
  ASSERT_TRUE(stepped.ok()) << stepped.status();
  ASSERT_TRUE(*stepped);

  EXPECT_EQ(loop.update(), 1);
  EXPECT_EQ(loop.version(), 1u);
  EXPECT_EQ(l.coordinator->version(), 1u);
  EXPECT_EQ(l.trainer().optimizer_steps(), 1);
  // The publisher holds the new version, and it is the trained policy.
  const PublishedWeights published = l.publisher.Latest();
  ASSERT_NE(published.full, nullptr);
  EXPECT_EQ(published.full->version, 1u);
  const std::shared_ptr<const WeightVersion> after = l.trainer().Snapshot(1);
  EXPECT_TRUE(BitIdentical(*published.full, *after));
  EXPECT_GT(WorstRelativeDifference(*before, *after), 1e-4) << "the update left the weights";

  // metrics.csv: the header, the base evaluation, the update (evaluated: eval_every 1).
  const Csv csv = ReadCsv(fs::path(dir) / "metrics.csv");
  ASSERT_EQ(csv.rows.size(), 2u);
  EXPECT_EQ(csv.header.front(), "update");
  EXPECT_EQ(csv.header.size(), 21u);
  EXPECT_EQ(csv.Cell(0, "update"), "0");
  EXPECT_EQ(csv.Cell(0, "loss"), "");
  EXPECT_NE(csv.Cell(0, "eval_accuracy"), "");
  EXPECT_EQ(csv.Cell(1, "update"), "1");
  EXPECT_EQ(csv.Cell(1, "version"), "1");
  EXPECT_NE(csv.Cell(1, "loss"), "");
  EXPECT_NE(csv.Cell(1, "eval_accuracy"), "");
  EXPECT_EQ(csv.Cell(1, "groups_accepted"), "2");
  EXPECT_EQ(csv.Cell(1, "mixed_groups_fraction"), "1.0000");

  // samples.jsonl: the batch's first group; groups.csv: both groups, accepted.
  const std::vector<std::string> samples = Lines(fs::path(dir) / "samples.jsonl");
  ASSERT_EQ(samples.size(), 1u);
  const nlohmann::json sample = nlohmann::json::parse(samples[0]);
  EXPECT_EQ(sample["update"], 1);
  EXPECT_EQ(sample["version"], 1);
  EXPECT_EQ(sample["completions"].size(), static_cast<size_t>(kGroupSize));
  const std::vector<std::string> groups = Lines(fs::path(dir) / "groups.csv");
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].rfind("actor_id,", 0), 0u);
  EXPECT_NE(groups[1].find(",ACK_ACCEPTED"), std::string::npos) << groups[1];

  // Metrics and GetStatus follow.
  EXPECT_EQ(MetricValue(l.metrics, "pmdrl_learner_update"), 1);
  EXPECT_EQ(MetricValue(l.metrics, "pmdrl_learner_policy_version"), 1);
  EXPECT_EQ(MetricValue(l.metrics, "pmdrl_learner_groups_trained_total"), 2);
  v1::StatusResponse status;
  loop.FillStatus(&status);
  EXPECT_EQ(status.update(), 1u);
  EXPECT_EQ(status.mean_reward(), 0.0);  // half the completions +1, half -1
  EXPECT_EQ(status.base_accuracy(), loop.State().base_accuracy);
  EXPECT_EQ(loop.State().evaluations.size(), 2u);
  fs::remove_all(dir);
}

// A checkpoint of the loop restores its state (update, version, optimizer step,
// evaluations, data cursor and leases, buffered groups, weights), and training the
// same next batch from both gives the same policy.
TEST(TrainingLoop, CheckpointRestoresTheLoopState) {
  const std::string dir_a = FreshTempDir("training_loop", "a");
  auto a_or = MakeLearner(LoopConfig(dir_a));
  ASSERT_TRUE(a_or.ok()) << a_or.status();
  Learner& a = **a_or;
  ASSERT_TRUE(a.loop->Start().ok());
  FakeActors actors_a(a.coordinator.get());
  // 4 places leased, 3 answered: a batch of 2 trains, 1 group stays buffered and 1
  // place is still out when the checkpoint is taken.
  const std::vector<v1::Lease> leases = actors_a.Lease(4);
  ASSERT_EQ(leases.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(actors_a.Submit(leases[i], 0), v1::ACK_ACCEPTED);
  absl::StatusOr<bool> stepped = a.loop->Step(milliseconds(5000));
  ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
  a.loop->Evaluate();  // a third evaluation, off the schedule
  absl::StatusOr<std::string> checkpoint = a.loop->Checkpoint();
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE(fs::exists(fs::path(*checkpoint) / "trainer_state.json"));
  EXPECT_EQ(*FindCheckpoint(dir_a, "auto"), *checkpoint);
  const TrainerState saved = a.loop->State();

  // A second learner (its own run.dir) resumes from the checkpoint.
  const std::string dir_b = FreshTempDir("training_loop", "b");
  auto b_or = MakeLearner(LoopConfig(dir_b, {"learner.resume=" + *checkpoint}));
  ASSERT_TRUE(b_or.ok()) << b_or.status();
  Learner& b = **b_or;
  const TrainerState restored = b.loop->State();
  EXPECT_EQ(restored.update, 1);
  EXPECT_EQ(restored.version, 1u);
  EXPECT_EQ(b.loop->update(), saved.update);
  EXPECT_EQ(b.loop->version(), saved.version);
  EXPECT_EQ(restored.optimizer_steps, saved.optimizer_steps);
  EXPECT_EQ(restored.evaluations, saved.evaluations);
  EXPECT_EQ(restored.evaluations.size(), 3u);
  EXPECT_EQ(restored.base_accuracy, saved.base_accuracy);
  EXPECT_GE(restored.elapsed_seconds, 0.0);
  EXPECT_EQ(restored.lease_state_json, saved.lease_state_json);
  EXPECT_EQ(b.coordinator->counts().data_index, 4);
  EXPECT_EQ(b.coordinator->version(), 1u);
  const std::vector<v1::Group> buffered_a = a.coordinator->BufferedGroups();
  const std::vector<v1::Group> buffered_b = b.coordinator->BufferedGroups();
  ASSERT_EQ(buffered_a.size(), 1u);
  ASSERT_EQ(buffered_b.size(), 1u);
  EXPECT_EQ(buffered_a[0].SerializeAsString(), buffered_b[0].SerializeAsString());
  ASSERT_NE(b.publisher.Latest().full, nullptr);
  EXPECT_EQ(b.publisher.Latest().full->version, 1u);
  const std::shared_ptr<const WeightVersion> resumed_weights = b.trainer().Snapshot(1);
  EXPECT_TRUE(BitIdentical(*a.trainer().Snapshot(1), *resumed_weights));
  v1::StatusResponse status;
  b.loop->FillStatus(&status);
  EXPECT_EQ(status.update(), 1u);
  EXPECT_EQ(status.eval_accuracy(), saved.evaluations.back());

  // The place still out is leased again from the restored coordinator; both learners
  // then train [buffered group, that place's group] into the same policy.
  ASSERT_TRUE(b.loop->Start().ok());  // resumed: no base evaluation
  FakeActors actors_b(b.coordinator.get());
  const std::vector<v1::Lease> again = actors_b.Lease(1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].epoch(), leases[3].epoch());
  EXPECT_EQ(again[0].index(), leases[3].index());
  EXPECT_EQ(actors_a.Submit(leases[3], 1), v1::ACK_ACCEPTED);
  EXPECT_EQ(actors_b.Submit(again[0], 1), v1::ACK_ACCEPTED);
  for (Learner* l : {&a, &b}) {
    absl::StatusOr<bool> s = l->loop->Step(milliseconds(5000));
    ASSERT_TRUE(s.ok() && *s) << s.status();
    EXPECT_EQ(l->loop->version(), 2u);
  }
  EXPECT_EQ(a.trainer().optimizer_steps(), b.trainer().optimizer_steps());
  const double apart = WorstRelativeDifference(*a.trainer().Snapshot(2), *b.trainer().Snapshot(2));
  EXPECT_LE(apart, 1e-6);
  EXPECT_GT(WorstRelativeDifference(*resumed_weights, *b.trainer().Snapshot(2)), 1e-4)
      << "the second update should move the weights";
  // The resumed run's metrics.csv: a header and update 2, no base evaluation row.
  const Csv csv_b = ReadCsv(fs::path(dir_b) / "metrics.csv");
  ASSERT_EQ(csv_b.rows.size(), 1u);
  EXPECT_EQ(csv_b.Cell(0, "update"), "2");
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
}

// Run trains learner.updates updates from groups already submitted, evaluates the last
// one (update == learner.updates, off the eval_every schedule), writes the final
// checkpoint and tells the coordinator the run is over.
TEST(TrainingLoop, RunEndsWithEvaluationAndCheckpoint) {
  const std::string dir = FreshTempDir("training_loop", "run");
  auto learner = MakeLearner(LoopConfig(dir, {"learner.updates=2", "learner.eval_every=5"}));
  ASSERT_TRUE(learner.ok()) << learner.status();
  Learner& l = **learner;
  ASSERT_TRUE(l.loop->Start().ok());
  FakeActors actors(l.coordinator.get());
  for (const v1::Lease& lease : actors.Lease(4)) {
    EXPECT_EQ(actors.Submit(lease, 0), v1::ACK_ACCEPTED);
  }
  EXPECT_FALSE(l.coordinator->finished());
  absl::Status run = l.loop->Run();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ(l.loop->update(), 2);
  EXPECT_EQ(l.loop->version(), 2u);
  EXPECT_TRUE(l.coordinator->finished());
  EXPECT_EQ(l.publisher.Latest().full->version, 2u);

  const Csv csv = ReadCsv(fs::path(dir) / "metrics.csv");
  ASSERT_EQ(csv.rows.size(), 3u);
  EXPECT_EQ(csv.Cell(1, "eval_accuracy"), "");  // update 1: not due
  EXPECT_NE(csv.Cell(2, "eval_accuracy"), "");  // the last update
  absl::StatusOr<std::string> checkpoint = FindCheckpoint(dir, "auto");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<TrainerState> state = ReadTrainerState(*checkpoint);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->update, 2);
  EXPECT_EQ(state->version, 2u);
  EXPECT_EQ(state->evaluations.size(), 2u);  // base and the last update
  EXPECT_EQ(l.loop->FinalAccuracy(),
            (state->evaluations[0] + state->evaluations[1]) / 2);  // eval_last 3 > 2
  fs::remove_all(dir);
}

// ledger.csv lists exactly the places trained into the weights: a resume cuts it (and
// metrics.csv, samples.jsonl) back to the lengths its checkpoint recorded, so an update
// lost with a crash is not listed, and when its places are trained again each appears
// once.
TEST(TrainingLoop, ResumeCutsTheLedgerBackToTheCheckpoint) {
  const std::string dir = FreshTempDir("training_loop", "ledger");
  const fs::path ledger = fs::path(dir) / "ledger.csv";
  std::set<std::pair<std::string, std::string>> places;
  {
    auto a_or = MakeLearner(LoopConfig(dir));
    ASSERT_TRUE(a_or.ok()) << a_or.status();
    Learner& a = **a_or;
    ASSERT_TRUE(a.loop->Start().ok());
    FakeActors actors(a.coordinator.get());
    for (const v1::Lease& lease : actors.Lease(4)) {
      EXPECT_EQ(actors.Submit(lease, 0), v1::ACK_ACCEPTED);
      places.insert({std::to_string(lease.epoch()), std::to_string(lease.index())});
    }
    absl::StatusOr<bool> stepped = a.loop->Step(milliseconds(5000));
    ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
    ASSERT_TRUE(a.loop->Checkpoint().ok());
    stepped = a.loop->Step(milliseconds(5000));  // update 2, lost with the "crash" below
    ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
    const Csv before = ReadCsv(ledger);
    ASSERT_EQ(before.rows.size(), 4u);
    EXPECT_EQ(before.Cell(3, "update"), "2");
    EXPECT_EQ(ReadCsv(fs::path(dir) / "metrics.csv").rows.size(), 3u);  // base, 1, 2
  }  // the learner is gone without a final checkpoint, as after SIGKILL

  auto b_or = MakeLearner(LoopConfig(dir, {"learner.resume=auto"}));
  ASSERT_TRUE(b_or.ok()) << b_or.status();
  Learner& b = **b_or;
  ASSERT_TRUE(b.loop->Start().ok());
  const Csv cut = ReadCsv(ledger);
  ASSERT_EQ(cut.rows.size(), 2u);
  EXPECT_EQ(cut.Cell(0, "update"), "1");
  EXPECT_EQ(cut.Cell(1, "update"), "1");
  EXPECT_EQ(ReadCsv(fs::path(dir) / "metrics.csv").rows.size(), 2u);  // base, 1
  EXPECT_EQ(Lines(fs::path(dir) / "samples.jsonl").size(), 1u);

  // The two groups buffered at the checkpoint train update 2 again.
  absl::StatusOr<bool> stepped = b.loop->Step(milliseconds(5000));
  ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
  ASSERT_TRUE(b.loop->Checkpoint().ok());
  const Csv after = ReadCsv(ledger);
  ASSERT_EQ(after.rows.size(), 4u);
  std::set<std::pair<std::string, std::string>> trained;
  for (size_t i = 0; i < after.rows.size(); ++i) {
    EXPECT_TRUE(trained.insert({after.Cell(i, "epoch"), after.Cell(i, "index")}).second)
        << "place trained twice: row " << i;
    EXPECT_EQ(after.Cell(i, "update"), i < 2 ? "1" : "2");
    EXPECT_EQ(after.Cell(i, "policy_version"), "0");
  }
  EXPECT_EQ(trained, places);
  absl::StatusOr<TrainerState> state = ReadTrainerState(*FindCheckpoint(dir, "auto"));
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->ledger_bytes, static_cast<int64_t>(fs::file_size(ledger)));
  fs::remove_all(dir);
}

// Fills the file system holding `dir` with `dir`/filler until a write fails, then gives
// back `slack` bytes: room for a ledger row and a metrics line, not for a checkpoint.
bool FillDisk(const fs::path& dir, size_t slack) {
  const fs::path filler = dir / "filler";
  std::FILE* f = std::fopen(filler.c_str(), "wb");
  if (f == nullptr) return false;
  const std::string block(1 << 16, 'x');
  while (std::fwrite(block.data(), 1, block.size(), f) == block.size()) {
  }
  std::fclose(f);
  const uintmax_t size = fs::file_size(filler);
  if (size < slack) return false;
  fs::resize_file(filler, size - slack);
  return true;
}

// A full disk (a small tmpfs, mounted by the test as root): the checkpoint write fails
// its 3 attempts and the step returns an error that says so, instead of training on
// with nothing saved; once there is room, the run resumes from the last complete
// checkpoint, with the ledger cut back to it.
TEST(TrainingLoop, DiskFullStopsTheRunAndTheLastCheckpointResumes) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const fs::path mount = FreshTempDir("training_loop", "disk_full");
  if (::mount("pmdrl-test", mount.c_str(), "tmpfs", 0, "size=16m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs at " << mount << ": " << std::strerror(errno);
  }
  struct Unmount {
    fs::path at;
    ~Unmount() {
      ::umount2(at.c_str(), MNT_DETACH);
      fs::remove_all(at);
    }
  } unmount{mount};
  const std::string dir = (mount / "run").string();
  fs::create_directories(dir);
  {
    auto a_or = MakeLearner(LoopConfig(dir, {"learner.checkpoint_every=1"}));
    ASSERT_TRUE(a_or.ok()) << a_or.status();
    Learner& a = **a_or;
    absl::Status started = a.loop->Start();
    ASSERT_TRUE(started.ok()) << started;
    FakeActors actors(a.coordinator.get());
    for (const v1::Lease& lease : actors.Lease(4)) {
      EXPECT_EQ(actors.Submit(lease, 0), v1::ACK_ACCEPTED);
    }
    absl::StatusOr<bool> stepped = a.loop->Step(milliseconds(5000));  // checkpoints update 1
    ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
    ASSERT_TRUE(FillDisk(mount, 32 << 10));
    stepped = a.loop->Step(milliseconds(5000));
    ASSERT_FALSE(stepped.ok()) << "update 2 trained with nowhere to checkpoint it";
    EXPECT_NE(stepped.status().message().find("No space left on device"), std::string::npos)
        << stepped.status();
    EXPECT_NE(stepped.status().message().find("stopping the run"), std::string::npos)
        << stepped.status();
  }
  fs::remove(mount / "filler");  // the operator makes room

  auto b_or = MakeLearner(LoopConfig(dir, {"learner.resume=auto", "learner.checkpoint_every=1"}));
  ASSERT_TRUE(b_or.ok()) << b_or.status();
  Learner& b = **b_or;
  EXPECT_EQ(b.loop->update(), 1);
  ASSERT_TRUE(b.loop->Start().ok());
  EXPECT_EQ(ReadCsv(fs::path(dir) / "ledger.csv").rows.size(), 2u);  // update 1's places
  absl::StatusOr<bool> stepped = b.loop->Step(milliseconds(5000));   // the buffered groups
  ASSERT_TRUE(stepped.ok() && *stepped) << stepped.status();
  EXPECT_EQ(b.loop->update(), 2);
  absl::StatusOr<TrainerState> state = ReadTrainerState(*FindCheckpoint(dir, "auto"));
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->update, 2);
}

// SIGTERM mid-run (docker stop, Ctrl-C): the loop stops between updates and writes a
// final checkpoint of the last update, so a resume loses nothing.
TEST(TrainingLoop, StopSignalEndsWithAFinalCheckpoint) {
  const std::string dir = FreshTempDir("training_loop", "stop");
  auto learner = MakeLearner(
      LoopConfig(dir, {"learner.updates=5", "learner.eval_every=5", "learner.checkpoint_every=0"}));
  ASSERT_TRUE(learner.ok()) << learner.status();
  Learner& l = **learner;
  ASSERT_TRUE(l.loop->Start().ok());
  FakeActors actors(l.coordinator.get());
  for (const v1::Lease& lease : actors.Lease(2)) {  // one update's worth
    EXPECT_EQ(actors.Submit(lease, 0), v1::ACK_ACCEPTED);
  }
  absl::Status run;
  std::thread runner([&] { run = l.loop->Run(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (l.loop->update() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  SetStopSignalForTesting(SIGTERM);  // as the handler records a delivered SIGTERM
  runner.join();
  SetStopSignalForTesting(0);
  ASSERT_TRUE(run.ok()) << run;
  ASSERT_EQ(l.loop->update(), 1);
  absl::StatusOr<std::string> checkpoint = FindCheckpoint(dir, "auto");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<TrainerState> state = ReadTrainerState(*checkpoint);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->update, 1);
  EXPECT_FALSE(l.coordinator->finished()) << "a stopped run is not a finished one";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pmdrl
