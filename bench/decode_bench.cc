// Decode speed of the rollout engine (engine/), batch 1 to 256 rows, each figure printed
// next to the rooflines measured in the same run on the same threads: memory (weight
// bytes / measured read bandwidth) and compute (the FLOP/s of plain matmuls of the
// model's shapes). Optionally llama.cpp's batch-1 decode on the same weights (GGUF,
// through ../shared/tools/llamacpp-peer; scripts/decode-vs-llamacpp sets it up).
//
//   build/bench/decode_bench --model DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16]
//       [--rows 1,16,64,256] [--prompt 64] [--new 128] [--threads 2] [--seconds 60]
//       [--llamacpp MODEL.gguf --peer DIR]
//
// Prompts are random token ids, one per group of up to 8 rows (as RL groups share theirs);
// rows never stop early (no stop token), so every row decodes exactly --new tokens unless
// --seconds of decoding run out first (then the steps run so far are measured). Prefill is
// timed apart from decode, as llama.cpp's bench does.
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/model_matmul.h"
#include "common/model_config.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "engine/generation_engine.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double ResidentMb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

void Sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

// Bytes per second read from device memory: a sum over a 512 MB buffer (on the CPU
// split over `threads` plain threads, whatever Torch's own thread setting).
double ReadBandwidth(const at::Device& d, int64_t threads) {
  at::Tensor a = torch::ones({128 << 20}, at::TensorOptions().dtype(at::kFloat).device(d));
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    Sync(d);
    auto t = Clock::now();
    if (d.is_cpu()) {
      std::vector<std::thread> pool;
      std::vector<double> sums(threads);
      const int64_t part = a.numel() / threads;
      for (int64_t k = 0; k < threads; ++k) {
        pool.emplace_back([&, k] {
          const float* p = a.data_ptr<float>() + k * part;
          float acc[16] = {0};
          for (int64_t j = 0; j + 16 <= part; j += 16) {
            for (int l = 0; l < 16; ++l) acc[l] += p[j + l];
          }
          for (float x : acc) sums[k] += x;
        });
      }
      for (auto& th : pool) th.join();
    } else {
      at::Tensor s = a.sum();
    }
    Sync(d);
    best = std::max(best, a.numel() * 4.0 / Since(t));
  }
  return best;
}

// Bytes per second of a copy (bytes read + bytes written).
double CopyBandwidth(const at::Device& d) {
  at::Tensor a = torch::ones({64 << 20}, at::TensorOptions().dtype(at::kFloat).device(d));
  at::Tensor b = torch::empty_like(a);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    Sync(d);
    auto t = Clock::now();
    b.copy_(a);
    Sync(d);
    best = std::max(best, 2 * a.numel() * 4.0 / Since(t));
  }
  return best;
}

double LlamaCppTokPerSec(const std::string& peer, const std::string& gguf, int threads) {
  const std::string cmd = "cd '" + peer + "' && node peer.mjs bench '" + gguf + "' --threads " +
                          std::to_string(threads) + " --tokens 128 --reps 3 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return 0;
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (pclose(p) != 0) return 0;
  try {
    auto j = nlohmann::json::parse(out);
    return j["results"][0]["medianTokPerSec"].get<double>();
  } catch (const std::exception&) {
    std::fprintf(stderr, "llama.cpp peer printed no result: %s\n", out.c_str());
    return 0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, device = "cpu", dtype = "float32", rows_arg = "1,16,64,256", gguf, peer;
  int64_t prompt_len = 64, new_tokens = 128, threads = 2;
  double seconds = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model")
      model_dir = next();
    else if (a == "--device")
      device = next();
    else if (a == "--dtype")
      dtype = next();
    else if (a == "--rows")
      rows_arg = next();
    else if (a == "--prompt")
      prompt_len = std::atoll(next().c_str());
    else if (a == "--new")
      new_tokens = std::atoll(next().c_str());
    else if (a == "--threads")
      threads = std::atoll(next().c_str());
    else if (a == "--seconds")
      seconds = std::atof(next().c_str());
    else if (a == "--llamacpp")
      gguf = next();
    else if (a == "--peer")
      peer = next();
    else {
      std::fprintf(stderr,
                   "usage: decode_bench --model DIR [--device cpu|cuda] [--dtype float32|bfloat16|"
                   "float16] [--rows 1,16,64,256] [--prompt 64] [--new 128] [--threads 2] "
                   "[--seconds 60] [--llamacpp MODEL.gguf --peer DIR]\n");
      return 2;
    }
  }
  if (model_dir.empty()) {
    std::fprintf(stderr,
                 "decode_bench: --model DIR is required (write one with pmdrl init-model)\n");
    return 2;
  }
  std::vector<int64_t> row_counts;
  for (absl::string_view s : absl::StrSplit(rows_arg, ',')) {
    int64_t r = 0;
    if (!absl::SimpleAtoi(s, &r) || r < 1) {
      std::fprintf(stderr, "decode_bench: --rows: '%s' is not a positive count\n",
                   std::string(s).c_str());
      return 2;
    }
    row_counts.push_back(r);
  }
  torch::set_num_threads(static_cast<int>(threads));  // for the rooflines below
  torch::NoGradGuard no_grad;

  absl::StatusOr<pmdrl::ModelConfig> config = pmdrl::ReadModelConfig(model_dir + "/config.json");
  if (!config.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", config.status().ToString().c_str());
    return 1;
  }
  const double rss_start = ResidentMb();
  // The weights travel as float32, as they reach an actor; staged once, then freed.
  absl::StatusOr<pmdrl::CausalLM> staged = pmdrl::LoadModelDir(model_dir);
  if (!staged.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", staged.status().ToString().c_str());
    return 1;
  }
  std::vector<std::pair<std::string, at::Tensor>> named = pmdrl::NamedWeights(*staged);
  std::vector<pmdrl::WeightView> views;
  int64_t params = 0;
  for (auto& [name, t] : named) {
    views.push_back({name, t.sizes().vec(), t.data_ptr<float>()});
    params += t.numel();
  }
  const pmdrl::ModelConfig& c = *config;
  std::printf(
      "model %s: %s, %lld layers, hidden %lld, %lld heads / %lld KV, vocab %lld, %.1f M params%s\n",
      model_dir.c_str(), c.architecture.c_str(), (long long)c.num_hidden_layers,
      (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.num_key_value_heads,
      (long long)c.vocab_size, params / 1e6, c.tie_word_embeddings ? " (tied)" : "");

  const at::Device dev = device == "cpu" ? at::Device(at::kCPU) : at::Device(device);
  const at::ScalarType st = *pmdrl::DtypeFromName(dtype);
  const double read_bw = ReadBandwidth(dev, threads), copy_bw = CopyBandwidth(dev);
  const int64_t element = c10::elementSize(st);
  // Bytes one decode step must read: every weight once, except an untied embedding table
  // (a lookup reads one row; a tied table is read whole as the output head). FLOP per
  // token: 2 per weight used as a matrix, plus attention over the mean context.
  const int64_t table = c.vocab_size * c.hidden_size;
  const int64_t matrix_params = params - (c.tie_word_embeddings ? 0 : table);
  const double step_bytes = static_cast<double>(matrix_params) * element;
  const double mean_context = prompt_len + new_tokens / 2.0;
  const double flop_per_token = 2.0 * matrix_params + 4.0 * c.num_hidden_layers *
                                                          c.num_attention_heads * c.HeadDim() *
                                                          mean_context;
  const double mm_flops = pmdrl::ModelMatmulFlops(c, 256, st, dev, /*with_lm_head=*/true);
  std::printf(
      "%s %s, %lld threads: read %.1f GB/s, copy %.1f GB/s (read+write); matmul of the "
      "model's shapes at 256 rows: %.1f GFLOP/s\n",
      dev.str().c_str(), dtype.c_str(), (long long)threads, read_bw / 1e9, copy_bw / 1e9,
      mm_flops / 1e9);
  std::printf(
      "rooflines per token: memory %.3f GB/step -> %.1f steps/s; compute %.2f GFLOP/token -> %.1f "
      "tok/s\n",
      step_bytes / 1e9, read_bw / step_bytes, flop_per_token / 1e9, mm_flops / flop_per_token);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(
      0, static_cast<int32_t>(std::min<int64_t>(c.vocab_size, 150000) - 1));
  double batch1 = 0;
  // One engine with slots for the largest row count; each measurement fills as many.
  const int64_t max_rows = *std::max_element(row_counts.begin(), row_counts.end());
  std::unique_ptr<pmdrl::GenerationEngine> engine;
  {
    pmdrl::EngineOptions o;
    o.device = device;
    o.dtype = dtype;
    o.max_rows = max_rows;
    o.threads = threads;  // the engine's own thread policy (EngineOptions::threads)
    o.max_context = prompt_len + new_tokens + 8;
    o.max_new_tokens = new_tokens;
    o.temperature = 1.0;
    o.seed = 7;
    absl::StatusOr<std::unique_ptr<pmdrl::GenerationEngine>> created =
        pmdrl::GenerationEngine::Create(c, o);
    if (!created.ok()) {
      std::fprintf(stderr, "decode_bench: %s\n", created.status().ToString().c_str());
      return 1;
    }
    engine = *std::move(created);
    if (absl::Status s = engine->LoadWeights(1, views); !s.ok()) {
      std::fprintf(stderr, "decode_bench: %s\n", s.ToString().c_str());
      return 1;
    }
    // What an actor holds: the engine alone, once the float32 staging copy is gone.
    named.clear();
    views.clear();
    staged = absl::StatusOr<pmdrl::CausalLM>(absl::CancelledError());
    malloc_trim(0);
    const double rss = ResidentMb() - rss_start;
    const double weights = engine->weight_bytes() / 1e6, kv = engine->kv_bytes() / 1e6;
    std::printf(
        "resident memory of the engine: %.0f MB above the process's start (weights %.0f MB, "
        "KV pool %.0f MB; bound weights x 1.15 + KV = %.0f MB) %s\n",
        rss, weights, kv, weights * 1.15 + kv, rss <= weights * 1.15 + kv ? "OK" : "OVER");
  }
  for (int64_t rows : row_counts) {
    const pmdrl::EngineStats before = engine->stats();
    // Groups of up to 8 completions share a prompt, as an RL group does: one prefill each.
    const int64_t group = std::min<int64_t>(rows, 8);
    for (int64_t r = 0; r < rows; r += group) {
      pmdrl::GroupRequest req;
      req.id = r;
      req.n = std::min(group, rows - r);
      for (int64_t t = 0; t < prompt_len; ++t) req.prompt.push_back(token(rng));
      if (absl::Status s = engine->Submit(std::move(req)); !s.ok()) {
        std::fprintf(stderr, "decode_bench: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    // --seconds bounds the decode time (prefill is not counted).
    while (!engine->idle() && engine->stats().decode_seconds - before.decode_seconds < seconds) {
      absl::StatusOr<std::vector<pmdrl::FinishedGroup>> done = engine->Step();
      if (!done.ok()) {
        std::fprintf(stderr, "decode_bench: %s\n", done.status().ToString().c_str());
        return 1;
      }
    }
    Sync(dev);
    pmdrl::EngineStats st_ = engine->stats();
    st_.steps -= before.steps;
    st_.row_steps -= before.row_steps;
    st_.decode_seconds -= before.decode_seconds;
    st_.prefill_seconds -= before.prefill_seconds;
    st_.sample_seconds -= before.sample_seconds;
    const double tok_s = st_.row_steps / st_.decode_seconds;
    const double mem_roof = rows * read_bw / step_bytes;
    const double comp_roof = mm_flops / flop_per_token;
    if (rows == 1) batch1 = tok_s;
    std::printf(
        "rows %4lld: %8.1f tok/s decode (%lld steps, %.0f%% sampling; prefill %.2f s) | memory "
        "roofline %8.1f (%3.0f%%) | compute roofline %7.1f (%3.0f%%) | %s\n",
        (long long)rows, tok_s, (long long)st_.steps,
        100 * st_.sample_seconds / std::max(st_.decode_seconds, 1e-9), st_.prefill_seconds,
        mem_roof, 100 * tok_s / mem_roof, comp_roof, 100 * tok_s / comp_roof,
        engine->description().c_str());
    std::fflush(stdout);
    if (!engine->idle()) {
      std::printf("(rows %lld: stopped after %.0f s of decoding: --seconds)\n", (long long)rows,
                  seconds);
      engine->Cancel();
    }
  }
  if (!gguf.empty()) {
    if (peer.empty()) {
      std::fprintf(stderr,
                   "decode_bench: --llamacpp needs --peer DIR (llamacpp-peer with npm ci done)\n");
      return 2;
    }
    const double lc = LlamaCppTokPerSec(peer, gguf, static_cast<int>(threads));
    std::printf(
        "llama.cpp batch 1 (%s, %lld threads): %.2f tok/s; pmdrl %s batch 1: %.2f tok/s = %.2fx\n",
        gguf.c_str(), (long long)threads, lc, dtype.c_str(), batch1, lc > 0 ? batch1 / lc : 0.0);
  }
  return 0;
}
