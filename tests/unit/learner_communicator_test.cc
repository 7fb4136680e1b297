// Communicator (Gloo backend) and its rendezvous store, with every rank a thread of this
// process talking over loopback.
#include <ATen/ATen.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "learner/training/communicator.h"
#include "learner/training/communicator_internal.h"
#include "learner/training/rendezvous_store.h"
#include "tests/free_port.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

CommOptions BaseOptions(int world_size) {
  CommOptions o;
  o.world_size = world_size;
  o.store_address = absl::StrCat("127.0.0.1:", FreePort());
  o.token = "communicator-test-token";
  o.timeout = 30s;  // generous: the machine is busy; the failure tests set their own
  return o;
}

// Runs body(rank, comm) on world_size threads, each with its own Communicator.
void RunRanks(const CommOptions& base, const std::function<void(int, Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < base.world_size; ++r) {
    threads.emplace_back([&base, &body, r] {
      CommOptions o = base;
      o.rank = r;
      absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(o);
      ASSERT_TRUE(comm.ok()) << comm.status();
      EXPECT_EQ((*comm)->rank(), r);
      EXPECT_EQ((*comm)->world_size(), base.world_size);
      body(r, **comm);
    });
  }
  for (auto& t : threads) t.join();
}

// The tensors rank r contributes: mixed shapes and dtypes, all integer-valued so that
// sums are exact whatever order the ring adds them in.
std::vector<at::Tensor> MakeTensors(int r) {
  return {
      at::arange(12, at::kFloat).reshape({3, 4}) + 100 * r,
      at::arange(1, 6, at::kDouble) * (r + 1),
      at::arange(12, at::kFloat).reshape({2, 3, 2}).neg() + r,
      at::arange(21, at::kDouble).reshape({7, 3}) * (r - 1),
      at::full({1000}, static_cast<double>(r + 3), at::kFloat),  // alone in its bucket
      at::arange(9, at::kDouble).reshape({3, 3}) + 7 * r,
      at::arange(3, at::kFloat) - 5 * r,
      at::full({2}, static_cast<double>(-r), at::kDouble),
  };
}

// t / d one element at a time, as IEEE division (what the backend promises), not
// whatever vectorised path ATen's div takes.
at::Tensor DivideEach(const at::Tensor& t, int d) {
  at::Tensor out = t.clone();
  if (out.scalar_type() == at::kFloat) {
    float* p = out.data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] /= static_cast<float>(d);
  } else {
    double* p = out.data_ptr<double>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] /= static_cast<double>(d);
  }
  return out;
}

class CommunicatorWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(CommunicatorWorldTest, AllReduceSumsAndAveragesAcrossBuckets) {
  const int world = GetParam();
  std::vector<at::Tensor> expected_sum = MakeTensors(0);
  for (int r = 1; r < world; ++r) {
    std::vector<at::Tensor> t = MakeTensors(r);
    for (size_t i = 0; i < t.size(); ++i) expected_sum[i] = expected_sum[i] + t[i];
  }
  CommOptions base = BaseOptions(world);
  base.bucket_bytes = 128;  // several buckets per dtype, some fusing several tensors
  std::vector<comm_internal::Bucket> plan = comm_internal::PlanBuckets(MakeTensors(0), 128);
  ASSERT_GT(plan.size(), 3u);
  ASSERT_TRUE(
      std::any_of(plan.begin(), plan.end(), [](const auto& b) { return b.indices.size() > 1; }));

  RunRanks(base, [&](int r, Communicator& comm) {
    std::vector<at::Tensor> sum = MakeTensors(r);
    ASSERT_TRUE(comm.AllReduce(sum, /*average=*/false).ok());
    std::vector<at::Tensor> avg = MakeTensors(r);
    ASSERT_TRUE(comm.AllReduce(avg, /*average=*/true).ok());
    for (size_t i = 0; i < sum.size(); ++i) {
      EXPECT_TRUE(at::equal(sum[i], expected_sum[i])) << "rank " << r << " tensor " << i;
      EXPECT_TRUE(at::equal(avg[i], DivideEach(expected_sum[i], world)))
          << "rank " << r << " tensor " << i;
      EXPECT_EQ(sum[i].sizes(), expected_sum[i].sizes());
    }
    std::vector<at::Tensor> ints = {at::arange(10, at::kLong) * (r + 1),
                                    at::full({3}, r, at::kInt)};
    ASSERT_TRUE(comm.AllReduce(ints, false).ok());
    const int64_t tri = world * (world + 1) / 2;
    EXPECT_TRUE(at::equal(ints[0], at::arange(10, at::kLong) * tri));
    EXPECT_TRUE(at::equal(ints[1], at::full({3}, world * (world - 1) / 2, at::kInt)));
  });
}

TEST_P(CommunicatorWorldTest, BroadcastCopiesTheRootsTensors) {
  const int world = GetParam();
  const int root = world - 1;
  CommOptions base = BaseOptions(world);
  base.bucket_bytes = 32;
  RunRanks(base, [&](int r, Communicator& comm) {
    std::vector<at::Tensor> t = MakeTensors(r);
    t.push_back(at::arange(5, at::kLong) + r);
    ASSERT_TRUE(comm.Broadcast(t, root).ok());
    std::vector<at::Tensor> want = MakeTensors(root);
    want.push_back(at::arange(5, at::kLong) + root);
    for (size_t i = 0; i < t.size(); ++i) {
      EXPECT_TRUE(at::equal(t[i], want[i])) << "rank " << r << " tensor " << i;
    }
  });
}

TEST_P(CommunicatorWorldTest, BarrierWaitsForEveryRank) {
  const int world = GetParam();
  std::atomic<int> arrived{0};
  RunRanks(BaseOptions(world), [&](int r, Communicator& comm) {
    // The last rank is late; nobody may leave the barrier before it has arrived.
    if (r == world - 1) std::this_thread::sleep_for(200ms);
    arrived.fetch_add(1);
    ASSERT_TRUE(comm.Barrier().ok());
    EXPECT_EQ(arrived.load(), world) << "rank " << r;
  });
}

TEST_P(CommunicatorWorldTest, ScatterHandsEachRankItsPayload) {
  const int world = GetParam();
  auto payload = [](int round, int r) {
    // Rank 1's share in round 1 is large, to cross several socket reads.
    return round == 1 && r == 1 ? std::string(3 << 20, 'x') : absl::StrCat("round", round, "-", r);
  };
  RunRanks(BaseOptions(world), [&](int r, Communicator& comm) {
    for (int round = 0; round < 2; ++round) {
      std::vector<std::string> payloads;
      if (r == 0) {
        for (int i = 0; i < world; ++i) payloads.push_back(payload(round, i));
      }
      absl::StatusOr<std::string> mine = comm.Scatter(payloads);
      ASSERT_TRUE(mine.ok()) << mine.status();
      EXPECT_EQ(*mine, payload(round, r)) << "rank " << r << " round " << round;
    }
  });
}

// Rank r's shard for the sharded collectives: integer values, distinct per rank and
// element, so a gathered or summed result is exact.
at::Tensor Shard(int r, int64_t n, at::ScalarType dtype) {
  return (at::arange(n, at::kLong) * 10 + 1000 * r - 3).to(dtype);
}

TEST_P(CommunicatorWorldTest, AllGatherConcatenatesEveryRanksInput) {
  const int world = GetParam();
  RunRanks(BaseOptions(world), [&](int r, Communicator& comm) {
    for (at::ScalarType dtype : {at::kFloat, at::kLong}) {
      for (int64_t n : {1, 7, 1000}) {
        std::vector<at::Tensor> parts;
        for (int q = 0; q < world; ++q) parts.push_back(Shard(q, n, dtype));
        const at::Tensor want = at::cat(parts);

        // Output shaped apart from the input: only the element counts matter.
        at::Tensor input = Shard(r, n, dtype);
        at::Tensor output = at::full({world, n}, -1, dtype);
        absl::Status s = comm.AllGather(input, output);
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_TRUE(at::equal(output.reshape({-1}), want))
            << "rank " << r << " " << dtype << " n=" << n;
        EXPECT_TRUE(at::equal(input, Shard(r, n, dtype)));  // only read

        // In place: the input is this rank's slice of the output.
        at::Tensor flat = at::full({world * n}, -1, dtype);
        at::Tensor slice = flat.narrow(0, r * n, n);
        slice.copy_(Shard(r, n, dtype));
        s = comm.AllGather(slice, flat);
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_TRUE(at::equal(flat, want)) << "in place, rank " << r << " " << dtype;
      }
    }
    // Empty shards move nothing and succeed.
    at::Tensor none = at::zeros({0});
    at::Tensor none_out = at::zeros({0});
    EXPECT_TRUE(comm.AllGather(none, none_out).ok());
  });
}

TEST_P(CommunicatorWorldTest, ReduceScatterSumsAndAveragesEachRanksSlice) {
  const int world = GetParam();
  // Rank r's input: world slices of n; slice k on rank r is Shard(r, n) + 100 * k.
  auto input_of = [world](int r, int64_t n, at::ScalarType dtype) {
    std::vector<at::Tensor> slices;
    for (int k = 0; k < world; ++k) slices.push_back(Shard(r, n, dtype) + 100 * k);
    return at::cat(slices);
  };
  auto want_of = [&](int k, int64_t n, at::ScalarType dtype) {
    at::Tensor sum = at::zeros({n}, dtype);
    for (int r = 0; r < world; ++r) sum = sum + input_of(r, n, dtype).narrow(0, k * n, n);
    return sum;
  };
  RunRanks(BaseOptions(world), [&](int r, Communicator& comm) {
    for (at::ScalarType dtype : {at::kFloat, at::kLong}) {
      for (int64_t n : {1, 7, 1000}) {
        const at::Tensor want = want_of(r, n, dtype);
        at::Tensor input = input_of(r, n, dtype).reshape({world, n});
        at::Tensor output = at::full({n}, -1, dtype);
        absl::Status s = comm.ReduceScatter(input, output, /*average=*/false);
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_TRUE(at::equal(output, want)) << "rank " << r << " " << dtype << " n=" << n;
        EXPECT_TRUE(at::equal(input.reshape({-1}), input_of(r, n, dtype)));  // only read

        // In place: the output is this rank's slice of the input.
        at::Tensor flat = input_of(r, n, dtype);
        at::Tensor slice = flat.narrow(0, r * n, n);
        s = comm.ReduceScatter(flat, slice, false);
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_TRUE(at::equal(slice, want)) << "in place, rank " << r << " " << dtype;

        if (dtype == at::kFloat) {
          at::Tensor avg = at::full({n}, -1, dtype);
          s = comm.ReduceScatter(input_of(r, n, dtype), avg, /*average=*/true);
          ASSERT_TRUE(s.ok()) << s;
          EXPECT_TRUE(at::equal(avg, DivideEach(want, world))) << "average, rank " << r;
        }
      }
    }
    at::Tensor none = at::zeros({0}, at::kLong);
    at::Tensor none_out = at::zeros({0}, at::kLong);
    EXPECT_TRUE(comm.ReduceScatter(none, none_out, false).ok());
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, CommunicatorWorldTest, ::testing::Values(2, 3));

TEST(CommunicatorTest, MissingRankFailsRendezvousWithDeadlineExceeded) {
  // Worlds of 2 and 3 at once (to keep the test short), each without its last rank.
  struct Joiner {
    CommOptions options;
    absl::Status result;
  };
  std::vector<Joiner> joiners;
  for (int world : {2, 3}) {
    CommOptions base = BaseOptions(world);
    base.timeout = 2s;
    for (int r = 0; r < world - 1; ++r) {
      joiners.push_back({base, absl::OkStatus()});
      joiners.back().options.rank = r;
    }
  }
  std::vector<std::thread> threads;
  for (Joiner& j : joiners) {
    threads.emplace_back([&j] { j.result = CreateCommunicator(j.options).status(); });
  }
  for (auto& t : threads) t.join();
  for (const Joiner& j : joiners) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(j.result)) << j.result;
    EXPECT_THAT(std::string(j.result.message()),
                HasSubstr(absl::StrCat("rank ", j.options.rank, " of ", j.options.world_size)));
  }
}

TEST(CommunicatorTest, MissingRankZeroFailsWithDeadlineExceeded) {
  CommOptions o = BaseOptions(2);
  o.timeout = 2s;
  o.rank = 1;  // rank 0, which serves the store, never starts
  absl::Status s = CreateCommunicator(o).status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 1"));
}

TEST(CommunicatorTest, PeerThatSkipsACollectiveTimesOutAndBreaksTheGroup) {
  CommOptions base = BaseOptions(2);
  base.timeout = 2s;
  std::atomic<bool> rank0_done{false};
  RunRanks(base, [&](int r, Communicator& comm) {
    if (r == 0) {
      std::vector<at::Tensor> t = {at::ones({16}, at::kFloat)};
      absl::Status s = comm.AllReduce(t, false);
      EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr("AllReduce on rank 0"));
      absl::Status after = comm.Barrier();
      EXPECT_TRUE(absl::IsFailedPrecondition(after)) << after;
      rank0_done = true;
    } else {
      // Stays alive but never makes the call.
      while (!rank0_done) std::this_thread::sleep_for(10ms);
    }
  });
}

TEST(CommunicatorTest, PeerThatSkipsAllGatherOrReduceScatterTimesOutAndBreaksTheGroup) {
  for (bool gather : {true, false}) {
    const std::string op = gather ? "AllGather" : "ReduceScatter";
    CommOptions base = BaseOptions(2);
    base.timeout = 2s;
    std::atomic<bool> rank0_done{false};
    RunRanks(base, [&](int r, Communicator& comm) {
      if (r == 0) {
        at::Tensor shard = at::ones({16}, at::kFloat);
        at::Tensor full = at::ones({32}, at::kFloat);
        absl::Status s =
            gather ? comm.AllGather(shard, full) : comm.ReduceScatter(full, shard, false);
        EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
        EXPECT_THAT(std::string(s.message()), HasSubstr(op + " on rank 0"));
        // Every later call fails, the sharded ones included.
        absl::Status after =
            gather ? comm.ReduceScatter(full, shard, false) : comm.AllGather(shard, full);
        EXPECT_TRUE(absl::IsFailedPrecondition(after)) << after;
        EXPECT_THAT(std::string(after.message()), HasSubstr("broken"));
        after = comm.Barrier();
        EXPECT_TRUE(absl::IsFailedPrecondition(after)) << after;
        rank0_done = true;
      } else {
        // Stays alive but never makes the call.
        while (!rank0_done) std::this_thread::sleep_for(10ms);
      }
    });
  }
}

TEST(CommunicatorTest, AllGatherAndReduceScatterRejectBadTensorsBeforeCommunicating) {
  // Two ranks, but only rank 0 makes the bad calls: had any of them sent or waited for
  // anything, it would time out (or leave bytes that spoil the good calls after them).
  CommOptions base = BaseOptions(2);
  base.timeout = 5s;
  RunRanks(base, [&](int r, Communicator& comm) {
    if (r == 0) {
      const auto start = std::chrono::steady_clock::now();
      struct Case {
        std::string what;
        std::function<absl::Status()> call;
        std::string message;
      };
      at::Tensor f3 = at::ones({3});
      at::Tensor f6 = at::ones({6});
      at::Tensor f5 = at::ones({5});
      at::Tensor f7 = at::ones({7});
      at::Tensor l3 = at::ones({3}, at::kLong);
      at::Tensor l6 = at::ones({6}, at::kLong);
      at::Tensor b3 = at::ones({3}, at::kBool);
      at::Tensor b6 = at::ones({6}, at::kBool);
      at::Tensor strided = at::ones({6, 2}).select(1, 0);  // 6 elements, stride 2
      at::Tensor undefined;
      at::Tensor six = at::zeros({6});
      at::Tensor not_mine = six.narrow(0, 3, 3);  // rank 1's slice, not rank 0's
      at::Tensor straddling = six.narrow(0, 1, 3);
      std::vector<Case> cases = {
          {"AllGather output of the wrong numel", [&] { return comm.AllGather(f3, f5); },
           "output has 5 elements, want world_size * input.numel() = 2 * 3 = 6"},
          {"AllGather output of the wrong numel (bigger)", [&] { return comm.AllGather(f3, f7); },
           "output has 7 elements"},
          {"AllGather dtype mismatch", [&] { return comm.AllGather(f3, l6); },
           "input has dtype Float"},
          {"AllGather unsupported dtype", [&] { return comm.AllGather(b3, b6); },
           "input has dtype Bool"},
          {"AllGather non-contiguous output", [&] { return comm.AllGather(f3, strided); },
           "output is not contiguous"},
          {"AllGather undefined input", [&] { return comm.AllGather(undefined, f6); },
           "input is undefined"},
          {"AllGather input overlapping another rank's slice",
           [&] { return comm.AllGather(not_mine, six); }, "overlap"},
          {"AllGather input straddling slices", [&] { return comm.AllGather(straddling, six); },
           "overlap"},
          {"ReduceScatter output of the wrong numel",
           [&] { return comm.ReduceScatter(f6, f5, false); },
           "input has 6 elements, want world_size * output.numel() = 2 * 5 = 10"},
          {"ReduceScatter input of the wrong numel",
           [&] { return comm.ReduceScatter(f7, f3, false); }, "input has 7 elements"},
          {"ReduceScatter dtype mismatch", [&] { return comm.ReduceScatter(l6, f3, false); },
           "output has dtype Float but input has Long"},
          {"ReduceScatter average of int64", [&] { return comm.ReduceScatter(l6, l3, true); },
           "cannot be averaged"},
          {"ReduceScatter non-contiguous input",
           [&] { return comm.ReduceScatter(strided, f3, false); }, "input is not contiguous"},
          {"ReduceScatter output overlapping another rank's slice",
           [&] { return comm.ReduceScatter(six, not_mine, false); }, "overlap"},
      };
      for (const Case& c : cases) {
        absl::Status s = c.call();
        EXPECT_TRUE(absl::IsInvalidArgument(s)) << c.what << ": " << s;
        const std::string op = c.what.substr(0, c.what.find(' '));
        EXPECT_THAT(std::string(s.message()), HasSubstr("Gloo " + op + " on rank 0 of 2: "))
            << c.what;
        EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.what;
      }
      EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
    }
    // Invalid arguments did not break the group, and nothing of them is in flight.
    at::Tensor gathered = at::zeros({4}, at::kLong);
    absl::Status s = comm.AllGather(at::full({2}, r + 1, at::kLong), gathered);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(at::equal(gathered, at::tensor({1, 1, 2, 2}, at::kLong)));
    at::Tensor reduced = at::zeros({2});
    s = comm.ReduceScatter(at::arange(4, at::kFloat) * (r + 1), reduced, false);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(at::equal(reduced, at::arange(2 * r, 2 * r + 2, at::kFloat) * 3));
  });
}

TEST(CommunicatorTest, AllGatherAndReduceScatterOnOneRank) {
  RunRanks(BaseOptions(1), [&](int, Communicator& comm) {
    at::Tensor out = at::zeros({4});
    ASSERT_TRUE(comm.AllGather(at::arange(4, at::kFloat), out).ok());
    EXPECT_TRUE(at::equal(out, at::arange(4, at::kFloat)));
    at::Tensor avg = at::zeros({4});
    ASSERT_TRUE(comm.ReduceScatter(at::arange(4, at::kFloat) * 3, avg, true).ok());
    EXPECT_TRUE(at::equal(avg, at::arange(4, at::kFloat) * 3));
    // In place is the identity.
    at::Tensor same = at::arange(4, at::kLong);
    ASSERT_TRUE(comm.AllGather(same, same).ok());
    ASSERT_TRUE(comm.ReduceScatter(same, same, false).ok());
    EXPECT_TRUE(at::equal(same, at::arange(4, at::kLong)));
    at::Tensor short_out = out.narrow(0, 0, 3);
    EXPECT_TRUE(absl::IsInvalidArgument(comm.AllGather(at::zeros({4}), short_out)));
  });
}

TEST(CommunicatorTest, RejectsBadTensors) {
  RunRanks(BaseOptions(1), [&](int, Communicator& comm) {
    std::vector<at::Tensor> non_contiguous = {at::ones({3, 4}).t()};
    EXPECT_TRUE(absl::IsInvalidArgument(comm.AllReduce(non_contiguous, false)));
    std::vector<at::Tensor> ints = {at::ones({3}, at::kLong)};
    EXPECT_TRUE(absl::IsInvalidArgument(comm.AllReduce(ints, /*average=*/true)));
    std::vector<at::Tensor> bools = {at::ones({3}, at::kBool)};
    EXPECT_TRUE(absl::IsInvalidArgument(comm.AllReduce(bools, false)));
    std::vector<at::Tensor> fine = {at::ones({3})};
    EXPECT_TRUE(absl::IsInvalidArgument(comm.Broadcast(fine, 1)));
    // Invalid arguments do not break the group.
    ASSERT_TRUE(comm.AllReduce(fine, true).ok());
    EXPECT_TRUE(at::equal(fine[0], at::ones({3})));
  });
}

TEST(CommunicatorTest, RejectsBadOptions) {
  CommOptions o = BaseOptions(2);
  o.rank = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(CreateCommunicator(o).status()));
  o.rank = 0;
  o.backend = "mpi";
  EXPECT_TRUE(absl::IsInvalidArgument(CreateCommunicator(o).status()));
}

TEST(CommunicatorTest, NcclWithoutGpuIsAFailedPrecondition) {
  if (std::filesystem::exists("/dev/nvidiactl")) GTEST_SKIP() << "this machine has a GPU";
  CommOptions o = BaseOptions(1);
  o.backend = "nccl";
  absl::Status s = CreateCommunicator(o).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("no CUDA device"));
}

TEST(BucketPlanTest, GroupsByDtypeAndRespectsTheBound) {
  std::vector<at::Tensor> t = {at::zeros({4}),                // f32 16 B
                               at::zeros({2}, at::kDouble),   // f64 16 B
                               at::zeros({3}),                // f32 12 B
                               at::zeros({100}),              // f32 400 B: alone
                               at::zeros({0}),                // empty: left out
                               at::zeros({2}, at::kDouble)};  // f64 16 B
  std::vector<comm_internal::Bucket> plan = comm_internal::PlanBuckets(t, 32);
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].dtype, at::kFloat);
  EXPECT_EQ(plan[0].indices, (std::vector<size_t>{0, 2}));
  EXPECT_EQ(plan[0].numel, 7);
  EXPECT_EQ(plan[1].indices, (std::vector<size_t>{3}));
  EXPECT_EQ(plan[2].dtype, at::kDouble);
  EXPECT_EQ(plan[2].indices, (std::vector<size_t>{1, 5}));
}

TEST(RendezvousStoreTest, SetGetWaitDelete) {
  absl::StatusOr<std::unique_ptr<StoreServer>> server =
      StoreServer::Start("127.0.0.1:0", "store-test-token");
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  auto a = StoreClient::Connect(address, "store-test-token", 5s);
  auto b = StoreClient::Connect(address, "store-test-token", 5s);
  ASSERT_TRUE(a.ok() && b.ok());

  std::thread setter([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE((*b)->Set("k", std::string("v\0w", 3)).ok());
  });
  absl::StatusOr<std::string> v = (*a)->Get("k", 10s);  // waits for the late set
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, std::string("v\0w", 3));
  EXPECT_TRUE((*a)->Wait({"k"}, 1s).ok());

  absl::Status missing = (*a)->Wait({"k", "never"}, 200ms);
  EXPECT_TRUE(absl::IsDeadlineExceeded(missing)) << missing;
  EXPECT_THAT(std::string(missing.message()), HasSubstr("never"));

  ASSERT_TRUE((*a)->Delete("k").ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded((*b)->Get("k", 100ms).status()));
}

TEST(RendezvousStoreTest, ClientSeesServerGoAway) {
  auto server = StoreServer::Start("127.0.0.1:0", "store-test-token");
  ASSERT_TRUE(server.ok());
  auto client =
      StoreClient::Connect(absl::StrCat("127.0.0.1:", (*server)->port()), "store-test-token", 5s);
  ASSERT_TRUE(client.ok());
  server->reset();
  absl::Status s = (*client)->Get("k", 5s).status();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
}

TEST(RendezvousStoreTest, ParseHostPort) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(ParseHostPort("10.0.0.1:29500", &host, &port).ok());
  EXPECT_EQ(host, "10.0.0.1");
  EXPECT_EQ(port, 29500);
  ASSERT_TRUE(ParseHostPort("[::1]:7", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 7);
  EXPECT_FALSE(ParseHostPort("nohost", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("h:99999", &host, &port).ok());
}

}  // namespace
}  // namespace pmdrl
