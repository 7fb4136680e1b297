// Data-parallel learner throughput: trained tokens/s of PMD-mean updates of the demo
// model with 1 rank and with 2 ranks (Gloo over loopback, each rank a thread of this
// process with one Torch thread), with the gradient all-reduce overlapped with backward
// and without. The reference is 1 rank given both Torch threads, measured in the same
// run: data parallelism is worth it where it beats that.
//
// With --device cuda (a GPU machine; scripts/gpu/run-gpu-check): PMD-mean updates on the
// GPU, alone and through a world-size-1 NCCL communicator (the bucket hooks and NCCL
// in the loop), next to the 1-thread CPU figure, after checking that one update on the
// GPU lands on the same weights as on the CPU.
//
//   build/bench/learner_scaling_bench [--config examples/arith.yaml] [--seconds S]
//                                     [--device cpu|cuda]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/arith_task.h"
#include "common/config.h"
#include "common/process.h"
#include "learner/training/communicator.h"
#include "learner/training/trainer.h"
#include "tests/free_port.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void Die(const absl::Status& s) {
  std::fprintf(stderr, "learner_scaling_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

// A rollout batch shaped like the demo's: prompts_per_update arith prompts, group_size
// completions each, response lengths spread over 2..max_new_tokens, rewards ±1.
std::vector<v1::Group> DemoBatch(const Config& config, const CharTokenizer& tok) {
  ArithTask task({config.task.digits, config.task.ops}, config.task.eval_seed,
                 config.task.eval_size);
  std::mt19937 rng(7);
  std::vector<v1::Group> groups;
  for (int64_t g = 0; g < config.learner.prompts_per_update; ++g) {
    v1::Group group;
    for (int32_t t : ArithPromptTokens(tok, task.Train(1, g))) group.add_prompt_tokens(t);
    for (int64_t c = 0; c < config.learner.group_size; ++c) {
      v1::Completion* comp = group.add_completions();
      const int len = 2 + static_cast<int>(rng() % (config.actor.max_new_tokens - 1));
      for (int i = 0; i < len; ++i) {
        comp->add_tokens(i + 1 == len ? tok.EosId() : 3 + static_cast<int>(rng() % 10));
        comp->add_logprobs(-1.0f);
      }
      comp->set_reward(rng() % 2 ? 1.f : -1.f);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

struct Figure {
  double tokens_per_s = 0;
  double seconds_per_update = 0;
};

// One rank; with `comm` (world size 1) the update goes through the collectives too.
Figure OneRank(Config config, int threads, const std::vector<v1::Group>& batch, double budget,
               Communicator* comm = nullptr) {
  config.learner.threads = threads;
  CharTokenizer tok;
  auto trainer = Trainer::Create(config, tok, "");
  if (!trainer.ok()) Die(trainer.status());
  if (auto s = (*trainer)->Update(batch, 0, comm); !s.ok()) Die(s.status());  // warm-up
  int64_t tokens = 0, updates = 0;
  auto start = Clock::now();
  while (Seconds(start) < budget) {
    auto s = (*trainer)->Update(batch, 0, comm);
    if (!s.ok()) Die(s.status());
    tokens += s->trained_tokens;
    ++updates;
  }
  const double t = Seconds(start);
  return {tokens / t, t / updates};
}

Figure TwoRanks(Config config, bool overlap, const std::vector<v1::Group>& batch, double budget) {
  config.learner.threads = 1;
  config.learner.overlap_allreduce = overlap;
  CommOptions o0;
  o0.world_size = 2;
  o0.store_address = absl::StrCat("127.0.0.1:", FreePort());
  o0.token = "scaling-bench-token";  // the store authenticates every rank
  o0.bucket_bytes = config.learner.bucket_mb << 20;
  CommOptions o1 = o0;
  o1.rank = 1;
  CharTokenizer tok;
  Figure f;
  std::thread follower([&] {
    auto comm = CreateCommunicator(o1);
    if (!comm.ok()) Die(comm.status());
    auto trainer = Trainer::Create(config, tok, "");
    if (!trainer.ok()) Die(trainer.status());
    while (true) {
      absl::StatusOr<std::string> payload = (*comm)->Scatter({});
      if (!payload.ok()) Die(payload.status());
      v1::RankShare share;
      if (!share.ParseFromString(*payload)) Die(absl::DataLossError("bad share"));
      if (share.stop()) return;
      if (auto s = (*trainer)->TrainShare(share, comm->get()); !s.ok()) Die(s.status());
    }
  });
  auto comm = CreateCommunicator(o0);
  if (!comm.ok()) Die(comm.status());
  auto trainer = Trainer::Create(config, tok, "");
  if (!trainer.ok()) Die(trainer.status());
  if (auto s = (*trainer)->Update(batch, 0, comm->get()); !s.ok()) Die(s.status());  // warm-up
  int64_t tokens = 0, updates = 0;
  auto start = Clock::now();
  while (Seconds(start) < budget) {
    auto s = (*trainer)->Update(batch, 0, comm->get());
    if (!s.ok()) Die(s.status());
    tokens += s->trained_tokens;
    ++updates;
  }
  const double t = Seconds(start);
  v1::RankShare stop;
  stop.set_stop(true);
  if (auto s = (*comm)->Scatter({stop.SerializeAsString(), stop.SerializeAsString()}); !s.ok()) {
    Die(s.status());
  }
  follower.join();
  f.tokens_per_s = tokens / t;
  f.seconds_per_update = t / updates;
  return f;
}

// The largest relative difference between two snapshots' weights.
double MaxRelDiff(const WeightVersion& a, const WeightVersion& b) {
  double worst = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const float* x = a.Floats(i);
    const float* y = b.Floats(i);
    for (int64_t j = 0; j < a.tensors[i].elements(); ++j) {
      const double d = std::abs(double{x[j]} - y[j]);
      worst = std::max(worst, d / std::max(1e-3, std::abs(double{x[j]})));
    }
  }
  return worst;
}

int RunCuda(Config config, const std::vector<v1::Group>& batch, double seconds) {
  CharTokenizer tok;
  config.learner.threads = 1;
  Config gpu = config;
  gpu.learner.device = "cuda";
  CommOptions o;
  o.backend = "nccl";
  o.store_address = absl::StrCat("127.0.0.1:", FreePort());
  o.token = "scaling-bench-token";
  o.bucket_bytes = 1 << 20;
  Config gpu_nccl = gpu;
  gpu_nccl.learner.bucket_mb = 1;  // two buckets of the 1.7 MB gradient: one overlaps backward
  auto nccl = CreateCommunicator(o);
  if (!nccl.ok()) Die(nccl.status());

  // Same init (the CPU generator seeds the weights before the move), same batches: the
  // GPU, alone and through NCCL, must land on the CPU's weights up to float rounding.
  auto on_cpu = Trainer::Create(config, tok, "");
  auto on_gpu = Trainer::Create(gpu, tok, "");
  auto via_nccl = Trainer::Create(gpu_nccl, tok, "");
  for (auto* t : {&on_cpu, &on_gpu, &via_nccl}) {
    if (!t->ok()) Die(t->status());
  }
  for (int u = 0; u < 3; ++u) {
    auto a = (*on_cpu)->Update(batch, u);
    auto b = (*on_gpu)->Update(batch, u);
    auto c = (*via_nccl)->Update(batch, u, nccl->get());
    for (auto* r : {&a, &b, &c}) {
      if (!r->ok()) Die(r->status());
    }
    std::printf("  update %d: loss cpu %+.6f cuda %+.6f nccl %+.6f; grad norm cpu %.6f cuda %.6f\n",
                u + 1, a->loss, b->loss, c->loss, a->grad_norm, b->grad_norm);
  }
  auto want = (*on_cpu)->Snapshot(3);
  const double d_gpu = MaxRelDiff(*want, *(*on_gpu)->Snapshot(3));
  const double d_nccl = MaxRelDiff(*want, *(*via_nccl)->Snapshot(3));
  std::printf(
      "  after 3 updates, max relative weight difference to the cpu: cuda %.2e, "
      "cuda through nccl %.2e\n",
      d_gpu, d_nccl);

  Figure cpu = OneRank(config, 1, batch, seconds);
  Figure one = OneRank(gpu, 1, batch, seconds);
  Figure via = OneRank(gpu_nccl, 1, batch, seconds, nccl->get());
  auto line = [&](const char* what, const Figure& f) {
    std::printf("  %-48s %9.0f tokens/s  %6.3f s/update  x%.2f of the cpu\n", what, f.tokens_per_s,
                f.seconds_per_update, f.tokens_per_s / cpu.tokens_per_s);
  };
  line("cpu, 1 rank, 1 torch thread (reference)", cpu);
  line("cuda, 1 rank", one);
  line("cuda, 1 rank through NCCL (world 1, bucket hooks)", via);
  return d_gpu < 1e-3 && d_nccl < 1e-3 ? 0 : 1;
}

int Run(int argc, char** argv) {
  LimitBlasThreads();
  std::string config_path = "examples/arith.yaml";
  std::string device = "cpu";
  double seconds = 10;
  for (int i = 1; i < argc; i += 2) {
    std::string a = argv[i];
    if (i + 1 < argc && a == "--config") {
      config_path = argv[i + 1];
    } else if (i + 1 < argc && a == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else if (i + 1 < argc && a == "--device") {
      device = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: %s [--config FILE] [--seconds S] [--device cpu|cuda]\n",
                   argv[0]);
      return 2;
    }
  }
  absl::StatusOr<Config> cfg = LoadConfig(config_path, {"model.path="});
  if (!cfg.ok()) Die(cfg.status());
  CharTokenizer tok;
  std::vector<v1::Group> batch = DemoBatch(*cfg, tok);
  std::printf(
      "learner_scaling_bench: demo model of %s, %lld groups x %lld completions per update, "
      "%u hardware threads\n",
      config_path.c_str(), static_cast<long long>(cfg->learner.prompts_per_update),
      static_cast<long long>(cfg->learner.group_size), std::thread::hardware_concurrency());
  if (device == "cuda") return RunCuda(*cfg, batch, seconds);
  Figure one = OneRank(*cfg, 1, batch, seconds);
  Figure ref = OneRank(*cfg, 2, batch, seconds);
  Figure seq = TwoRanks(*cfg, false, batch, seconds);
  Figure ovl = TwoRanks(*cfg, true, batch, seconds);
  auto line = [&](const char* what, const Figure& f) {
    std::printf("  %-48s %9.0f tokens/s  %6.3f s/update  x%.2f of 1 rank\n", what, f.tokens_per_s,
                f.seconds_per_update, f.tokens_per_s / one.tokens_per_s);
  };
  line("1 rank, 1 torch thread", one);
  line("1 rank, 2 torch threads (reference)", ref);
  line("2 ranks (gloo), 1 thread each, all-reduce after", seq);
  line("2 ranks (gloo), 1 thread each, overlapped", ovl);
  return 0;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) { return pmdrl::Run(argc, argv); }
