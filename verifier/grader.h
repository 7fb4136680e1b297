// Grading of one completion against a reference answer: the verifier's scoring core.
// Graders are pure functions of their inputs and a deadline; they never throw, never
// recurse on input structure and bound their work by the input length (capped at
// kMaxGradeInputBytes), so hostile completions fail cleanly instead of crashing or
// hanging a verifier thread.
#ifndef PMDRL_VERIFIER_GRADER_H_
#define PMDRL_VERIFIER_GRADER_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

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

// A cooperative deadline on the monotonic clock: long-running checks poll Expired() and
// give up. Works in any thread (no signals, no alarms). Copyable; holds no resources.
class Deadline {
 public:
  // Expires `budget` from now; a budget <= 0 is already expired.
  explicit Deadline(std::chrono::milliseconds budget);
  // A deadline that never expires (tools and tests).
  static Deadline Infinite();

  bool Expired() const;
  std::chrono::steady_clock::time_point when() const { return when_; }

 private:
  explicit Deadline(std::chrono::steady_clock::time_point when) : when_(when) {}
  std::chrono::steady_clock::time_point when_;
};

// arith: the response (decoded, special tokens skipped) must be exactly an integer
// (optional leading '-', then digits; nothing else, not even spaces), compared as an
// integer of any length with the reference. Anything else is kParseError, and so is a
// reference that is not an integer (normalized_reference then stays empty).
GradeResult GradeArith(std::string_view response, std::string_view reference,
                       const Deadline& deadline);

// math: extracts the last balanced \boxed{...} (or \fbox{...}); else the rest of the
// last "Answer:" line (case-insensitive); nothing found -> kParseError. A reference
// containing \boxed{...} is reduced the same way. Both sides are normalised (whitespace,
// $, \left/\right, thin spaces, \dfrac/\tfrac, \frac12, \text{} and trailing units,
// thousands separators, degrees, percent, trailing period, a leading "x="), then
// compared as strings, then as numbers (integers exactly; decimals, fractions a/b and
// \frac{a}{b}, scientific notation with relative tolerance 1e-6), then element by
// element for tuples / intervals with matching brackets.
GradeResult GradeMath(std::string_view response, std::string_view reference,
                      const Deadline& deadline);

using Grader = std::function<GradeResult(std::string_view response, std::string_view reference,
                                         const Deadline& deadline)>;

// The grader of a task: "arith" | "math"; anything else is InvalidArgument.
absl::StatusOr<Grader> GraderForTask(std::string_view task);

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_GRADER_H_
