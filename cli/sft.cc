#include "cli/sft.h"

#include <chrono>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_format.h"
#include "common/arith_task.h"
#include "common/config.h"
#include "common/log.h"
#include "common/process.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/evaluator.h"
#include "learner/training/trainer.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

int RunSft(int argc, char** argv) {
  std::vector<std::string> positional;
  absl::StatusOr<Config> cfg = ConfigFromArgs(argc, argv, &positional);
  if (!cfg.ok()) {
    if (absl::IsNotFound(cfg.status())) {
      std::cout << "usage: pmdrl sft --config FILE [--section.key=value ...]\n"
                   "Supervised warm-up of a base policy: cross-entropy on the answers of\n"
                   "training problems until held-out greedy accuracy >= sft.target_greedy and\n"
                   "pass@sft.pass_k >= sft.target_pass_ratio x greedy (checked every\n"
                   "sft.eval_every steps on a validation split that is not the RL held-out\n"
                   "split), or sft.max_steps. Writes a model directory to sft.output.\n\n"
                << cfg.status().message();
      return 0;
    }
    std::cerr << "pmdrl sft: " << cfg.status().message() << "\n";
    return 2;
  }
  Config config = *cfg;
  InitLogging("sft", "0");
  LimitBlasThreads();
  config.learner.threads = config.sft.threads;

  ArithOptions options{config.task.digits, config.task.ops};
  if (absl::Status s = ArithTask::Validate(options); !s.ok()) {
    std::cerr << "pmdrl sft: " << s.message() << "\n";
    return 2;
  }
  // A validation split of its own (another seed), so the stopping rule never looks at
  // the held-out problems the RL run reports.
  ArithTask validation(options, config.task.eval_seed + 1, 200);
  ArithTask train(options, config.task.eval_seed, config.task.eval_size);
  CharTokenizer tokenizer;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      Trainer::Create(config, tokenizer, /*model_dir=*/"");
  if (!trainer.ok()) {
    std::cerr << "pmdrl sft: " << trainer.status().message() << "\n";
    return 2;
  }
  // The arith prompt source supplies what evaluation needs: grader, tokenizer, stop ids.
  Config arith = config;
  arith.task.name = TaskName::kArith;
  absl::StatusOr<std::unique_ptr<PromptSource>> source = MakePromptSource(arith);
  if (!source.ok()) {
    std::cerr << "pmdrl sft: " << source.status().message() << "\n";
    return 2;
  }
  Evaluator evaluator(config, (*trainer)->model());
  std::vector<PromptItem> val_items;
  for (const ArithProblem& p : validation.HeldOut()) {
    if (train.IsHeldOut(p.prompt)) continue;
    val_items.push_back({ArithPromptTokens(tokenizer, p), p.prompt, p.answer});
  }
  auto start = std::chrono::steady_clock::now();
  const uint64_t stream_seed = config.run.seed * 7919 + 17;
  uint64_t index = 0;
  int64_t step = 0;
  EvalResult last;
  for (; step < config.sft.max_steps; ++step) {
    std::vector<std::vector<int32_t>> prompts, targets;
    for (int64_t i = 0; i < config.sft.batch_size; ++i) {
      ArithProblem p = train.Train(stream_seed, index++);
      prompts.push_back(ArithPromptTokens(tokenizer, p));
      targets.push_back(ArithTargetTokens(tokenizer, p));
    }
    absl::StatusOr<double> loss = (*trainer)->SupervisedStep(prompts, targets, config.sft.lr);
    if (!loss.ok()) {
      std::cerr << "pmdrl sft: " << loss.status().message() << "\n";
      return 1;
    }
    if ((step + 1) % config.sft.eval_every == 0) {
      last =
          evaluator.Evaluate(**source, val_items, config.actor.max_new_tokens, config.sft.pass_k);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      spdlog::info("step {} loss {:.4f} greedy {:.1f}% pass@{} {:.1f}% ({:.0f} s)", step + 1, *loss,
                   100 * last.greedy_accuracy, config.sft.pass_k, 100 * last.pass_at_k, secs);
      if (last.greedy_accuracy >= config.sft.target_greedy &&
          last.pass_at_k >= config.sft.target_pass_ratio * last.greedy_accuracy) {
        ++step;
        break;
      }
    }
  }
  if (absl::Status s = (*trainer)->Save(config.sft.output); !s.ok()) {
    std::cerr << "pmdrl sft: " << s.message() << "\n";
    return 1;
  }
  std::filesystem::remove(std::filesystem::path(config.sft.output) / "optimizer.pt");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << absl::StrFormat(
      "sft: %d steps, validation greedy %.1f%% pass@%d %.1f%% (%.0f s) -> %s\n", step,
      100 * last.greedy_accuracy, config.sft.pass_k, 100 * last.pass_at_k, secs, config.sft.output);
  return 0;
}

}  // namespace pmdrl
