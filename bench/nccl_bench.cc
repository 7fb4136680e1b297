// NCCL on a GPU machine: a world-size-1 all-reduce that must leave the values as they
// are (sum) and average them (mean), then the all-reduce time for the demo model's
// gradient size and for one large buffer, next to a device-to-device copy of the same
// bytes measured in the same run. With one GPU the in-place all-reduce moves no data, so
// its "bandwidth" only shows the call overhead; real bandwidth needs two or more GPUs.
// Needs a CUDA LibTorch and a GPU (scripts/gpu/run-gpu-check); elsewhere it says so and
// exits 1.
//
//   build/bench/nccl_bench [STORE_HOST:PORT]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "learner/training/communicator.h"

namespace {

double TimeIt(const std::function<void()>& f, int iters) {
  f();
  torch::cuda::synchronize();
  auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("nccl_bench: no CUDA device\n");
    return 1;
  }
  pmdrl::CommOptions o;
  o.backend = "nccl";
  o.store_address = argc > 1 ? argv[1] : "127.0.0.1:29533";
  o.token = "nccl-bench-token";  // one rank: the store is its own, on loopback
  auto comm = pmdrl::CreateCommunicator(o);
  if (!comm.ok()) {
    std::printf("nccl_bench: %s\n", std::string(comm.status().ToString()).c_str());
    return 1;
  }
  auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32);
  std::vector<at::Tensor> ts = {torch::arange(1000, opts), torch::full({3, 7}, 2.5, opts)};
  std::vector<at::Tensor> want = {ts[0].clone(), ts[1].clone()};
  absl::Status s = (*comm)->AllReduce(ts, /*average=*/false);
  bool ok = s.ok() && torch::equal(ts[0], want[0]) && torch::equal(ts[1], want[1]);
  s.Update((*comm)->AllReduce(ts, /*average=*/true));
  ok = ok && s.ok() && torch::equal(ts[0], want[0]);
  std::printf("world-size-1 NCCL all-reduce (sum, average): %s %s\n", ok ? "OK" : "WRONG",
              s.ToString().c_str());
  for (int64_t n : {int64_t{430976}, int64_t{64} << 18}) {  // demo gradient; 64 MiB
    std::vector<at::Tensor> g = {torch::randn({n}, opts)};
    at::Tensor dst = torch::empty_like(g[0]);
    double ar = TimeIt([&] { (void)(*comm)->AllReduce(g, false); }, 50);
    double cp = TimeIt([&] { dst.copy_(g[0]); }, 50);
    double bytes = 4.0 * n;
    std::printf(
        "%10.2f MB: all-reduce %8.3f ms (%7.1f GB/s)  vs device copy %8.3f ms (%7.1f GB/s)\n",
        bytes / 1e6, ar * 1e3, bytes / ar / 1e9, cp * 1e3, bytes / cp / 1e9);
  }
  return ok ? 0 : 1;
}
