// The built-in synthetic task of the demo: "aaa+bbb=" -> "ccc". Problems are drawn by a
// portable hash-based RNG (splitmix64), so a (seed, index) names the same problem on
// every platform and in every process: the coordinator, the SFT trainer and the
// evaluator can agree on the data without shipping it around.
#ifndef PMDRL_COMMON_ARITH_TASK_H_
#define PMDRL_COMMON_ARITH_TASK_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/tokenizer.h"

namespace pmdrl {

struct ArithOptions {
  int64_t digits = 3;     // operand digits, 1..9 (operands are zero-padded to this width)
  std::string ops = "+";  // operators to draw from uniformly: distinct chars of "+-*"
};

struct ArithProblem {
  std::string prompt;  // "012+345=": zero-padded operands, operator, '='
  std::string answer;  // "357": the plain integer, no padding ("-12" for negatives)
};

// Deterministic arithmetic problems. Operands a, b are uniform in [0, 10^digits).
// Train(seed, index) is a pure function of (seed, index, options, held-out split); the
// held-out split is fixed by (options, eval_seed, eval_size) and Train never returns one
// of its problems (it redraws deterministically instead). Immutable after construction
// and thread-safe.
class ArithTask {
 public:
  // `options` must pass Validate() (checked: a bad one aborts; validate config first).
  // The held-out split holds min(eval_size, problem space / 2) distinct problems, so
  // the training stream always has at least half of the space to draw from.
  ArithTask(ArithOptions options, uint64_t eval_seed, int64_t eval_size);

  ArithProblem Train(uint64_t seed, uint64_t index) const;
  const std::vector<ArithProblem>& HeldOut() const { return held_out_; }
  bool IsHeldOut(std::string_view prompt) const;

  const ArithOptions& options() const { return options_; }
  // Number of distinct problems: |ops| * 10^(2 * digits).
  uint64_t ProblemSpace() const;
  // Longest possible answer in characters (e.g. 4 for 3-digit '+': "1998"); a policy
  // needs at most MaxAnswerChars() + 1 response tokens (answer plus EOS).
  int64_t MaxAnswerChars() const;

  static absl::Status Validate(const ArithOptions& options);

 private:
  ArithOptions options_;
  std::vector<ArithProblem> held_out_;
  absl::flat_hash_set<std::string> held_out_prompts_;
};

// Prompt tokens of a problem: BOS followed by the prompt's characters.
std::vector<int32_t> ArithPromptTokens(const Tokenizer& tokenizer, const ArithProblem& problem);
// Response target of a problem: the answer's characters followed by EOS.
std::vector<int32_t> ArithTargetTokens(const Tokenizer& tokenizer, const ArithProblem& problem);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_ARITH_TASK_H_
