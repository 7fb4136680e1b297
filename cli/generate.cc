#include "cli/generate.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/chat_template.h"
#include "common/model_config.h"
#include "common/nn/model_dir.h"
#include "common/nn/sampler.h"
#include "common/process.h"
#include "learner/coordinator/prompt_source.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

constexpr char kUsage[] =
    "usage: pmdrl generate --model DIR [options] < prompts\n"
    "\n"
    "Samples completions from the model directory DIR (config.json + safetensors +\n"
    "tokenizer.json, e.g. a base model or a run's checkpoint) for each prompt on stdin,\n"
    "and prints one JSON line per prompt: {\"prompt\": ..., \"completions\": [...]}.\n"
    "Each prompt is the user turn of the model's chat template (assistant turn opened)\n"
    "when the tokenizer has one, as the actors of a math run prompt it; completions are\n"
    "decoded without special tokens and stop at any of the model's stop ids.\n"
    "\n"
    "Options:\n"
    "  --model DIR            model directory (required)\n"
    "  --temperature T        sampling temperature; 0 = greedy (default 1.0)\n"
    "  --top-p P              nucleus mass in (0, 1] (default 1.0)\n"
    "  --max-new-tokens N     longest completion (default 256)\n"
    "  --n K                  completions per prompt (default 1)\n"
    "  --chat | --no-chat     use the chat template / plain text (default: chat when the\n"
    "                         tokenizer has a recognised template)\n"
    "  --system TEXT          system prompt (default: none, or the template's own)\n"
    "  --seed S               sampling seed (default 0); same seed, same completions\n"
    "  --jsonl                each input line is a JSON string (texts may hold newlines)\n"
    "  --batch N              prompts sampled together (default 8)\n"
    "  --threads N            Torch threads (default 2)\n"
    "  --dtype D              float32 | bfloat16 | float16 (default float32)\n"
    "  --device D             cpu | cuda (default cpu)\n"
    "  --help                 this text\n"
    "\n"
    "Exit codes: 0 ok; 1 bad input (the message names the line); 2 bad usage or a model\n"
    "directory that cannot be loaded.\n";

int UsageError(const std::string& message) {
  std::cerr << "pmdrl generate: " << message << "\n(see pmdrl generate --help)\n";
  return 2;
}

struct Options {
  std::string model_dir;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t max_new_tokens = 256;
  int64_t n = 1;
  int chat = -1;  // -1: auto
  std::string system;
  uint64_t seed = 0;
  bool jsonl = false;
  int64_t batch = 8;
  int64_t threads = 2;
  std::string dtype = "float32";
  std::string device = "cpu";
};

struct Pending {
  int64_t line = 0;
  std::string prompt;
  std::vector<int32_t> tokens;
};

}  // namespace

int RunGenerate(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    // --name VALUE or --name=VALUE
    auto take = [&](const std::string& name) -> bool {
      if (arg == name) {
        if (i + 1 >= argc) return false;
        value = argv[++i];
        return true;
      }
      if (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 &&
          arg[name.size()] == '=') {
        value = arg.substr(name.size() + 1);
        return true;
      }
      return false;
    };
    auto bad_number = [&](const std::string& name) {
      return UsageError(absl::StrCat(name, ": '", value, "' is not a valid value"));
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "--chat") {
      o.chat = 1;
    } else if (arg == "--no-chat") {
      o.chat = 0;
    } else if (arg == "--jsonl") {
      o.jsonl = true;
    } else if (take("--model")) {
      o.model_dir = value;
    } else if (take("--system")) {
      o.system = value;
    } else if (take("--temperature")) {
      if (!absl::SimpleAtod(value, &o.temperature) || o.temperature < 0) {
        return bad_number("--temperature");
      }
    } else if (take("--top-p")) {
      if (!absl::SimpleAtod(value, &o.top_p) || o.top_p <= 0 || o.top_p > 1) {
        return bad_number("--top-p");
      }
    } else if (take("--max-new-tokens")) {
      if (!absl::SimpleAtoi(value, &o.max_new_tokens) || o.max_new_tokens < 1) {
        return bad_number("--max-new-tokens");
      }
    } else if (take("--n")) {
      if (!absl::SimpleAtoi(value, &o.n) || o.n < 1 || o.n > 4096) return bad_number("--n");
    } else if (take("--seed")) {
      if (!absl::SimpleAtoi(value, &o.seed)) return bad_number("--seed");
    } else if (take("--batch")) {
      if (!absl::SimpleAtoi(value, &o.batch) || o.batch < 1) return bad_number("--batch");
    } else if (take("--threads")) {
      if (!absl::SimpleAtoi(value, &o.threads) || o.threads < 1) return bad_number("--threads");
    } else if (take("--dtype")) {
      o.dtype = value;
    } else if (take("--device")) {
      o.device = value;
    } else if (arg.rfind("--", 0) == 0 && i == argc - 1 &&
               (arg == "--model" || arg == "--system" || arg == "--temperature" ||
                arg == "--top-p" || arg == "--max-new-tokens" || arg == "--n" || arg == "--seed" ||
                arg == "--batch" || arg == "--threads" || arg == "--dtype" || arg == "--device")) {
      return UsageError(absl::StrCat(arg, " needs a value"));
    } else {
      return UsageError(absl::StrCat("unknown argument '", arg, "'"));
    }
  }
  if (o.model_dir.empty()) return UsageError("--model DIR is required");

  LimitBlasThreads();
  at::set_num_threads(static_cast<int>(o.threads));
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(o.model_dir);
  if (!hf.ok()) {
    std::cerr << "pmdrl generate: " << hf.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<at::ScalarType> dtype = DtypeFromName(o.dtype);
  if (!dtype.ok()) return UsageError(absl::StrCat("--dtype: ", dtype.status().message()));
  if (o.device != "cpu" && o.device != "cuda") {
    return UsageError(absl::StrCat("--device: '", o.device, "' is not cpu or cuda"));
  }
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    return UsageError("--device cuda: no CUDA device (or this LibTorch was built without CUDA)");
  }
  const at::Device device = o.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  absl::StatusOr<CausalLM> model = LoadModelDir(o.model_dir, LoadOptions{*dtype, device});
  if (!model.ok()) {
    std::cerr << "pmdrl generate: " << model.status().message() << "\n";
    return 2;
  }
  const ModelConfig& mc = (*model)->config();
  const BpeTokenizer& tok = *hf->tokenizer;
  if (tok.VocabSize() > mc.vocab_size) {
    std::cerr << "pmdrl generate: the tokenizer of " << o.model_dir << " has " << tok.VocabSize()
              << " tokens but the model's vocab_size is " << mc.vocab_size << "\n";
    return 2;
  }
  if (o.chat == 1 && hf->chat_format.style == ChatStyle::kNone) {
    std::cerr << "pmdrl generate: --chat: " << o.model_dir
              << " has no chat template of a known format (ChatML, Llama 3)\n";
    return 2;
  }
  const bool chat = o.chat == 1 || (o.chat == -1 && hf->chat_format.style != ChatStyle::kNone);
  const ChatFormat format = chat ? hf->chat_format : ChatFormat{};
  const int64_t max_prompt = mc.max_position_embeddings - o.max_new_tokens;
  if (max_prompt < 1) {
    return UsageError(absl::StrCat("--max-new-tokens ", o.max_new_tokens,
                                   " leaves no room for a prompt in the model's ",
                                   mc.max_position_embeddings, " positions"));
  }

  SamplingParams params;
  params.temperature = o.temperature;
  params.top_p = o.top_p;
  params.max_new_tokens = o.max_new_tokens;
  for (int32_t id : hf->stop_ids) params.stop_tokens.push_back(id);
  if (params.stop_tokens.empty() && mc.eos_token_id >= 0) {
    params.stop_tokens.push_back(mc.eos_token_id);
  }
  Sampler sampler(o.seed);

  std::vector<Pending> pending;
  auto flush = [&]() {
    if (pending.empty()) return;
    std::vector<std::vector<int32_t>> prompts;
    for (const Pending& p : pending) prompts.push_back(p.tokens);
    std::vector<std::vector<Sample>> out = sampler.Generate(*model, prompts, o.n, params);
    for (size_t i = 0; i < pending.size(); ++i) {
      // Ordered: the prompt first, as the usage says.
      nlohmann::ordered_json line;
      line["prompt"] = pending[i].prompt;
      line["completions"] = nlohmann::ordered_json::array();
      for (const Sample& s : out[i]) line["completions"].push_back(tok.Decode(s.tokens, true));
      std::cout << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                << "\n";
    }
    std::cout.flush();
    pending.clear();
  };

  std::ios::sync_with_stdio(false);
  const bool interactive = isatty(STDIN_FILENO);
  std::string line;
  for (int64_t line_no = 1; std::getline(std::cin, line); ++line_no) {
    std::string prompt;
    if (o.jsonl) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_string()) {
        flush();
        std::cerr << "pmdrl generate: line " << line_no << ": expected a JSON string\n";
        return 1;
      }
      prompt = j.get<std::string>();
    } else {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      prompt = line;
    }
    EncodedPrompt e = EncodeChatPrompt(tok, format, o.system, prompt);
    if (e.tokens.empty()) {
      flush();
      std::cerr << "pmdrl generate: line " << line_no << ": the prompt is empty\n";
      return 1;
    }
    if (static_cast<int64_t>(e.tokens.size()) > max_prompt) {
      flush();
      std::cerr << "pmdrl generate: line " << line_no << ": the prompt has " << e.tokens.size()
                << " tokens; the model takes at most " << max_prompt << " with --max-new-tokens "
                << o.max_new_tokens << "\n";
      return 1;
    }
    pending.push_back(Pending{line_no, std::move(prompt), std::move(e.tokens)});
    if (interactive || static_cast<int64_t>(pending.size()) >= o.batch) flush();
  }
  flush();
  return 0;
}

}  // namespace pmdrl
