#include "learner/coordinator/prompt_source.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "common/arith_task.h"
#include "common/bpe_tokenizer.h"
#include "common/model_config.h"
#include "learner/coordinator/jsonl_dataset.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

class ArithPromptSource : public PromptSource {
 public:
  ArithPromptSource(ArithTask task, uint64_t seed) : task_(std::move(task)), seed_(seed) {
    for (const ArithProblem& p : task_.HeldOut()) held_out_.push_back(Item(p));
  }

  PromptItem Get(int64_t /*epoch*/, int64_t index) const override {
    return Item(task_.Train(seed_, static_cast<uint64_t>(index)));
  }
  int64_t ItemsPerEpoch() const override { return 0; }
  const std::vector<PromptItem>& HeldOut() const override { return held_out_; }
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  std::string task() const override { return "arith"; }
  std::string tokenizer_name() const override { return "char"; }
  const std::string& tokenizer_json() const override { return empty_; }
  const std::vector<int32_t>& stop_ids() const override { return stop_ids_; }

 private:
  PromptItem Item(const ArithProblem& p) const {
    return PromptItem{ArithPromptTokens(tokenizer_, p), p.prompt, p.answer};
  }

  CharTokenizer tokenizer_;
  ArithTask task_;
  uint64_t seed_;
  std::vector<PromptItem> held_out_;
  const std::string empty_;
  const std::vector<int32_t> stop_ids_{CharTokenizer::kEos};
};

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A permutation of 0..n-1 that depends only on `seed`: Fisher-Yates driven by
// SplitMix64 (std::shuffle and the std distributions differ between standard
// libraries, and a resumed run must map (epoch, index) to the same problem).
std::vector<int64_t> Permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    state = SplitMix64(state);
    const int64_t j = static_cast<int64_t>(state % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

// `count` of the indices 0..n-1 picked by `seed`, in increasing order.
std::vector<int64_t> PickSubset(int64_t n, int64_t count, uint64_t seed) {
  std::vector<int64_t> p = Permutation(n, SplitMix64(seed ^ 0x6576616c5f736574ULL));
  p.resize(static_cast<size_t>(std::min(n, count)));
  std::sort(p.begin(), p.end());
  return p;
}

class MathPromptSource : public PromptSource {
 public:
  MathPromptSource(HfTokenizer tokenizer, std::string tokenizer_json, std::vector<PromptItem> train,
                   std::vector<PromptItem> held_out, uint64_t seed)
      : hf_(std::move(tokenizer)),
        tokenizer_json_(std::move(tokenizer_json)),
        train_(std::move(train)),
        held_out_(std::move(held_out)),
        seed_(seed) {}

  PromptItem Get(int64_t epoch, int64_t index) const override {
    const int64_t n = static_cast<int64_t>(train_.size());
    if (index < 0 || index >= n) return PromptItem{};  // the lease table never asks
    std::shared_ptr<const std::vector<int64_t>> order = Order(epoch);
    return train_[static_cast<size_t>((*order)[static_cast<size_t>(index)])];
  }
  int64_t ItemsPerEpoch() const override { return static_cast<int64_t>(train_.size()); }
  const std::vector<PromptItem>& HeldOut() const override { return held_out_; }
  const Tokenizer& tokenizer() const override { return *hf_.tokenizer; }
  std::string task() const override { return "math"; }
  std::string tokenizer_name() const override { return "hf"; }
  const std::string& tokenizer_json() const override { return tokenizer_json_; }
  const std::vector<int32_t>& stop_ids() const override { return hf_.stop_ids; }

 private:
  // The order of epoch `epoch`. The two most recent epochs are cached: leases of the
  // epoch boundary and re-issues of the previous epoch ask for both.
  std::shared_ptr<const std::vector<int64_t>> Order(int64_t epoch) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [e, order] : cache_) {
      if (e == epoch) return order;
    }
    auto order = std::make_shared<const std::vector<int64_t>>(
        Permutation(static_cast<int64_t>(train_.size()),
                    SplitMix64(SplitMix64(seed_) ^ SplitMix64(static_cast<uint64_t>(epoch) + 1))));
    if (cache_.size() >= 2) cache_.erase(cache_.begin());
    cache_.emplace_back(epoch, order);
    return order;
  }

  const HfTokenizer hf_;
  const std::string tokenizer_json_;
  const std::vector<PromptItem> train_;
  const std::vector<PromptItem> held_out_;
  const uint64_t seed_;
  mutable absl::Mutex mu_;
  mutable std::vector<std::pair<int64_t, std::shared_ptr<const std::vector<int64_t>>>> cache_
      ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Renders and encodes `problems`, dropping those over `max_tokens` (counted in
// *skipped, their line numbers in *skipped_lines, the first few).
std::vector<PromptItem> Encode(const std::vector<JsonlProblem>& problems,
                               const BpeTokenizer& tokenizer, const ChatFormat& format,
                               const TaskConfig& task, int64_t max_tokens, int64_t* skipped,
                               std::vector<int64_t>* skipped_lines) {
  std::vector<PromptItem> items;
  items.reserve(problems.size());
  for (const JsonlProblem& p : problems) {
    EncodedPrompt e = EncodeChatPrompt(tokenizer, format, task.system_prompt,
                                       FillPromptTemplate(task.prompt_template, p.problem));
    if (static_cast<int64_t>(e.tokens.size()) > max_tokens) {
      ++*skipped;
      if (skipped_lines->size() < 5) skipped_lines->push_back(p.line);
      continue;
    }
    items.push_back(PromptItem{std::move(e.tokens), std::move(e.text), p.reference});
  }
  return items;
}

void WarnSkipped(const std::string& file, int64_t skipped, const std::vector<int64_t>& lines,
                 int64_t total, int64_t max_tokens) {
  if (skipped == 0) return;
  spdlog::warn(
      "{}: skipped {} of {} problems whose prompt is longer than {} tokens (the model's "
      "max_position_embeddings minus actor.max_new_tokens); lines {}{}",
      file, skipped, total, max_tokens, absl::StrJoin(lines, ", "),
      skipped > static_cast<int64_t>(lines.size()) ? ", ..." : "");
}

}  // namespace

std::string FillPromptTemplate(std::string_view prompt_template, std::string_view problem) {
  return absl::StrReplaceAll(absl::string_view(prompt_template.data(), prompt_template.size()),
                             {{"{problem}", absl::string_view(problem.data(), problem.size())}});
}

EncodedPrompt EncodeChatPrompt(const BpeTokenizer& tokenizer, const ChatFormat& format,
                               std::string_view system, std::string_view user) {
  // Llama 3's template trims the message; do it here so the sentinel split below sees
  // the same text RenderChat would have produced.
  absl::string_view body(user.data(), user.size());
  if (format.style == ChatStyle::kLlama3) body = absl::StripAsciiWhitespace(body);
  // Render around a sentinel that no tokenizer splits and no problem contains, then
  // encode the framing and the user text separately.
  static constexpr std::string_view kSentinel = "\x01\x02pmdrl-user-turn\x02\x01";
  const std::string rendered = RenderChat(format, system, kSentinel);
  const size_t at = rendered.find(kSentinel);
  EncodedPrompt out;
  if (at == std::string::npos) {  // cannot happen with the formats RenderChat knows
    out.text = RenderChat(format, system, std::string_view(body.data(), body.size()));
    out.tokens = tokenizer.Encode(out.text, /*allow_special=*/false);
    return out;
  }
  const std::string prefix = rendered.substr(0, at);
  const std::string suffix = rendered.substr(at + kSentinel.size());
  out.text = absl::StrCat(prefix, body, suffix);
  out.tokens = tokenizer.Encode(prefix, /*allow_special=*/true);
  std::vector<int32_t> middle =
      tokenizer.Encode(std::string_view(body.data(), body.size()), /*allow_special=*/false);
  std::vector<int32_t> tail = tokenizer.Encode(suffix, /*allow_special=*/true);
  out.tokens.insert(out.tokens.end(), middle.begin(), middle.end());
  out.tokens.insert(out.tokens.end(), tail.begin(), tail.end());
  return out;
}

absl::StatusOr<std::unique_ptr<PromptSource>> MakeMathPromptSource(const Config& config,
                                                                   HfTokenizer tokenizer,
                                                                   std::string tokenizer_json,
                                                                   int64_t max_prompt_tokens) {
  const TaskConfig& task = config.task;
  if (tokenizer.tokenizer == nullptr) {
    return absl::InvalidArgumentError("task.name=math: no tokenizer");
  }
  if (max_prompt_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config key 'actor.max_new_tokens': ", config.actor.max_new_tokens,
        " leaves no room for a prompt in the model's context (longest prompt would be ",
        max_prompt_tokens, " tokens)"));
  }
  ChatFormat format;  // style kNone: plain text
  if (task.chat == ChatMode::kOn ||
      (task.chat == ChatMode::kAuto && tokenizer.chat_format.style != ChatStyle::kNone)) {
    if (tokenizer.chat_format.style == ChatStyle::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("config key 'task.chat': on, but the tokenizer of ", config.model.path,
                       " has no recognised chat template (use auto or off)"));
    }
    format = tokenizer.chat_format;
  }
  const JsonlFields fields{task.prompt_field, task.answer_field};
  absl::StatusOr<std::vector<JsonlProblem>> train = ReadJsonlProblems(task.train_file, fields);
  if (!train.ok()) {
    return absl::Status(train.status().code(),
                        absl::StrCat("task.train_file: ", train.status().message()));
  }
  std::vector<JsonlProblem> train_problems;
  std::vector<JsonlProblem> eval_problems;
  std::string eval_origin;
  if (!task.eval_file.empty()) {
    absl::StatusOr<std::vector<JsonlProblem>> eval = ReadJsonlProblems(task.eval_file, fields);
    if (!eval.ok()) {
      return absl::Status(eval.status().code(),
                          absl::StrCat("task.eval_file: ", eval.status().message()));
    }
    for (int64_t i :
         PickSubset(static_cast<int64_t>(eval->size()), task.eval_size, task.eval_seed)) {
      eval_problems.push_back((*eval)[static_cast<size_t>(i)]);
    }
    train_problems = *std::move(train);
    eval_origin = task.eval_file;
  } else {
    const int64_t n = static_cast<int64_t>(train->size());
    if (task.eval_size >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("config key 'task.eval_size': holding out ", task.eval_size, " problems of ",
                       task.train_file, " (", n,
                       " problems) leaves none to train on; lower it or set "
                       "task.eval_file"));
    }
    std::vector<bool> held(static_cast<size_t>(n), false);
    for (int64_t i : PickSubset(n, task.eval_size, task.eval_seed))
      held[static_cast<size_t>(i)] = true;
    for (int64_t i = 0; i < n; ++i) {
      (held[static_cast<size_t>(i)] ? eval_problems : train_problems)
          .push_back((*train)[static_cast<size_t>(i)]);
    }
    eval_origin = absl::StrCat(task.train_file, " (held out)");
  }

  const BpeTokenizer& bpe = *tokenizer.tokenizer;
  int64_t skipped_train = 0, skipped_eval = 0;
  std::vector<int64_t> lines_train, lines_eval;
  std::vector<PromptItem> train_items =
      Encode(train_problems, bpe, format, task, max_prompt_tokens, &skipped_train, &lines_train);
  std::vector<PromptItem> eval_items =
      Encode(eval_problems, bpe, format, task, max_prompt_tokens, &skipped_eval, &lines_eval);
  WarnSkipped(task.train_file, skipped_train, lines_train,
              static_cast<int64_t>(train_problems.size()), max_prompt_tokens);
  WarnSkipped(eval_origin, skipped_eval, lines_eval, static_cast<int64_t>(eval_problems.size()),
              max_prompt_tokens);
  if (train_items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(task.train_file, ": every training prompt is longer than ", max_prompt_tokens,
                     " tokens (the model's max_position_embeddings minus actor.max_new_tokens)"));
  }
  if (eval_items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(eval_origin, ": no held-out prompt fits in ", max_prompt_tokens, " tokens"));
  }
  spdlog::info("task math: {} training problems from {}, {} held out from {}; chat format {}",
               train_items.size(), task.train_file, eval_items.size(), eval_origin,
               format.style == ChatStyle::kChatMl   ? "ChatML"
               : format.style == ChatStyle::kLlama3 ? "Llama 3"
                                                    : "none (plain text)");
  return std::unique_ptr<PromptSource>(
      new MathPromptSource(std::move(tokenizer), std::move(tokenizer_json), std::move(train_items),
                           std::move(eval_items), config.run.seed));
}

absl::StatusOr<std::unique_ptr<PromptSource>> MakePromptSource(const Config& config) {
  if (config.task.name == TaskName::kMath) {
    const std::filesystem::path dir(config.model.path);
    absl::StatusOr<HfTokenizer> tokenizer = LoadHfTokenizer(config.model.path);
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat("model.path: ", tokenizer.status().message()));
    }
    absl::StatusOr<std::string> json = ReadText((dir / "tokenizer.json").string());
    if (!json.ok()) return json.status();
    int64_t max_position = config.model.max_position;
    if (std::filesystem::exists(dir / "config.json")) {
      absl::StatusOr<ModelConfig> mc = ReadModelConfig((dir / "config.json").string());
      if (!mc.ok()) return mc.status();
      max_position = mc->max_position_embeddings;
    }
    return MakeMathPromptSource(config, *std::move(tokenizer), *std::move(json),
                                max_position - config.actor.max_new_tokens);
  }
  ArithOptions options{config.task.digits, config.task.ops};
  absl::Status s = ArithTask::Validate(options);
  if (!s.ok()) return s;
  return std::unique_ptr<PromptSource>(new ArithPromptSource(
      ArithTask(options, config.task.eval_seed, config.task.eval_size), config.run.seed));
}

}  // namespace pmdrl
