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
#include "learner/communicator.h"
#include "learner/trainer.h"
#include "tests/gloo_pair.h"

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
  ASSERT_EQ(a->names, b0->names);
  double worst = 0;
  for (size_t t = 0; t < a->data.size(); ++t) {
    ASSERT_EQ(b0->data[t].size(), b1->data[t].size());
    EXPECT_EQ(
        std::memcmp(b0->data[t].data(), b1->data[t].data(), b0->data[t].size() * sizeof(float)), 0)
        << "ranks diverged in " << a->names[t];
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a->data[t].size(); ++i) {
      diff += std::pow(double(a->data[t][i]) - b0->data[t][i], 2);
      norm += std::pow(double(a->data[t][i]), 2);
    }
    double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 1e-5) << a->names[t];
  }
  // The runs trained at all: parameters moved away from the base.
  auto init = Trainer::Create(config, tok, base);
  auto start = (*init)->Snapshot(0);
  double moved = 0;
  for (size_t t = 0; t < a->data.size(); ++t) {
    for (size_t i = 0; i < a->data[t].size(); ++i) {
      moved = std::max(moved, std::abs(double(a->data[t][i]) - start->data[t][i]));
    }
  }
  EXPECT_GT(moved, 1e-4);
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
