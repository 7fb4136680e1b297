// Math problems read from a JSONL file (docs/design.md "Model and formats": one problem a line,
// field names configurable), as DAPO-Math-17k ("prompt"/"answer"), GSM8K
// ("question"/"answer", the answer ending in "#### N") and MATH ("problem"/"solution",
// the answer being the solution's last \boxed{}) ship them. References are kept as they
// are: the math grader reduces them to the final answer.
#ifndef PMDRL_LEARNER_JSONL_DATASET_H_
#define PMDRL_LEARNER_JSONL_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

struct JsonlProblem {
  std::string problem;    // the prompt field's text
  std::string reference;  // the answer field's text (a number is written as text)
  int64_t line = 0;       // 1-based line number in the file, for messages
};

// Which JSON fields hold the problem and its reference answer.
struct JsonlFields {
  std::string prompt = "prompt";
  std::string answer = "answer";
};

// Reads every non-blank line of `path` as a JSON object. A field name is a key, or else
// a dotted path into nested objects ("reward_model.ground_truth"). The prompt field must
// be a non-empty string, or a list of chat messages whose last user turn is taken; the
// answer field a string or a number. A line that is not an
// object, lacks a field or has the wrong type is an InvalidArgument error naming the
// file, the line and the field (and the fields the line does have); a file with no
// problem at all is one too. NotFound when the file cannot be opened.
absl::StatusOr<std::vector<JsonlProblem>> ReadJsonlProblems(const std::string& path,
                                                            const JsonlFields& fields);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_JSONL_DATASET_H_
