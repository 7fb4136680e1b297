// Answer extraction: finds the final answer inside a model's free-form response (or a
// dataset's reference solution) the way the MATH, GSM8K and DAPO graders do. Returns
// views into the caller's text; linear in the input, never recursive.
#ifndef PMDRL_VERIFIER_ANSWER_EXTRACT_H_
#define PMDRL_VERIFIER_ANSWER_EXTRACT_H_

#include <optional>
#include <string_view>

#include "verifier/deadline.h"

namespace pmdrl {

// The content of the last \boxed{...} / \fbox{...} with balanced braces, or of a
// brace-less "\boxed 5" (up to the next space or '$'); nullopt when there is none.
std::optional<std::string_view> LastBoxed(std::string_view text, DeadlinePoll& poll);

// The answer of a model response: the last boxed answer; otherwise whichever comes last
// of GSM8K's "#### 42", an "Answer: ..." line (case-insensitive; an empty rest of line
// falls through to the next non-empty line) and "... answer is ..." (up to the end of
// its sentence). Markdown emphasis and a trailing period are dropped. nullopt when the
// response holds none of these (the caller's parse error).
std::optional<std::string_view> ExtractAnswer(std::string_view response, DeadlinePoll& poll);

// The answer of a reference: a boxed answer if it has one (MATH solutions), else the
// text after a GSM8K "####" marker, else the whole reference.
std::string_view ReduceReference(std::string_view reference, DeadlinePoll& poll);

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_ANSWER_EXTRACT_H_
