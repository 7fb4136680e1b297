#include "learner/prompt_source.h"

#include "absl/strings/str_cat.h"
#include "common/arith_task.h"

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

 private:
  PromptItem Item(const ArithProblem& p) const {
    return PromptItem{ArithPromptTokens(tokenizer_, p), p.prompt, p.answer};
  }

  CharTokenizer tokenizer_;
  ArithTask task_;
  uint64_t seed_;
  std::vector<PromptItem> held_out_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PromptSource>> MakePromptSource(const Config& config) {
  if (config.task.name != "arith") {
    return absl::InvalidArgumentError(
        absl::StrCat("config key 'task.name': unknown task '", config.task.name, "'"));
  }
  ArithOptions options{config.task.digits, config.task.ops};
  absl::Status s = ArithTask::Validate(options);
  if (!s.ok()) return s;
  return std::unique_ptr<PromptSource>(new ArithPromptSource(
      ArithTask(options, config.task.eval_seed, config.task.eval_size), config.run.seed));
}

}  // namespace pmdrl
