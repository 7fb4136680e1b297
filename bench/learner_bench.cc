// The learner on a real-size model: training tokens/s and achieved FLOP/s next to the
// FLOP/s of plain matmuls of the model's shapes measured in the same run, and the peak
// memory of each update next to the formula (weights, gradients, AdamW state, one
// micro-batch's activations).
//
//   build/bench/learner_bench --model DIR [--device cpu|cuda] [--dtype float32|bfloat16]
//       [--micro-batch-tokens 2048] [--checkpointing] [--ranks 1] [--zero-stage 0|1|2] [--rows 32]
//       [--prompt 128] [--response 128] [--updates 2] [--threads 2] [--peak-tflops X]
//
// Write DIR with `pmdrl init-model` (random weights of real shapes). Every update trains
// one mini-batch of --rows completions (groups of 8) of --prompt + --response random
// tokens, with the actor's log-probs as π_old (no extra forward). Model FLOPs count
// 6 × parameters × tokens for the decoder's products (lm_head only on the response
// tokens it scores) plus causal attention; checkpointing's recompute is not counted, as
// MFU conventions do. --ranks N runs N data-parallel ranks as threads of this process
// (Gloo on the CPU, NCCL on CUDA), each with its own copy of the model; --zero-stage
// shards AdamW's state across them (learner.zero_stage).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/model_matmul.h"
#include "common/config.h"
#include "common/model_config.h"
#include "common/nn/model_dir.h"
#include "common/process.h"
#include "common/tokenizer.h"
#include "learner/training/communicator.h"
#include "learner/training/peak_memory.h"
#include "learner/training/trainer.h"
#include "tests/free_port.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "learner_bench: %s\n", what.c_str());
  std::exit(1);
}

void Sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

double ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) * 1024;
  }
  return 0;
}

struct Counts {
  double body = 0;   // parameters in the decoder layers' products
  double head = 0;   // lm_head (or the tied embedding) V × D
  double total = 0;  // every parameter
};

Counts CountParameters(const pmdrl::ModelConfig& c) {
  const double d = c.hidden_size, hd = c.HeadDim(), h = c.num_attention_heads,
               kv = c.num_key_value_heads, i = c.intermediate_size, v = c.vocab_size;
  Counts n;
  const double attn = h * hd * d * 2 + kv * hd * d * 2, mlp = 3 * d * i;
  n.body = c.num_hidden_layers * (attn + mlp);
  n.head = v * d;
  n.total = n.body + v * d * (c.tie_word_embeddings ? 1 : 2) + c.num_hidden_layers * 2 * d +
            d;  // + norms (biases are negligible)
  return n;
}

std::vector<pmdrl::v1::Group> MakeBatch(int64_t rows, int64_t prompt, int64_t response,
                                        int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<pmdrl::v1::Group> groups;
  const int64_t k = std::min<int64_t>(8, rows);
  for (int64_t g = 0; g * k < rows; ++g) {
    pmdrl::v1::Group group;
    for (int64_t t = 0; t < prompt; ++t)
      group.add_prompt_tokens(static_cast<int32_t>(3 + rng() % (vocab - 3)));
    for (int64_t c = 0; c < k && g * k + c < rows; ++c) {
      pmdrl::v1::Completion* comp = group.add_completions();
      for (int64_t t = 0; t < response; ++t) {
        comp->add_tokens(static_cast<int32_t>(3 + rng() % (vocab - 3)));
        comp->add_logprobs(-11.0f);
      }
      comp->set_reward(c % 2 == 0 ? 1.0f : -1.0f);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pmdrl;
  UsePassiveOpenMpWait(argv);  // as pmdrl-learner does
  std::string model_dir, device = "cpu", dtype = "float32";
  int64_t micro_tokens = 2048, ranks = 1, zero_stage = 0, rows = 32, prompt = 128, response = 128,
          updates = 2, threads = 2;
  bool checkpointing = false;
  double peak_tflops = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    auto count = [&]() -> int64_t {
      const std::string v = next();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 0) Die(a + ": '" + v + "' is not a count");
      return n;
    };
    if (a == "--model")
      model_dir = next();
    else if (a == "--device")
      device = next();
    else if (a == "--dtype")
      dtype = next();
    else if (a == "--micro-batch-tokens")
      micro_tokens = count();
    else if (a == "--checkpointing")
      checkpointing = true;
    else if (a == "--ranks")
      ranks = count();
    else if (a == "--zero-stage")
      zero_stage = count();
    else if (a == "--rows")
      rows = count();
    else if (a == "--prompt")
      prompt = count();
    else if (a == "--response")
      response = count();
    else if (a == "--updates")
      updates = count();
    else if (a == "--threads")
      threads = count();
    else if (a == "--peak-tflops")
      peak_tflops = std::atof(next().c_str());
    else {
      std::fprintf(
          stderr,
          "usage: learner_bench --model DIR [--device cpu|cuda] [--dtype float32|bfloat16] "
          "[--micro-batch-tokens 2048] [--checkpointing] [--ranks 1] [--zero-stage 0] [--rows 32] "
          "[--prompt 128] [--response 128] [--updates 2] [--threads 2] "
          "[--peak-tflops X]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (model_dir.empty()) Die("--model DIR is required (write one with pmdrl init-model)");
  if (rows < 1 || prompt < 1 || response < 1 || updates < 1 || ranks < 1 || threads < 1) {
    Die("--rows, --prompt, --response, --updates, --ranks and --threads must be >= 1");
  }
  LimitBlasThreads();
  absl::StatusOr<ModelConfig> mc = ReadModelConfig(model_dir + "/config.json");
  if (!mc.ok()) Die(std::string(mc.status().message()));
  const bool cuda = device.rfind("cuda", 0) == 0;

  std::vector<std::string> overrides = {
      "learner.device=" + device,
      "learner.dtype=" + dtype,
      absl::StrCat("learner.micro_batch_tokens=", micro_tokens),
      absl::StrCat("learner.activation_checkpointing=", checkpointing ? "true" : "false"),
      absl::StrCat("learner.threads=", threads),
      "learner.mini_batches=1",
      "learner.warmup_steps=0",
      "learner.lr=1e-6",
      "learner.old_logprobs=actor",
      absl::StrCat("learner.world_size=", ranks),
      absl::StrCat("learner.zero_stage=", zero_stage)};
  absl::StatusOr<Config> config = LoadConfig("", overrides);
  if (!config.ok()) Die(std::string(config.status().message()));
  CharTokenizer tok;

  // Ranks >= 1 as threads: each with its own trainer, following rank 0's shares.
  std::vector<std::unique_ptr<Communicator>> comms(ranks);
  if (ranks > 1) {
    CommOptions o;
    o.world_size = static_cast<int>(ranks);
    o.store_address = absl::StrCat("127.0.0.1:", FreePort());
    o.token = "learner-bench-token";  // the store authenticates every rank
    o.backend = cuda ? "nccl" : "gloo";
    std::vector<std::thread> joining;
    std::vector<absl::Status> joined(ranks);
    for (int64_t r = 0; r < ranks; ++r) {
      joining.emplace_back([&, r] {
        CommOptions mine = o;
        mine.rank = static_cast<int>(r);
        mine.cuda_device = cuda ? 0 : -1;
        auto c = CreateCommunicator(mine);
        if (!c.ok()) {
          joined[r] = c.status();
          return;
        }
        comms[r] = *std::move(c);
      });
    }
    for (auto& t : joining) t.join();
    for (const auto& s : joined) {
      if (!s.ok()) Die(std::string(s.message()));
    }
  }
  std::vector<std::unique_ptr<Trainer>> trainers;
  for (int64_t r = 0; r < ranks; ++r) {
    Config c = *config;
    c.learner.rank = r;
    absl::StatusOr<std::unique_ptr<Trainer>> t = Trainer::Create(c, tok, model_dir);
    if (!t.ok()) Die(std::string(t.status().message()));
    trainers.push_back(*std::move(t));
  }

  const Counts n = CountParameters(*mc);
  const at::Device dev = cuda ? at::Device(device) : at::Device(at::kCPU);
  const at::ScalarType st = dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const int64_t row_tokens = prompt + response;
  const int64_t mm_rows =
      micro_tokens > 0 ? std::min(micro_tokens, rows * row_tokens) : rows * row_tokens;
  at::set_num_threads(static_cast<int>(threads));
  SetBlasThreads(static_cast<int>(threads));
  const double mm = pmdrl::ModelMatmulFlops(*mc, mm_rows, st, dev, /*with_lm_head=*/false);
  std::printf(
      "model %s: %.1f M parameters (%s), vocab %lld, %lld layers; %s %s, %lld thread(s), %lld "
      "rank(s), OpenMP wait policy %s\nmini-batch: %lld completions of %lld + %lld tokens; "
      "micro_batch_tokens %lld, "
      "checkpointing %s\nplain matmul of the model's shapes at %lld rows: %.1f GFLOP/s\n",
      model_dir.c_str(), n.total / 1e6, mc->tie_word_embeddings ? "tied" : "untied",
      (long long)mc->vocab_size, (long long)mc->num_hidden_layers, device.c_str(), dtype.c_str(),
      (long long)threads, (long long)ranks,
      std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "(libgomp's default)",
      (long long)rows, (long long)prompt, (long long)response, (long long)micro_tokens,
      checkpointing ? "on" : "off", (long long)mm_rows, mm / 1e9);

  // Model FLOPs of one update (all ranks together).
  const double tokens = static_cast<double>(rows * row_tokens);
  const double scored = static_cast<double>(rows * response);
  const double attention = 6.0 * mc->num_hidden_layers * mc->num_attention_heads * mc->HeadDim() *
                           static_cast<double>(row_tokens * row_tokens) * rows;
  const double flops = 6.0 * (n.body * tokens + n.head * scored) + attention;

  // Memory formula (per rank): float32 master weights, gradients and AdamW's two moments;
  // bfloat16 adds the compute copy and its gradients; ZeRO keeps 1/ranks of AdamW's state.
  // Activations of one micro-batch: with checkpointing each layer's input plus one layer's
  // intermediates, otherwise every layer's intermediates (~10·D + 4·I values per token per layer);
  // plus the logits chunk (~3 × chunk × V float32) and the head's float32 gradient accumulator.
  const double b = st == at::kBFloat16 ? 2 : 4;
  const double adam = n.total * 8 / (zero_stage > 0 ? static_cast<double>(ranks) : 1.0);
  const double state = n.total * (4 + 4) + adam + (st == at::kBFloat16 ? n.total * 4 : 0);
  const double mb_tokens = static_cast<double>(mm_rows) / ranks;
  const double per_layer = (10.0 * mc->hidden_size + 4.0 * mc->intermediate_size) * mb_tokens * b;
  const double acts =
      (checkpointing ? mc->num_hidden_layers * mb_tokens * mc->hidden_size * b + per_layer
                     : mc->num_hidden_layers * per_layer) +
      3.0 * std::min<double>(config->learner.logprob_chunk_tokens, mb_tokens) * mc->vocab_size * 4 +
      n.head * 4;
  std::printf(
      "memory formula per rank: weights+grads+AdamW %.2f GB + activations %.2f GB = %.2f GB%s\n",
      state / 1e9, acts / 1e9, (state + acts) / 1e9,
      ranks > 1 ? absl::StrCat(" (x", ranks, " ranks in this process)").c_str() : "");

  std::printf("resident before the first update: %.2f GB\n", ResidentBytes() / 1e9);
  for (int64_t u = 0; u < updates; ++u) {
    std::vector<v1::Group> batch = MakeBatch(rows, prompt, response, mc->vocab_size, 7 + u);
    ResetPeakMemory(device);
    Sync(dev);
    auto start = Clock::now();
    absl::StatusOr<UpdateStats> stats;
    if (ranks == 1) {
      stats = trainers[0]->Update(batch, u);
    } else {
      std::vector<std::thread> followers;
      std::vector<absl::Status> failed(ranks);
      for (int64_t r = 1; r < ranks; ++r) {
        followers.emplace_back([&, r] {
          absl::StatusOr<std::string> payload = comms[r]->Scatter({});
          v1::RankShare share;
          if (!payload.ok() || !share.ParseFromString(*payload)) {
            failed[r] = payload.ok() ? absl::DataLossError("bad share") : payload.status();
            return;
          }
          absl::StatusOr<UpdateStats> s = trainers[r]->TrainShare(share, comms[r].get());
          if (!s.ok()) failed[r] = s.status();
        });
      }
      stats = trainers[0]->Update(batch, u, comms[0].get());
      for (auto& t : followers) t.join();
      for (const auto& s : failed) {
        if (!s.ok()) Die(std::string(s.message()));
      }
    }
    Sync(dev);
    const double seconds = Since(start);
    if (!stats.ok()) Die(std::string(stats.status().message()));
    const double peak = static_cast<double>(PeakMemoryBytes(device));
    const double achieved = flops / seconds;
    std::printf(
        "update %lld: %.1f s, %.0f tokens/s, %.1f GFLOP/s = %.0f%% of the plain matmul%s; peak "
        "%s %.2f GB (formula %.2f GB)%s\n",
        (long long)u + 1, seconds, stats->trained_tokens / seconds, achieved / 1e9,
        100 * achieved / mm,
        peak_tflops > 0 ? absl::StrFormat(", MFU %.1f%% of %.0f TFLOP/s",
                                          100 * achieved / (peak_tflops * 1e12), peak_tflops)
                              .c_str()
                        : "",
        cuda ? "allocated" : "resident", peak / 1e9, ranks * (state + acts) / 1e9,
        u == 0 ? " (first update: AdamW state allocated)" : "");
    std::printf("resident after update %lld: %.2f GB\n", (long long)u + 1, ResidentBytes() / 1e9);
  }
  return 0;
}
