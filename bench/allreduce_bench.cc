// Gloo all-reduce throughput of the demo model's gradient (about 431k float32 parameters,
// split into tensors like a model's and fused into buckets) printed next to the same
// backend's throughput on one large buffer, measured in the same run, so the cost of
// small messages and of the packing can be read off.
//
// Two ranks run as threads of this process over loopback. Algorithm bandwidth is
// bytes reduced per second (payload size / time per all-reduce); bus bandwidth scales it
// by 2(n-1)/n, the share of the data a ring sends over each link.
//
//   build/bench/allreduce_bench [--params N] [--large_mib M] [--bucket_mib B] [--seconds S]
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "learner/training/communicator.h"
#include "tests/free_port.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  int64_t params = 431000;
  int64_t large_mib = 64;
  int64_t bucket_mib = 25;
  double seconds = 2.0;
};

// Splits n parameters into tensors shaped roughly like a small transformer's: a few
// big matrices and many small vectors (biases, norms).
std::vector<at::Tensor> GradientLike(int64_t n) {
  std::vector<at::Tensor> out;
  int64_t left = n;
  int i = 0;
  while (left > 0) {
    int64_t size = (i % 3 == 2) ? 256 : n / 8;
    size = std::max<int64_t>(1, std::min(size, left));
    out.push_back(at::ones({size}, at::kFloat));
    left -= size;
    ++i;
  }
  return out;
}

struct Result {
  double seconds_per_iter = 0;
  int64_t iters = 0;
};

// Times AllReduce of `tensors` on every rank; rank 0 decides the iteration count from a
// short calibration and broadcasts it, so both ranks make the same calls.
Result Measure(Communicator& comm, std::vector<at::Tensor>& tensors, double budget_s) {
  auto check = [&](const absl::Status& s) {
    if (!s.ok()) {
      std::fprintf(stderr, "allreduce_bench: rank %d: %s\n", comm.rank(), s.ToString().c_str());
      std::exit(1);
    }
  };
  check(comm.AllReduce(tensors, false));  // warm-up (connections, buffers)
  auto t0 = Clock::now();
  for (int i = 0; i < 3; ++i) check(comm.AllReduce(tensors, false));
  double per = std::chrono::duration<double>(Clock::now() - t0).count() / 3;
  std::vector<at::Tensor> iters = {
      at::full({1}, std::max<int64_t>(3, static_cast<int64_t>(budget_s / per)), at::kLong)};
  check(comm.Broadcast(iters, 0));
  const int64_t n = iters[0].item<int64_t>();
  check(comm.Barrier());
  t0 = Clock::now();
  for (int64_t i = 0; i < n; ++i) check(comm.AllReduce(tensors, false));
  check(comm.Barrier());
  Result r;
  r.iters = n;
  r.seconds_per_iter = std::chrono::duration<double>(Clock::now() - t0).count() / n;
  return r;
}

void Print(const char* what, int64_t bytes, const Result& r, int world) {
  const double algbw = bytes / r.seconds_per_iter;
  std::printf("  %-34s %9.3f ms/iter  algbw %8.1f MB/s  busbw %8.1f MB/s  (%lld iters)\n", what,
              r.seconds_per_iter * 1e3, algbw / 1e6, algbw * 2.0 * (world - 1) / world / 1e6,
              static_cast<long long>(r.iters));
}

int Main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--params")
      f.params = std::atoll(argv[i + 1]);
    else if (k == "--large_mib")
      f.large_mib = std::atoll(argv[i + 1]);
    else if (k == "--bucket_mib")
      f.bucket_mib = std::atoll(argv[i + 1]);
    else if (k == "--seconds")
      f.seconds = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--params N] [--large_mib M] [--bucket_mib B] [--seconds S]\n",
                   argv[0]);
      return 2;
    }
  }
  const int world = 2;
  CommOptions base;
  base.world_size = world;
  base.store_address = absl::StrCat("127.0.0.1:", FreePort());
  base.token = "allreduce-bench-token";  // the store authenticates every rank
  base.bucket_bytes = f.bucket_mib << 20;
  Result grad, large;
  int64_t grad_tensors = 0;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      CommOptions o = base;
      o.rank = r;
      absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(o);
      if (!comm.ok()) {
        std::fprintf(stderr, "allreduce_bench: %s\n", comm.status().ToString().c_str());
        std::exit(1);
      }
      std::vector<at::Tensor> g = GradientLike(f.params);
      Result rg = Measure(**comm, g, f.seconds);
      std::vector<at::Tensor> big = {at::ones({(f.large_mib << 20) / 4}, at::kFloat)};
      Result rl = Measure(**comm, big, f.seconds);
      if (r == 0) {
        grad = rg;
        large = rl;
        grad_tensors = static_cast<int64_t>(g.size());
      }
    });
  }
  for (auto& t : threads) t.join();

  std::printf("allreduce_bench: gloo backend, %d ranks as threads over loopback, bucket %lld MiB\n",
              world, static_cast<long long>(f.bucket_mib));
  const int64_t grad_bytes = f.params * 4;
  const std::string g = absl::StrCat("gradient ", f.params, " f32 (", grad_bytes / 1000, " kB, ",
                                     grad_tensors, " tensors)");
  Print(g.c_str(), grad_bytes, grad, world);
  const std::string l = absl::StrCat("one buffer ", f.large_mib, " MiB");
  Print(l.c_str(), f.large_mib << 20, large, world);
  std::printf("  gradient reaches %.0f%% of the large-buffer algbw\n",
              100.0 * (grad_bytes / grad.seconds_per_iter) /
                  ((f.large_mib << 20) / large.seconds_per_iter));
  return 0;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) { return pmdrl::Main(argc, argv); }
