// Grading of one completion against a reference answer: the verifier's scoring core.
// Graders are pure functions of their inputs and a deadline; they never throw, recurse
// only to a capped depth and bound their work by the input length (capped at
// kMaxGradeInputBytes), so hostile completions fail cleanly instead of crashing or
// hanging a verifier thread.
#ifndef PMDRL_VERIFIER_GRADER_H_
#define PMDRL_VERIFIER_GRADER_H_

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "verifier/deadline.h"  // IWYU pragma: export (Deadline is part of this API)

namespace pmdrl {

enum class Verdict { kCorrect, kIncorrect, kParseError, kTimeout };

// "correct" | "incorrect" | "parse_error" | "timeout"
std::string_view VerdictName(Verdict verdict);

struct GradeResult {
  Verdict verdict = Verdict::kParseError;
  std::string extracted;             // the answer text found in the response (raw)
  std::string normalized_answer;     // `extracted` after normalisation
  std::string normalized_reference;  // the reference after normalisation
};

// Inputs longer than this (response or reference) are a parse error, unread.
inline constexpr size_t kMaxGradeInputBytes = 64 * 1024;

// arith: the response (decoded, special tokens skipped) must be exactly an integer
// (optional leading '-', then digits; nothing else, not even spaces), compared as an
// integer of any length with the reference. Anything else is kParseError, and so is a
// reference that is not an integer (normalized_reference then stays empty).
GradeResult GradeArith(std::string_view response, std::string_view reference,
                       const Deadline& deadline);

// math: the grader users know from Math-Verify and the MATH / GSM8K / DAPO graders.
//  * Extraction (verifier/answer_extract.h): the last \boxed{...} / \fbox{...} (also
//    "\boxed 5"); else the last of "#### 42", "Answer: ..." and "... answer is ...";
//    nothing found -> kParseError. The reference is reduced the same way (a boxed
//    answer, else the text after "####", else all of it).
//  * Normalisation of both sides (verifier/latex_normalize.h).
//  * Comparison, each step bounded by the deadline: equal strings; structures — unions
//    "A\cup B" part by part, sets "\{1,2\}" and bare lists "1,2" / "1 and 2" in any
//    order, tuples "(1,2)" and intervals "[1,3)" element by element with the same
//    brackets (a bare list also matches a tuple in order), equations "x+y=1" side by
//    side; scalars as numbers (integers exactly, at any length; decimals, fractions,
//    scientific notation with relative tolerance 1e-6 or absolute 1e-9 near zero;
//    "50\%" equals 50, and also 0.5 when only one side carried the percent sign), then
//    symbolically (verifier/symbolic_equal.h: GiNaC, exact then numeric at 1e-6).
//  * A deadline that passes at any step -> kTimeout; GiNaC failures -> not equal.
// Not thread-safe (GiNaC, see symbolic_equal.h): one caller per process at a time; the
// verifier runs it in its grader processes.
GradeResult GradeMath(std::string_view response, std::string_view reference,
                      const Deadline& deadline);

using Grader = std::function<GradeResult(std::string_view response, std::string_view reference,
                                         const Deadline& deadline)>;

// The grader of a task: "arith" | "math"; anything else is InvalidArgument.
absl::StatusOr<Grader> GraderForTask(std::string_view task);

// Whether the task's grader uses GiNaC ("math"), which is not thread-safe and cannot be
// interrupted: the verifier runs such graders in its grader processes
// (verifier/grader_process_pool.h), one check per process at a time. Cheap graders
// ("arith") run on the verifier's own threads.
bool GraderNeedsProcess(std::string_view task);

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_GRADER_H_
