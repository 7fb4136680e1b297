// Symbolic comparison of two normalised LaTeX answers with GiNaC: "\sqrt{8}" vs
// "2\sqrt{2}", "\frac{\pi}{2}" vs "\pi/2", "(x+1)^2" vs "x^2+2x+1".
//
// GiNaC cannot be interrupted and evaluates numbers eagerly (2^(10^10) would be
// computed while parsing), so the translation below pre-screens every input: length,
// nesting depth, the digits an integer power or factorial would produce, and the size
// of a polynomial expansion are bounded before GiNaC sees the expression. GiNaC and
// CLN keep non-atomic reference counts on shared global objects (e.g. the numeric
// constants 0 and 1), so they are not thread-safe: at most one thread of a process may
// run SymbolicEqual (and so GradeMath) at a time. There is no lock: the verifier runs
// these checks in its grader processes, each serving one check at a time
// (verifier/grader_process_pool.h), where a stuck check costs one killed worker instead
// of stalling every other check behind a lock; the learner's evaluator and `pmdrl grade`
// call it from one thread.
#ifndef PMDRL_VERIFIER_SYMBOLIC_EQUAL_H_
#define PMDRL_VERIFIER_SYMBOLIC_EQUAL_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "verifier/deadline.h"

namespace pmdrl {

// Longest normalised answer handed to GiNaC, and deepest nesting of groups.
inline constexpr size_t kMaxSymbolicBytes = 1024;
inline constexpr int kMaxSymbolicDepth = 48;
// Largest number of decimal digits an exact number may reach while evaluating.
inline constexpr double kMaxSymbolicDigits = 1e4;
// Largest n accepted in n!.
inline constexpr int kMaxFactorialArgument = 1000;

// Translates a normalised LaTeX answer into GiNaC's input syntax: \frac{a}{b} ->
// ((a)/(b)), \sqrt{x} -> sqrt(x), \sqrt[n]{x} -> (x)^(1/(n)), x^{y} -> (x)^(y), \pi ->
// Pi, e -> exp(1), \cdot \times -> *, \div -> /, implicit multiplication ("2\sqrt{3}",
// "2(x+1)", "xy"), n! -> factorial(n), \binom, |x| -> abs(x), \sin \cos \tan \sec \csc
// \cot \arcsin \arccos \arctan \sinh \cosh \tanh \ln \log \log_b \exp. Decimals become
// exact fractions (0.25 -> (25/100)). Letters (and Greek commands) become symbols named
// "s_<name>", with a subscript "x_1" -> s_x_1. InvalidArgument for anything else
// (\infty, sets, relations, unknown commands, malformed input) and for input the
// pre-screen deems unsafe.
absl::StatusOr<std::string> LatexToGinac(std::string_view normalized);

enum class SymbolicVerdict {
  kEqual,
  kNotEqual,
  kUnsupported,  // either side could not be translated or parsed, or is unsafe
  kTimeout,      // the deadline passed (checked between steps)
};

// Compares two normalised answers: translates both, parses them with GiNaC (one parser,
// so equal names are the same symbol), then tests (a - b).expand().normal() for zero
// (skipped when the expansion would exceed a few thousand terms); when that does not
// decide, evaluates a - b numerically (evalf for constants, at five fixed pseudo-random
// points for expressions with symbols) with tolerance 1e-6 relative to max(1, |a|, |b|).
// Never throws.
SymbolicVerdict SymbolicEqual(std::string_view a, std::string_view b, const Deadline& deadline);

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_SYMBOLIC_EQUAL_H_
