// GradientReducer: gradients summed across two Gloo ranks (threads over loopback) while
// backward runs, bucket by bucket, equal to the plain sum of each rank's gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>

#include "learner/training/gradient_reducer.h"
#include "tests/gloo_pair.h"

namespace pmdrl {
namespace {

// A small MLP whose first and last layers share a weight (tied, like embeddings).
struct Net : torch::nn::Module {
  Net() {
    a = register_parameter("a", torch::randn({16, 8}));
    b = register_parameter("b", torch::randn({16, 16}));
    c = register_parameter("c", torch::randn({16}));
    unused = register_parameter("unused", torch::randn({5}));
  }
  torch::Tensor Loss(const torch::Tensor& x) {
    torch::Tensor h = torch::tanh(torch::matmul(x, a.t()));  // [n, 16]
    h = torch::tanh(torch::matmul(h, b) + c);                // [n, 16]
    return torch::matmul(h, a).pow(2).mean();                // a used twice
  }
  torch::Tensor a, b, c, unused;
};

// Each rank's local gradients and the reduced ones, for the given inputs (nullopt: the
// rank runs no backward at all).
struct RankResult {
  std::vector<torch::Tensor> local, reduced;
  absl::Status status;
};

RankResult RunRank(Communicator* comm, const torch::Tensor& x, bool overlap, bool backward,
                   int steps = 2) {
  torch::manual_seed(7);  // same weights on both ranks
  Net net;
  std::vector<torch::Tensor> params = net.parameters();
  params.push_back(net.a);  // a tensor listed twice is reduced once
  RankResult r;
  GradientReducer reducer(params, comm, /*bucket_bytes=*/600, overlap);
  EXPECT_GT(reducer.num_buckets(), 2);
  for (int step = 0; step < steps; ++step) {  // reuse across steps, like the trainer
    for (auto& p : net.parameters()) p.mutable_grad() = torch::Tensor();
    reducer.Begin();
    if (backward) {
      net.Loss(x * (step + 1)).backward();
      r.local.clear();
      for (auto& p : net.parameters()) {
        r.local.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
      }
    } else {
      r.local.clear();
      for (auto& p : net.parameters()) r.local.push_back(torch::zeros_like(p));
    }
    r.status = reducer.Finish();
    if (!r.status.ok()) return r;
  }
  for (auto& p : net.parameters()) r.reduced.push_back(p.grad().clone());
  return r;
}

class GradientReducerTest : public testing::TestWithParam<bool> {};

TEST_P(GradientReducerTest, SumsEveryGradientAcrossRanks) {
  std::unique_ptr<Communicator> c0, c1;
  ConnectGlooPair(&c0, &c1);
  ASSERT_TRUE(c0 && c1);
  torch::Tensor x0 = torch::randn({4, 8}), x1 = torch::randn({3, 8});
  RankResult r0, r1;
  std::thread t([&] { r1 = RunRank(c1.get(), x1, GetParam(), true); });
  r0 = RunRank(c0.get(), x0, GetParam(), true);
  t.join();
  ASSERT_TRUE(r0.status.ok()) << r0.status;
  ASSERT_TRUE(r1.status.ok()) << r1.status;
  ASSERT_EQ(r0.reduced.size(), 4u);
  for (size_t i = 0; i < r0.reduced.size(); ++i) {
    torch::Tensor want = r0.local[i] + r1.local[i];
    EXPECT_TRUE(torch::allclose(r0.reduced[i], want, 1e-5, 1e-6)) << "parameter " << i;
    EXPECT_TRUE(torch::equal(r0.reduced[i], r1.reduced[i])) << "parameter " << i;
  }
  EXPECT_GT(r0.local[0].abs().sum().item<double>(), 0);    // the test has something to sum
  EXPECT_EQ(r0.reduced[3].abs().sum().item<double>(), 0);  // unused: zeros, not garbage
}

TEST_P(GradientReducerTest, RankWithoutBackwardContributesZeros) {
  std::unique_ptr<Communicator> c0, c1;
  ConnectGlooPair(&c0, &c1);
  ASSERT_TRUE(c0 && c1);
  torch::Tensor x0 = torch::randn({4, 8});
  RankResult r0, r1;
  std::thread t([&] { r1 = RunRank(c1.get(), x0, GetParam(), /*backward=*/false); });
  r0 = RunRank(c0.get(), x0, GetParam(), true);
  t.join();
  ASSERT_TRUE(r0.status.ok()) << r0.status;
  ASSERT_TRUE(r1.status.ok()) << r1.status;
  for (size_t i = 0; i < r0.reduced.size(); ++i) {
    EXPECT_TRUE(torch::equal(r0.reduced[i], r0.local[i])) << "parameter " << i;
    EXPECT_TRUE(torch::equal(r1.reduced[i], r0.local[i])) << "parameter " << i;
  }
}

TEST(GradientReducer, DeadPeerFailsFinishNamingTheBucket) {
  std::unique_ptr<Communicator> c0, c1;
  ConnectGlooPair(&c0, &c1);
  ASSERT_TRUE(c0 && c1);
  c1.reset();  // rank 1 leaves: rank 0's collectives fail instead of hanging
  RankResult r0 = RunRank(c0.get(), torch::randn({2, 8}), true, true, 1);
  ASSERT_FALSE(r0.status.ok());
  EXPECT_NE(r0.status.message().find("gradient bucket 0"), std::string::npos) << r0.status;
}

INSTANTIATE_TEST_SUITE_P(Overlap, GradientReducerTest, testing::Bool());

}  // namespace
}  // namespace pmdrl
