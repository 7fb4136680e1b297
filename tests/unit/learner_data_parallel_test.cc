// Data parallel PMD-mean: the same global batches trained on 1 rank and on 2 ranks
// (Gloo over loopback, one thread per rank) give the same parameters up to float
// rounding, and the 2 ranks stay bit-identical to each other.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include "common/arith_task.h"
#include "common/config.h"
#include "learner/training/communicator.h"
#include "learner/training/trainer.h"
#include "tests/gloo_pair.h"
#include "tests/weight_diff.h"

namespace pmdrl {
namespace {

Config TinyConfig() {
  absl::StatusOr<Config> c =
      LoadConfig("", {"model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
                      "model.num_heads=4", "model.num_kv_heads=2", "model.max_position=32",
                      "learner.mini_batches=2", "learner.lr=0.001", "learner.warmup_steps=0",
                      "learner.grad_clip=1.0", "learner.tau=0.5", "task.digits=2"});
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Rollout batches of 6 groups x 4 completions with varied response lengths and rewards.
std::vector<std::vector<v1::Group>> MakeBatches(int n, const Tokenizer& tok) {
  std::mt19937 rng(11);
  ArithTask task({2, "+"}, 5, 10);
  std::vector<std::vector<v1::Group>> batches;
  uint64_t index = 0;
  for (int b = 0; b < n; ++b) {
    std::vector<v1::Group> groups;
    for (int g = 0; g < 6; ++g) {
      ArithProblem p = task.Train(3, index++);
      v1::Group group;
      for (int32_t t : ArithPromptTokens(tok, p)) group.add_prompt_tokens(t);
      for (int c = 0; c < 4; ++c) {
        v1::Completion* comp = group.add_completions();
        int len = 1 + static_cast<int>(rng() % 5);
        for (int i = 0; i < len; ++i) {
          comp->add_tokens(i + 1 == len ? tok.EosId() : 3 + static_cast<int>(rng() % 10));
          comp->add_logprobs(-0.5f - 0.25f * static_cast<float>(rng() % 8));
        }
        comp->set_reward(rng() % 2 ? 1.f : -1.f);
      }
      groups.push_back(std::move(group));
    }
    batches.push_back(std::move(groups));
  }
  return batches;
}

TEST(DataParallel, TwoRanksMatchOneRankAndEachOther) {
  Config config = TinyConfig();
  CharTokenizer tok;
  std::string base = (std::filesystem::path(testing::TempDir()) / "dp_base").string();
  {
    auto init = Trainer::Create(config, tok, "");
    ASSERT_TRUE(init.ok()) << init.status();
    ASSERT_TRUE((*init)->Save(base).ok());
  }
  auto single = Trainer::Create(config, tok, base);
  auto rank0 = Trainer::Create(config, tok, base);
  auto rank1 = Trainer::Create(config, tok, base);
  ASSERT_TRUE(single.ok() && rank0.ok() && rank1.ok());

  std::unique_ptr<Communicator> c0, c1;
  ConnectGlooPair(&c0, &c1);
  ASSERT_TRUE(c0 && c1);

  auto batches = MakeBatches(3, tok);
  for (size_t u = 0; u < batches.size(); ++u) {
    ASSERT_TRUE((*single)->Update(batches[u], u).ok());
    UpdateStats plan_stats;
    auto shares = (*rank0)->PlanUpdate(batches[u], u, 2, &plan_stats);
    ASSERT_TRUE(shares.ok()) << shares.status();
    ASSERT_EQ(shares->size(), 2u);
    // Balanced by tokens: each rank got rows of every mini-batch.
    for (const auto& s : *shares) {
      ASSERT_EQ(s.mini_batches_size(), 2);
      EXPECT_GT(s.mini_batches(0).rows_size(), 0);
    }
    absl::StatusOr<UpdateStats> s0, s1;
    std::thread r1([&] { s1 = (*rank1)->TrainShare((*shares)[1], c1.get()); });
    s0 = (*rank0)->TrainShare((*shares)[0], c0.get());
    r1.join();
    ASSERT_TRUE(s0.ok()) << s0.status();
    ASSERT_TRUE(s1.ok()) << s1.status();
    EXPECT_EQ(s0->loss, s1->loss);
  }

  auto a = (*single)->Snapshot(3), b0 = (*rank0)->Snapshot(3), b1 = (*rank1)->Snapshot(3);
  EXPECT_TRUE(BitIdentical(*b0, *b1)) << "the ranks diverged";
  const double worst = WorstRelativeDifference(*a, *b0);
  EXPECT_LE(worst, 1e-5);
  // The runs trained at all: parameters moved away from the base.
  auto init = Trainer::Create(config, tok, base);
  EXPECT_GT(LargestChange(*a, *(*init)->Snapshot(0)), 1e-4);
  std::printf("worst relative parameter difference 1 vs 2 ranks: %.3g\n", worst);
}

}  // namespace
}  // namespace pmdrl

namespace pmdrl {
namespace {

// Replicas that differ are caught, and the error names the rank and the update.
TEST(DataParallel, DivergedReplicasAreReported) {
  Config config = TinyConfig();
  config.run.seed = 1;
  Config other = config;
  other.run.seed = 2;  // a different random init: the replicas differ from the start
  CharTokenizer tok;
  auto t0 = Trainer::Create(config, tok, "");
  auto t1 = Trainer::Create(other, tok, "");
  ASSERT_TRUE(t0.ok() && t1.ok());
  std::unique_ptr<Communicator> c0, c1;
  ConnectGlooPair(&c0, &c1);
  ASSERT_TRUE(c0 && c1);

  absl::Status s0, s1;
  std::thread r1([&] { s1 = (*t1)->CheckReplicas(c1.get(), 7); });
  s0 = (*t0)->CheckReplicas(c0.get(), 7);
  r1.join();
  ASSERT_FALSE(s0.ok());
  EXPECT_NE(std::string(s0.message()).find("rank 1"), std::string::npos) << s0;
  EXPECT_NE(std::string(s0.message()).find("update 7"), std::string::npos) << s0;
  EXPECT_FALSE(s1.ok());

  // After a broadcast from rank 0 they agree.
  std::thread b1([&] { s1 = (*t1)->BroadcastWeights(c1.get()); });
  s0 = (*t0)->BroadcastWeights(c0.get());
  b1.join();
  ASSERT_TRUE(s0.ok() && s1.ok());
  std::thread r2([&] { s1 = (*t1)->CheckReplicas(c1.get(), 8); });
  s0 = (*t0)->CheckReplicas(c0.get(), 8);
  r2.join();
  EXPECT_TRUE(s0.ok()) << s0;
  EXPECT_TRUE(s1.ok()) << s1;
}

}  // namespace
}  // namespace pmdrl

namespace pmdrl {
namespace {

// Updates `batches` on two ranks (rank 1 on a thread), as the learner's main loop does.
void TrainTwoRanks(Trainer& rank0, Trainer& rank1, Communicator* c0, Communicator* c1,
                   const std::vector<std::vector<v1::Group>>& batches, uint64_t first_version) {
  for (size_t u = 0; u < batches.size(); ++u) {
    const uint64_t version = first_version + u;
    UpdateStats plan_stats;
    auto shares = rank0.PlanUpdate(batches[u], version, 2, &plan_stats);
    ASSERT_TRUE(shares.ok()) << shares.status();
    absl::StatusOr<UpdateStats> s0, s1;
    std::thread r1([&] { s1 = rank1.TrainShare((*shares)[1], c1); });
    s0 = rank0.TrainShare((*shares)[0], c0);
    r1.join();
    ASSERT_TRUE(s0.ok()) << s0.status();
    ASSERT_TRUE(s1.ok()) << s1.status();
  }
}

// ZeRO-1 and ZeRO-2 on 2 Gloo ranks take the steps 1 unsharded rank takes (3 updates, to
// 1e-5), the ranks stay identical, and the checkpoint does not depend on the rank count:
// the sharded run's optimizer.pt (gathered) resumes on 1 unsharded rank, and the
// unsharded run's resumes on 2 sharded ranks, both equal to the unsharded run's 4th update.
TEST(DataParallel, ZeroShardedOptimizerMatchesOneRank) {
  CharTokenizer tok;
  Config plain = TinyConfig();
  plain.learner.weight_decay = 0.01;  // the decoupled decay is part of the sharded step
  std::string base = (std::filesystem::path(testing::TempDir()) / "zero_base").string();
  {
    auto init = Trainer::Create(plain, tok, "");
    ASSERT_TRUE(init.ok()) << init.status();
    ASSERT_TRUE((*init)->Save(base).ok());
  }
  auto batches = MakeBatches(4, tok);
  std::vector<std::vector<v1::Group>> first3(batches.begin(), batches.begin() + 3);
  const std::vector<std::vector<v1::Group>> fourth = {batches[3]};
  const std::string single_ckpt =
      (std::filesystem::path(testing::TempDir()) / "zero_single").string();
  auto single = Trainer::Create(plain, tok, base);
  ASSERT_TRUE(single.ok());
  for (size_t u = 0; u < first3.size(); ++u) ASSERT_TRUE((*single)->Update(first3[u], u).ok());
  ASSERT_TRUE((*single)->Save(single_ckpt).ok());
  auto after3 = (*single)->Snapshot(3);
  ASSERT_TRUE((*single)->Update(fourth[0], 3).ok());
  auto after4 = (*single)->Snapshot(4);

  for (int stage : {1, 2}) {
    SCOPED_TRACE("zero_stage " + std::to_string(stage));
    Config zero = plain;
    zero.learner.zero_stage = stage;
    auto rank0 = Trainer::Create(zero, tok, base);
    auto rank1 = Trainer::Create(zero, tok, base);
    ASSERT_TRUE(rank0.ok() && rank1.ok());
    std::unique_ptr<Communicator> c0, c1;
    ConnectGlooPair(&c0, &c1);
    ASSERT_TRUE(c0 && c1);
    TrainTwoRanks(**rank0, **rank1, c0.get(), c1.get(), first3, 0);
    auto z0 = (*rank0)->Snapshot(3), z1 = (*rank1)->Snapshot(3);
    const double d = WorstRelativeDifference(*after3, *z0);
    EXPECT_LE(d, 1e-5);
    EXPECT_EQ(WorstRelativeDifference(*z0, *z1), 0.0) << "the ranks diverged";
    std::printf("ZeRO-%d, 2 ranks vs 1 unsharded: worst relative parameter difference %.3g\n",
                stage, d);

    // Gather on save: the checkpoint resumes on 1 unsharded rank.
    const std::string ckpt =
        (std::filesystem::path(testing::TempDir()) / ("zero_ckpt_" + std::to_string(stage)))
            .string();
    EXPECT_FALSE((*rank0)->Save(ckpt).ok()) << "saving needs the gathered state";
    absl::Status g0, g1;
    std::thread gather1([&] { g1 = (*rank1)->GatherOptimizerState(c1.get()); });
    g0 = (*rank0)->GatherOptimizerState(c0.get());
    gather1.join();
    ASSERT_TRUE(g0.ok() && g1.ok()) << g0 << " " << g1;
    ASSERT_TRUE((*rank0)->Save(ckpt).ok());
    auto resumed = Trainer::Create(plain, tok, ckpt);
    ASSERT_TRUE(resumed.ok());
    ASSERT_TRUE((*resumed)->LoadOptimizer(ckpt).ok());
    (*resumed)->set_optimizer_steps(3 * plain.learner.mini_batches);
    ASSERT_TRUE((*resumed)->Update(fourth[0], 3).ok());
    EXPECT_LE(WorstRelativeDifference(*after4, *(*resumed)->Snapshot(4)), 1e-5);

    // Shard on load: the unsharded checkpoint resumes on 2 sharded ranks.
    auto s0 = Trainer::Create(zero, tok, single_ckpt);
    auto s1 = Trainer::Create(zero, tok, single_ckpt);
    ASSERT_TRUE(s0.ok() && s1.ok());
    for (Trainer* t : {s0->get(), s1->get()}) {
      ASSERT_TRUE(t->LoadOptimizer(single_ckpt).ok());
      t->set_optimizer_steps(3 * plain.learner.mini_batches);
    }
    std::unique_ptr<Communicator> d0, d1;
    ConnectGlooPair(&d0, &d1);
    ASSERT_TRUE(d0 && d1);
    TrainTwoRanks(**s0, **s1, d0.get(), d1.get(), fourth, 3);
    EXPECT_LE(WorstRelativeDifference(*after4, *(*s0)->Snapshot(4)), 1e-5);
  }
}

}  // namespace
}  // namespace pmdrl
