#include "learner/evaluator.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "common/nn/model.h"
#include "common/nn/sampler.h"
#include "spdlog/spdlog.h"
#include "verifier/deadline.h"
#include "verifier/grader.h"

namespace pmdrl {

struct Evaluator::Impl {
  CausalLM model{nullptr};
  Sampler sampler{0};
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t timeout_ms = 0;
};

Evaluator::Evaluator(const Config& config, CausalLM& model) : impl_(std::make_unique<Impl>()) {
  impl_->model = model;
  impl_->sampler = Sampler(config.run.seed ^ 0x5eed5eedULL);
  impl_->temperature = config.actor.temperature > 0 ? config.actor.temperature : 1.0;
  impl_->top_p = config.actor.top_p;
  impl_->timeout_ms = config.verifier.timeout_ms;
}

Evaluator::~Evaluator() = default;

EvalResult Evaluator::Evaluate(const PromptSource& source, const std::vector<PromptItem>& items,
                               int64_t max_new_tokens, int64_t k) {
  Impl& m = *impl_;
  EvalResult result;
  result.k = std::max<int64_t>(k, 0);
  if (items.empty()) return result;
  absl::StatusOr<Grader> grader = GraderForTask(source.task());
  if (!grader.ok()) {
    // The prompt source only names tasks that have a grader; a mismatch is a bug.
    spdlog::error("evaluation skipped: {}", std::string(grader.status().message()));
    return result;
  }
  const Tokenizer& tokenizer = source.tokenizer();
  SamplingParams params;
  params.max_new_tokens = max_new_tokens;
  for (int32_t id : source.stop_ids()) params.stop_tokens.push_back(id);
  if (params.stop_tokens.empty()) params.stop_tokens = {m.model->config().eos_token_id};
  params.temperature = 0;
  auto grade = [&](const Sample& s, const PromptItem& it) {
    std::string text = tokenizer.Decode(s.tokens, /*skip_special=*/true);
    Deadline deadline(std::chrono::milliseconds(m.timeout_ms));
    return (*grader)(text, it.reference, deadline).verdict;
  };
  // Chunks bound the KV cache: at most ~256 sequences at once.
  constexpr int64_t kRows = 256;
  const size_t n = items.size();
  int64_t greedy_ok = 0, parse_errors = 0, samples_ok = 0, pass_ok = 0;
  auto prompts_of = [&](size_t lo, size_t hi) {
    std::vector<std::vector<int32_t>> chunk;
    for (size_t i = lo; i < hi; ++i) chunk.push_back(items[i].tokens);
    return chunk;
  };
  for (size_t lo = 0; lo < n; lo += kRows) {
    const size_t hi = std::min(n, lo + kRows);
    auto greedy = m.sampler.Generate(m.model, prompts_of(lo, hi), 1, params);
    for (size_t i = lo; i < hi; ++i) {
      const Verdict v = grade(greedy[i - lo][0], items[i]);
      greedy_ok += v == Verdict::kCorrect;
      parse_errors += v == Verdict::kParseError;
    }
  }
  if (result.k > 0) {
    SamplingParams sp = params;
    sp.temperature = m.temperature;
    sp.top_p = m.top_p;
    const size_t per_chunk = static_cast<size_t>(std::max<int64_t>(1, kRows / result.k));
    for (size_t lo = 0; lo < n; lo += per_chunk) {
      const size_t hi = std::min(n, lo + per_chunk);
      auto samples = m.sampler.Generate(m.model, prompts_of(lo, hi), result.k, sp);
      for (size_t i = lo; i < hi; ++i) {
        int64_t ok = 0;
        for (const Sample& s : samples[i - lo]) ok += grade(s, items[i]) == Verdict::kCorrect;
        samples_ok += ok;
        pass_ok += ok > 0;
      }
    }
    result.avg_at_k = static_cast<double>(samples_ok) / static_cast<double>(n * result.k);
    result.pass_at_k = static_cast<double>(pass_ok) / static_cast<double>(n);
  }
  m.model->train();
  result.greedy_accuracy = static_cast<double>(greedy_ok) / static_cast<double>(n);
  result.greedy_parse_errors = static_cast<double>(parse_errors) / static_cast<double>(n);
  return result;
}

}  // namespace pmdrl
