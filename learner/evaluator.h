// Held-out evaluation of a policy: generates answers to prompts and grades them with the
// task's grader. Greedy accuracy always; with k > 0 also avg@k and pass@k over k samples
// per problem at the actor's temperature and top_p.
//
// Promises: the same seed (run.seed), model weights and calls give the same results;
// successive evaluations continue one sampling stream, like the actors' samplers. The
// model is left in training mode.
// Ownership: the evaluator shares the model it is given (a handle to the Trainer's master
// weights, learner/training/trainer.h) and owns its sampler. Not thread-safe; call it between
// updates from the thread that drives the Trainer. Torch stays inside the .cc.
#ifndef PMDRL_LEARNER_EVALUATOR_H_
#define PMDRL_LEARNER_EVALUATOR_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "common/config.h"
#include "learner/coordinator/prompt_source.h"

namespace pmdrl {

class CausalLM;

struct EvalResult {
  double greedy_accuracy = 0;
  int64_t k = 0;                   // samples per problem behind avg_at_k / pass_at_k
  double avg_at_k = -1;            // mean correctness over all k samples; -1 unless k > 0
  double pass_at_k = -1;           // problems with >= 1 correct sample; -1 unless k > 0
  double greedy_parse_errors = 0;  // fraction of greedy answers the grader could not parse
};

class Evaluator {
 public:
  // Reads run.seed, actor.temperature, actor.top_p and verifier.timeout_ms from `config`
  // (copied). `model` is typically Trainer::model().
  Evaluator(const Config& config, CausalLM& model);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Evaluates `items` with `source`'s grader (its task), tokenizer (to decode, special
  // tokens skipped) and stop ids (the model's eos without any). A task without a grader
  // is a bug: it is logged and the result stays empty.
  EvalResult Evaluate(const PromptSource& source, const std::vector<PromptItem>& items,
                      int64_t max_new_tokens, int64_t k = 0);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_EVALUATOR_H_
