// Actor generation and learner training throughput of the demo model, each printed next
// to the FLOP/s of a plain fp32 matmul measured in the same run on the same threads, so
// the fraction of the machine each reaches can be read off.
//
//   build/bench/throughput_bench [--config examples/arith.yaml] [--threads N] [--seconds S]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "common/arith_task.h"
#include "common/config.h"
#include "common/nn/model.h"
#include "common/nn/sampler.h"
#include "common/process.h"
#include "learner/training/trainer.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// FLOP/s of an n x n fp32 matmul, best of a few timed repetitions.
double MatmulFlops(int64_t n, double budget_s) {
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n});
  torch::Tensor c = torch::mm(a, b);  // warm-up
  double best = 0;
  auto start = Clock::now();
  do {
    auto t = Clock::now();
    c = torch::mm(a, b);
    double s = Seconds(t);
    best = std::max(best, 2.0 * n * n * n / s);
  } while (Seconds(start) < budget_s);
  return best;
}

int Run(int argc, char** argv) {
  LimitBlasThreads();
  std::string config_path = "examples/arith.yaml";
  int threads = 1;
  double seconds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--config") config_path = argv[i + 1];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--seconds") seconds = std::atof(argv[i + 1]);
  }
  absl::StatusOr<Config> cfg = LoadConfig(config_path, {"model.path="});
  if (!cfg.ok()) {
    std::fprintf(stderr, "throughput_bench: %s\n", std::string(cfg.status().message()).c_str());
    return 2;
  }
  Config config = *cfg;
  config.learner.threads = threads;
  torch::set_num_threads(threads);
  CharTokenizer tokenizer;
  ArithTask task({config.task.digits, config.task.ops}, config.task.eval_seed,
                 config.task.eval_size);
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(config, tokenizer, "");
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  ModelConfig mc = (*trainer)->model_config();
  CausalLM model(mc);
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();

  std::printf("pmdrl throughput bench: %lld parameters, %d torch thread(s), config %s\n",
              static_cast<long long>(params), threads, config_path.c_str());
  const double matmul = MatmulFlops(1024, 2.0);
  std::printf("reference: fp32 matmul 1024^3       %8.2f GFLOP/s\n", matmul / 1e9);

  // Actor: one batch as an actor samples it (prompts_per_batch prompts x k completions).
  const int64_t prompts_n = config.actor.prompts_per_batch, k = config.learner.group_size;
  Sampler sampler(1);
  SamplingParams params_s;
  params_s.temperature = config.actor.temperature;
  params_s.top_p = config.actor.top_p;
  params_s.max_new_tokens = config.actor.max_new_tokens;
  params_s.stop_tokens = {tokenizer.EosId()};
  uint64_t index = 0;
  auto next_prompts = [&](int64_t n) {
    std::vector<std::vector<int32_t>> p;
    for (int64_t i = 0; i < n; ++i)
      p.push_back(ArithPromptTokens(tokenizer, task.Train(1, index++)));
    return p;
  };
  int64_t gen_tokens = 0, ctx_tokens = 0;
  auto start = Clock::now();
  while (Seconds(start) < seconds) {
    auto prompts = next_prompts(prompts_n);
    auto out = sampler.Generate(model, prompts, k, params_s);
    for (size_t i = 0; i < out.size(); ++i) {
      // The sampler runs a prompt once and copies its cache to the k rows.
      ctx_tokens += static_cast<int64_t>(prompts[i].size());
      for (const Sample& s : out[i]) {
        gen_tokens += static_cast<int64_t>(s.tokens.size());
        ctx_tokens += static_cast<int64_t>(s.tokens.size());
      }
    }
  }
  double gen_s = Seconds(start);
  double gen_tps = gen_tokens / gen_s;
  // ~2 FLOP per parameter per token through the model (prefill once per prompt, then
  // one decode step per sampled token); attention over the short context is ignored.
  double gen_flops = 2.0 * params * ctx_tokens / gen_s;
  std::printf("actor generation:   %10.0f sampled tokens/s  (%6.2f GFLOP/s = %5.1f%% of matmul)\n",
              gen_tps, gen_flops / 1e9, 100 * gen_flops / matmul);

  // Learner: PMD-mean updates on rollout batches of the configured size.
  std::vector<v1::Group> groups;
  std::mt19937 rng(7);
  for (int64_t g = 0; g < config.learner.prompts_per_update; ++g) {
    auto prompts = next_prompts(1);
    auto out = sampler.Generate(model, prompts, k, params_s);
    v1::Group group;
    group.mutable_prompt_tokens()->Add(prompts[0].begin(), prompts[0].end());
    for (const Sample& s : out[0]) {
      v1::Completion* c = group.add_completions();
      c->mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
      c->mutable_logprobs()->Add(s.logprobs.begin(), s.logprobs.end());
      c->set_reward(rng() % 2 ? 1.f : -1.f);
    }
    groups.push_back(std::move(group));
  }
  (void)(*trainer)->Update(groups, 0);  // warm-up
  int64_t trained = 0;
  int updates = 0;
  start = Clock::now();
  while (Seconds(start) < seconds) {
    absl::StatusOr<UpdateStats> s = (*trainer)->Update(groups, 0);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    trained += s->trained_tokens;
    ++updates;
  }
  double train_s = Seconds(start);
  double train_tps = trained / train_s;
  // ~6 FLOP per parameter per token for forward + backward.
  double train_flops = 6.0 * params * train_tps;
  std::printf(
      "learner training:   %10.0f trained tokens/s  (%6.2f GFLOP/s = %5.1f%% of matmul), "
      "%.2f s per update of %lld groups\n",
      train_tps, train_flops / 1e9, 100 * train_flops / matmul, train_s / updates,
      static_cast<long long>(config.learner.prompts_per_update));
  return 0;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) { return pmdrl::Run(argc, argv); }
