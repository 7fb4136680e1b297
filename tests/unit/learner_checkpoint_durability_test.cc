// Durable checkpoints (learner/training/checkpoint.h) without a model: the trainer's files are
// stand-ins written by a SaveCheckpointFiles callback, so each test checks only how
// checkpoints are written, found, pruned and read back:
//  - a crash between the temporary write and the rename, or between the rename and the
//    `latest` update, leaves a resumable checkpoint, and the next write clears its
//    leftovers;
//  - a missing, garbage or dangling `latest` falls back to the newest complete folder,
//    skipping incomplete ones;
//  - learner.keep_checkpoints keeps exactly N;
//  - a truncated buffered_groups.pb is an error naming the file;
//  - a write that cannot create its folder (even as root) is an error, and the retry
//    helper tries the stated number of times;
//  - a training loop whose checkpoint fails every attempt stops with that error.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/metrics.h"
#include "common/tokenizer.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/coordinator/weight_publisher.h"
#include "learner/learner_setup.h"
#include "learner/training/checkpoint.h"
#include "learner/training_loop.h"
#include "pmdrl/pmdrl.pb.h"
#include "tests/tiny_model_config.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

// Stand-ins for Trainer::Save: the files a real checkpoint's model directory holds, with
// contents that tell one write from another.
SaveCheckpointFiles FakeModel(const std::string& tag) {
  return [tag](const std::string& dir) {
    for (const char* name : {"config.json", "model.safetensors", "optimizer.pt"}) {
      std::ofstream(fs::path(dir) / name) << tag << " " << name;
    }
    return absl::OkStatus();
  };
}

TrainerState State(int64_t update, double elapsed = 0) {
  TrainerState s;
  s.update = update;
  s.version = static_cast<uint64_t>(update);
  s.elapsed_seconds = elapsed;
  s.lease_state_json = "{}";
  return s;
}

std::vector<v1::Group> Groups(int n) {
  std::vector<v1::Group> groups(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    groups[static_cast<size_t>(i)].set_index(static_cast<uint64_t>(100 + i));
    groups[static_cast<size_t>(i)].add_completions()->add_tokens(i);
  }
  return groups;
}

absl::StatusOr<std::string> Write(const std::string& run, int64_t update, int64_t keep = 0,
                                  double elapsed = 0,
                                  const CheckpointWriteOptions* opts = nullptr) {
  CheckpointWriteOptions o = opts != nullptr ? *opts : CheckpointWriteOptions{};
  o.keep = keep;
  return WriteCheckpoint(run, State(update, elapsed), FakeModel(absl::StrCat("u", update)),
                         Groups(2), "test: true\n", o);
}

std::string Dir(const std::string& run, int64_t update) {
  char name[32];
  std::snprintf(name, sizeof(name), "update-%06d", static_cast<int>(update));
  return (fs::path(run) / "checkpoints" / name).string();
}

std::vector<std::string> Entries(const std::string& run) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(fs::path(run) / "checkpoints")) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

CheckpointWriteOptions CrashAt(const std::string& at) {
  CheckpointWriteOptions o;
  o.fault = [at](std::string_view step) {
    return step == at ? absl::AbortedError(absl::StrCat("simulated crash at ", std::string(step)))
                      : absl::OkStatus();
  };
  return o;
}

// A crash after the temporary folder is complete but before the rename (here: a second
// write of the same update, which must not have removed the first) leaves the previous
// checkpoint in place and resumable; a crash after the rename but before `latest` leaves
// `latest` on the previous one. The next write removes both crashes' leftovers.
TEST(CheckpointDurability, CrashBeforeRenameOrLatestKeepsAResumableCheckpoint) {
  const std::string run = FreshTempDir("checkpoint_durability", "crash");
  ASSERT_TRUE(Write(run, 1).ok());
  ASSERT_TRUE(Write(run, 2, 0, /*elapsed=*/2.0).ok());

  CheckpointWriteOptions crash = CrashAt("before_rename");
  absl::StatusOr<std::string> rewrite = Write(run, 2, 0, /*elapsed=*/99.0, &crash);
  ASSERT_FALSE(rewrite.ok());
  EXPECT_TRUE(fs::exists(Dir(run, 2) + ".tmp"));  // the "crashed" write's folder
  absl::StatusOr<std::string> found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 2));
  EXPECT_TRUE(CheckCheckpointComplete(*found).ok()) << CheckCheckpointComplete(*found);
  absl::StatusOr<TrainerState> state = ReadTrainerState(*found);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->elapsed_seconds, 2.0);  // the first write of update 2, untouched

  crash = CrashAt("before_latest");
  ASSERT_FALSE(Write(run, 3, 0, 0, &crash).ok());
  EXPECT_TRUE(CheckCheckpointComplete(Dir(run, 3)).ok());
  found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 2));  // `latest` was not moved yet: still valid

  // Rewriting update 2 for real replaces it and clears the crash's temporary folder.
  absl::StatusOr<std::string> again = Write(run, 2, 0, /*elapsed=*/7.0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Entries(run), (std::vector<std::string>{"latest", "update-000001", "update-000002",
                                                    "update-000003"}));
  EXPECT_EQ(ReadTrainerState(Dir(run, 2))->elapsed_seconds, 7.0);
  fs::remove_all(run);
}

// `latest` missing, garbage, or naming a missing or incomplete folder: resume=auto falls
// back to the newest complete checkpoint instead of failing (or crash-looping).
TEST(CheckpointDurability, BrokenLatestFallsBackToNewestCompleteCheckpoint) {
  const std::string run = FreshTempDir("checkpoint_durability", "fallback");
  for (int64_t u : {1, 2, 3}) ASSERT_TRUE(Write(run, u).ok());
  const fs::path latest = fs::path(run) / "checkpoints" / "latest";

  fs::remove(latest);
  absl::StatusOr<std::string> found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 3));

  std::ofstream(latest, std::ios::binary) << std::string("\0\xff garbage/../x", 15);
  found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 3));

  std::ofstream(latest) << "update-000009\n";  // a folder that is not there
  found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 3));

  // update 3 loses a file's tail: `latest` names it, but it is incomplete, and the
  // fallback skips it for update 2.
  std::ofstream(latest) << "update-000003\n";
  fs::resize_file(fs::path(Dir(run, 3)) / "model.safetensors", 2);
  EXPECT_FALSE(CheckCheckpointComplete(Dir(run, 3)).ok());
  found = FindCheckpoint(run, "auto");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, Dir(run, 2));

  // A resume that names an incomplete folder is an error, not a fallback.
  absl::StatusOr<std::string> named = FindCheckpoint(run, Dir(run, 3));
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.status().message().find("model.safetensors"), std::string::npos)
      << named.status();

  // Nothing complete left: NotFound that says why.
  fs::remove(fs::path(Dir(run, 1)) / "manifest.json");  // no manifest and ...
  fs::remove(fs::path(Dir(run, 1)) / "optimizer.pt");   // ... not a whole legacy folder
  fs::remove(fs::path(Dir(run, 2)) / "trainer_state.json");
  found = FindCheckpoint(run, "auto");
  ASSERT_FALSE(found.ok());
  EXPECT_TRUE(absl::IsNotFound(found.status())) << found.status();
  fs::remove_all(run);
}

// A checkpoint written before manifests existed (the files the reader needs, no
// manifest.json) still counts as complete, so old runs keep resuming.
TEST(CheckpointDurability, FolderWithoutManifestIsCompleteWhenItsFilesAreThere) {
  const std::string run = FreshTempDir("checkpoint_durability", "legacy");
  ASSERT_TRUE(Write(run, 1).ok());
  fs::remove(fs::path(Dir(run, 1)) / "manifest.json");
  EXPECT_TRUE(CheckCheckpointComplete(Dir(run, 1)).ok()) << CheckCheckpointComplete(Dir(run, 1));
  EXPECT_EQ(*FindCheckpoint(run, "auto"), Dir(run, 1));
  fs::remove_all(run);
}

// keep_checkpoints N leaves exactly the N newest complete checkpoints; 0 keeps all.
TEST(CheckpointDurability, PruningKeepsExactlyN) {
  const std::string run = FreshTempDir("checkpoint_durability", "prune");
  for (int64_t u = 1; u <= 5; ++u) ASSERT_TRUE(Write(run, u, /*keep=*/0).ok());
  EXPECT_EQ(Entries(run).size(), 6u);  // 5 and latest
  for (int64_t u = 6; u <= 7; ++u) ASSERT_TRUE(Write(run, u, /*keep=*/3).ok());
  EXPECT_EQ(Entries(run), (std::vector<std::string>{"latest", "update-000005", "update-000006",
                                                    "update-000007"}));
  ASSERT_TRUE(Write(run, 8, /*keep=*/1).ok());
  EXPECT_EQ(Entries(run), (std::vector<std::string>{"latest", "update-000008"}));
  EXPECT_EQ(*FindCheckpoint(run, "auto"), Dir(run, 8));

  // The checkpoint just written is kept even when older-numbered ones are "newer" (a run
  // resumed from an earlier checkpoint).
  ASSERT_TRUE(Write(run, 4, /*keep=*/1).ok());
  EXPECT_EQ(Entries(run), (std::vector<std::string>{"latest", "update-000004"}));
  fs::remove_all(run);
}

// learner.keep_checkpoints: default 3, >= 0.
TEST(CheckpointDurability, KeepCheckpointsConfigKey) {
  absl::StatusOr<Config> c = LoadConfig("", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->learner.keep_checkpoints, 3);
  c = LoadConfig("", {"learner.keep_checkpoints=0"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->learner.keep_checkpoints, 0);
  for (const char* example : {"arith.yaml", "math-tiny.yaml"}) {  // they spell the key out
    c = LoadConfig(absl::StrCat(PMDRL_SOURCE_DIR, "/examples/", example), {});
    ASSERT_TRUE(c.ok()) << example << ": " << c.status();
    EXPECT_EQ(c->learner.keep_checkpoints, 3) << example;
  }
  c = LoadConfig("", {"learner.keep_checkpoints=-1"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("learner.keep_checkpoints"), std::string::npos) << c.status();
}

// A buffered_groups.pb cut inside a group, or inside a length prefix, is an error naming
// the file; the whole file reads back all groups.
TEST(CheckpointDurability, TruncatedBufferedGroupsIsAnError) {
  const std::string run = FreshTempDir("checkpoint_durability", "truncated");
  absl::StatusOr<std::string> dir = Write(run, 1);
  ASSERT_TRUE(dir.ok()) << dir.status();
  absl::StatusOr<std::vector<v1::Group>> groups = ReadBufferedGroups(*dir);
  ASSERT_TRUE(groups.ok()) << groups.status();
  ASSERT_EQ(groups->size(), 2u);
  EXPECT_EQ((*groups)[1].index(), 101u);

  const fs::path file = fs::path(*dir) / "buffered_groups.pb";
  const uintmax_t size = fs::file_size(file);
  uint64_t first = 0;  // the first group's length prefix
  std::ifstream(file, std::ios::binary).read(reinterpret_cast<char*>(&first), sizeof(first));
  // Cut inside the last group, then inside the second length prefix (4 of its 8 bytes).
  for (uintmax_t keep : {size - 3, sizeof(first) + first + 4}) {
    fs::resize_file(file, keep);
    groups = ReadBufferedGroups(*dir);
    ASSERT_FALSE(groups.ok()) << "kept " << keep << " of " << size << " bytes";
    EXPECT_NE(groups.status().message().find(file.string()), std::string::npos) << groups.status();
    EXPECT_NE(groups.status().message().find("truncated"), std::string::npos) << groups.status();
  }
  // Garbage of the right length is corrupt, not silently empty.
  std::string bad(8, '\0');
  bad[0] = 4;
  bad += "\xff\xff\xff\xff";
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bad;
  groups = ReadBufferedGroups(*dir);
  ASSERT_FALSE(groups.ok());
  EXPECT_NE(groups.status().message().find(file.string()), std::string::npos) << groups.status();
  fs::remove_all(run);
}

// A run folder whose parent is a regular file cannot hold checkpoints, for root too
// (chmod would not stop root): the write is an error naming the path, and the retry
// helper tries exactly `attempts` times before giving up with the last error.
TEST(CheckpointDurability, UnwritableDirectoryIsAnErrorAfterRetries) {
  const std::string base = FreshTempDir("checkpoint_durability", "unwritable");
  const fs::path blocker = fs::path(base) / "not-a-folder";
  std::ofstream(blocker) << "x";
  const std::string run = (blocker / "run").string();
  absl::StatusOr<std::string> dir = Write(run, 1);
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find(blocker.string()), std::string::npos) << dir.status();

  int calls = 0;
  absl::StatusOr<std::string> retried = RetryCheckpointWrite(3, std::chrono::milliseconds(1), [&] {
    ++calls;
    return Write(run, 1);
  });
  EXPECT_EQ(calls, 3);
  ASSERT_FALSE(retried.ok());
  EXPECT_NE(retried.status().message().find("after 3 attempts"), std::string::npos)
      << retried.status();
  EXPECT_NE(retried.status().message().find(blocker.string()), std::string::npos)
      << retried.status();

  // A failure that goes away is retried into a success.
  const std::string good = (fs::path(base) / "run").string();
  calls = 0;
  retried = RetryCheckpointWrite(3, std::chrono::milliseconds(1),
                                 [&] { return ++calls == 1 ? Write(run, 1) : Write(good, 1); });
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(*FindCheckpoint(good, "auto"), Dir(good, 1));

  // The trainer's own save failing leaves no checkpoint and `latest` untouched.
  absl::StatusOr<std::string> failed = WriteCheckpoint(
      good, State(2), [](const std::string&) { return absl::InternalError("disk full"); },
      Groups(1), "", {});
  ASSERT_FALSE(failed.ok());
  EXPECT_FALSE(fs::exists(Dir(good, 2)));
  EXPECT_EQ(*FindCheckpoint(good, "auto"), Dir(good, 1));
  fs::remove_all(base);
}

// A real TrainingLoop (tiny model, in-process coordinator) whose checkpoints folder is a
// regular file: the update due for a checkpoint trains, the checkpoint fails its 3
// attempts, and Run returns that error at once instead of training on (with data for a
// second update waiting) with nothing saved.
TEST(CheckpointDurability, TrainingLoopStopsWhenCheckpointsFail) {
  const std::string run = FreshTempDir("checkpoint_durability", "loop");
  absl::StatusOr<Config> config = LoadConfig(
      "", {"model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
           "model.num_heads=4", "model.num_kv_heads=2", "model.max_position=32", "task.digits=2",
           "task.eval_size=2", "actor.max_new_tokens=2", "learner.group_size=2",
           "learner.prompts_per_update=2", "learner.mini_batches=1", "learner.max_staleness=2",
           "learner.eval_every=100", "learner.checkpoint_every=1", "learner.updates=5",
           "learner.max_seconds=20", "run.dir=" + run});
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<PromptSource>> source = MakePromptSource(*config);
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<LearnerStart> start = LoadLearnerStart(*config, **source);
  ASSERT_TRUE(start.ok()) << start.status();
  absl::StatusOr<CoordinatorOptions> copts =
      MakeCoordinatorOptions(*config, start->trainer->model_config());
  ASSERT_TRUE(copts.ok()) << copts.status();
  MetricsRegistry metrics("learner");
  Coordinator coordinator(*std::move(copts), source->get(), std::move(start->table), &metrics);
  WeightPublisher publisher;
  TrainingLoop loop({.config = &*config,
                     .source = source->get(),
                     .trainer = start->trainer.get(),
                     .coordinator = &coordinator,
                     .publisher = &publisher,
                     .metrics = &metrics,
                     .comm = nullptr,
                     .config_yaml = "test: true\n"},
                    start->state, /*resumed=*/false);
  ASSERT_TRUE(loop.Start().ok());
  std::ofstream(fs::path(run) / "checkpoints") << "not a folder";

  // Two updates' worth of scored groups (4 prompts x 2 completions, mixed rewards): a
  // loop that trained on past a failed checkpoint would reach update 2.
  v1::RegisterActorRequest reg;
  reg.set_name("fake");
  const std::string actor = coordinator.RegisterActor(reg).actor_id();
  v1::LeasePromptsRequest lr;
  lr.set_actor_id(actor);
  lr.set_max_prompts(4);
  absl::StatusOr<v1::LeasePromptsResponse> leased = coordinator.LeasePrompts(lr);
  ASSERT_TRUE(leased.ok()) << leased.status();
  ASSERT_EQ(leased->leases_size(), 4);
  for (const v1::Lease& lease : leased->leases()) {
    v1::Group g;
    g.set_lease_id(lease.lease_id());
    g.set_epoch(lease.epoch());
    g.set_index(lease.index());
    g.set_actor_id(actor);
    g.set_verifier_id("fake-verifier");
    g.set_issued_at_version(lease.issued_at_version());
    *g.mutable_prompt_tokens() = lease.prompt_tokens();
    g.set_reference(lease.reference());
    g.set_task("arith");
    for (int c = 0; c < 2; ++c) {
      v1::Completion* comp = g.add_completions();
      comp->add_tokens(3 + c);
      comp->add_tokens(CharTokenizer::kEos);
      comp->add_logprobs(-0.5f);
      comp->add_logprobs(-0.7f);
      comp->set_reward(c == 0 ? 1.f : -1.f);
      comp->set_outcome(c == 0 ? v1::OUTCOME_CORRECT : v1::OUTCOME_INCORRECT);
      comp->set_stopped(true);
    }
    absl::StatusOr<v1::GroupAck> ack = coordinator.Submit(g);
    ASSERT_TRUE(ack.ok()) << ack.status();
    ASSERT_EQ(ack->status(), v1::ACK_ACCEPTED);
  }

  absl::Status ran = loop.Run();
  ASSERT_FALSE(ran.ok());
  EXPECT_EQ(loop.update(), 1);  // stopped at the first checkpoint, not trained on
  EXPECT_NE(ran.message().find("after 3 attempts"), std::string::npos) << ran;
  EXPECT_NE(ran.message().find((fs::path(run) / "checkpoints").string()), std::string::npos) << ran;
  fs::remove_all(run);
}

}  // namespace
}  // namespace pmdrl
