#include "verifier/grader.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "verifier/answer_extract.h"
#include "verifier/latex_normalize.h"
#include "verifier/latex_scan.h"
#include "verifier/symbolic_equal.h"

namespace pmdrl {

std::string_view VerdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::kCorrect:
      return "correct";
    case Verdict::kIncorrect:
      return "incorrect";
    case Verdict::kParseError:
      return "parse_error";
    case Verdict::kTimeout:
      return "timeout";
  }
  return "unknown";
}

namespace {

using latex::IsDigit;
using Poll = DeadlinePoll;

// Integer text "-?[0-9]+" to canonical form (no leading zeros, no "-0"); nullopt if
// `s` is not exactly such an integer. Any length: integers compare as digit strings.
std::optional<std::string> CanonicalInteger(std::string_view s, Poll& poll) {
  bool negative = false;
  if (!s.empty() && s.front() == '-') {
    negative = true;
    s.remove_prefix(1);
  }
  if (s.empty()) return std::nullopt;
  for (char c : s) {
    if (poll.Tick()) return std::nullopt;
    if (!IsDigit(c)) return std::nullopt;
  }
  size_t first = s.find_first_not_of('0');
  if (first == std::string_view::npos) return std::string("0");
  std::string out = negative ? "-" : "";
  out.append(s.substr(first));
  return out;
}

// ---------------------------------------------------------------------------
// Numbers

struct Number {
  std::optional<std::string> integer;  // canonical digits when exactly an integer
  std::optional<long double> value;    // finite value when representable
};

// A plain real: digits with an optional '.', an optional exponent "e[+-]?digits".
// Returns its text re-spelled for std::from_chars ("+" removed, ".5" -> "0.5").
std::optional<std::string> PlainReal(std::string_view s, bool* is_integer) {
  std::string out;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    if (s[0] == '-') out.push_back('-');
    s.remove_prefix(1);
  }
  size_t i = 0, int_digits = 0, frac_digits = 0;
  while (i < s.size() && IsDigit(s[i])) ++i, ++int_digits;
  bool has_point = i < s.size() && s[i] == '.';
  if (has_point) {
    ++i;
    while (i < s.size() && IsDigit(s[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return std::nullopt;
  bool has_exponent = false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    size_t j = i + 1;
    if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
    size_t digits_start = j;
    while (j < s.size() && IsDigit(s[j])) ++j;
    if (j == digits_start) return std::nullopt;
    has_exponent = true;
    i = j;
  }
  if (i != s.size()) return std::nullopt;
  if (int_digits == 0) out.push_back('0');
  out.append(s);
  *is_integer = !has_point && !has_exponent;
  return out;
}

std::optional<long double> ToValue(const std::string& text) {
  long double v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  // Out of range (e.g. 5000 digits) is "no value", never UB or inf.
  if (ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

// A real in plain or scientific notation: "12", "-0.5", "1.5e-3", "1.5\times10^{-3}",
// "2\cdot10^3".
std::optional<Number> ParseReal(std::string_view s, Poll& poll) {
  if (poll.Tick()) return std::nullopt;
  for (std::string_view times : {std::string_view("\\times10^"), std::string_view("\\cdot10^")}) {
    size_t pos = s.find(times);
    if (pos == std::string_view::npos) continue;
    std::string_view exponent = s.substr(pos + times.size());
    if (exponent.size() >= 2 && exponent.front() == '{' && exponent.back() == '}') {
      exponent = exponent.substr(1, exponent.size() - 2);
    }
    bool mantissa_int = false, exponent_int = false;
    std::optional<std::string> mantissa = PlainReal(s.substr(0, pos), &mantissa_int);
    std::optional<std::string> exp = PlainReal(exponent, &exponent_int);
    if (!mantissa || !exp || !exponent_int) return std::nullopt;
    Number n;
    n.value = ToValue(absl::StrCat(*mantissa, "e", *exp));
    return n.value ? std::optional<Number>(n) : std::nullopt;
  }
  bool is_integer = false;
  std::optional<std::string> text = PlainReal(s, &is_integer);
  if (!text) return std::nullopt;
  Number n;
  if (is_integer) n.integer = CanonicalInteger(*text, poll);
  n.value = ToValue(*text);
  if (!n.integer && !n.value) return std::nullopt;
  return n;
}

std::optional<Number> Divide(const Number& a, const Number& b) {
  if (!a.value || !b.value || *b.value == 0) return std::nullopt;
  Number n;
  n.value = *a.value / *b.value;
  if (!std::isfinite(*n.value)) return std::nullopt;
  return n;
}

// A number: a real (see ParseReal), a fraction "a/b", or "\frac{a}{b}" with an
// optional sign in front, where a and b are reals.
std::optional<Number> ParseNumber(std::string_view s, Poll& poll) {
  if (s.empty()) return std::nullopt;
  if (std::optional<Number> n = ParseReal(s, poll)) return n;
  bool negative = false;
  std::string_view body = s;
  if (body.front() == '-' || body.front() == '+') {
    negative = body.front() == '-';
    body.remove_prefix(1);
  }
  std::optional<Number> result;
  if (body.starts_with("\\frac{") && body.back() == '}') {
    std::string_view inner = body.substr(6, body.size() - 7);  // "a}{b"
    size_t mid = inner.find("}{");
    if (mid == std::string_view::npos || inner.find("}{", mid + 1) != std::string_view::npos) {
      return std::nullopt;
    }
    std::optional<Number> a = ParseReal(inner.substr(0, mid), poll);
    std::optional<Number> b = ParseReal(inner.substr(mid + 2), poll);
    if (a && b) result = Divide(*a, *b);
  } else if (size_t slash = body.find('/'); slash != std::string_view::npos) {
    std::optional<Number> a = ParseReal(body.substr(0, slash), poll);
    std::optional<Number> b = ParseReal(body.substr(slash + 1), poll);
    if (a && b) result = Divide(*a, *b);
  }
  if (result && negative) *result->value = -*result->value;
  return result;
}

bool NumbersEqual(const Number& a, const Number& b) {
  if (a.integer && b.integer) return *a.integer == *b.integer;  // exact, any length
  if (!a.value || !b.value) return false;
  const long double x = *a.value, y = *b.value;
  if (x == y) return true;
  const long double scale = std::max(std::fabs(x), std::fabs(y));
  const long double diff = std::fabs(x - y);
  return diff <= 1e-6L * scale || diff <= 1e-9L;
}

Number Scaled(const Number& n, long double factor) {
  Number out;
  if (n.value) out.value = *n.value * factor;
  return out;
}

// ---------------------------------------------------------------------------
// Comparison

// Splits `s` at top-level occurrences of `separator` (outside (), [], {} and \{ \}).
std::vector<std::string_view> SplitTopLevel(std::string_view s, std::string_view separator,
                                            Poll& poll) {
  std::vector<std::string_view> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) return {};
    char c = s[i];
    if (c == '\\' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '}')) {
      depth += s[i + 1] == '{' ? 1 : -1;
      ++i;
      continue;
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (depth == 0 && s.substr(i, separator.size()) == separator) {
      parts.push_back(s.substr(start, i - start));
      start = i + separator.size();
      i = start - 1;
    }
  }
  parts.push_back(s.substr(start));
  return parts;
}

// The shape of an answer with several elements.
struct Structure {
  enum Kind { kScalar, kList, kTuple, kSet } kind = kScalar;
  char open = '\0', close = '\0';  // tuple / interval brackets
  std::vector<std::string_view> elements;
};

// Does the bracket at s[0] close exactly at the end of `s`? ("(1,2)+(3,4)" is no tuple.)
bool WrapsWhole(std::string_view s, Poll& poll) {
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) return false;
    char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (depth == 0 && i + 1 < s.size()) return false;
  }
  return true;
}

Structure Analyze(std::string_view s, Poll& poll) {
  Structure st;
  if (s.size() >= 4 && s.starts_with("\\{") && s.ends_with("\\}")) {
    st.kind = Structure::kSet;
    std::string_view inner = s.substr(2, s.size() - 4);
    st.elements = SplitTopLevel(inner, ",", poll);
    if (inner.empty()) st.elements.clear();
    return st;
  }
  std::string_view inner = s;
  if (s.size() >= 2 && (s.front() == '(' || s.front() == '[') &&
      (s.back() == ')' || s.back() == ']') && WrapsWhole(s, poll)) {
    inner = s.substr(1, s.size() - 2);
    st.open = s.front();
    st.close = s.back();
  }
  std::vector<std::string_view> parts = SplitTopLevel(inner, ",", poll);
  if (parts.size() < 2) return st;
  st.kind = st.open == '\0' ? Structure::kList : Structure::kTuple;
  st.elements = std::move(parts);
  return st;
}

// Caps the pairwise matching of unordered collections (n^2 comparisons).
constexpr size_t kMaxUnorderedElements = 32;

class Comparer {
 public:
  explicit Comparer(const Deadline& deadline) : deadline_(deadline), poll_(deadline) {}

  bool timed_out() { return poll_.CheckNow() || timed_out_; }
  Poll& poll() { return poll_; }

  bool AnswersEqual(const NormalizedAnswer& a, const NormalizedAnswer& b) {
    if (a.text == b.text) return true;
    // Unions of intervals: part by part.
    std::vector<std::string_view> ua = SplitTopLevel(a.text, "\\cup", poll_);
    std::vector<std::string_view> ub = SplitTopLevel(b.text, "\\cup", poll_);
    if (ua.size() > 1 || ub.size() > 1) {
      if (ua.size() != ub.size()) return false;
      for (size_t i = 0; i < ua.size(); ++i) {
        if (timed_out() || !StructuresEqual(ua[i], ub[i])) return false;
      }
      return true;
    }
    Structure sa = Analyze(a.text, poll_), sb = Analyze(b.text, poll_);
    if (sa.kind != Structure::kScalar || sb.kind != Structure::kScalar) {
      return StructuresEqual(a.text, b.text);
    }
    if (std::optional<bool> eq = EquationsEqual(a.text, b.text)) return *eq;
    return ScalarsEqual(a.text, b.text, a.percent, b.percent);
  }

 private:
  bool StructuresEqual(std::string_view a, std::string_view b) {
    if (a == b) return true;
    Structure sa = Analyze(a, poll_), sb = Analyze(b, poll_);
    if (sa.kind == Structure::kScalar && sb.kind == Structure::kScalar) {
      return ScalarsEqual(a, b, false, false);
    }
    if (sa.kind == Structure::kScalar || sb.kind == Structure::kScalar) return false;
    if (sa.elements.size() != sb.elements.size()) return false;
    const bool a_unordered = sa.kind == Structure::kSet || sa.kind == Structure::kList;
    const bool b_unordered = sb.kind == Structure::kSet || sb.kind == Structure::kList;
    if (sa.kind == Structure::kTuple && sb.kind == Structure::kTuple) {
      // Brackets matter for intervals ("[1,2)" vs "(1,2)").
      if (sa.open != sb.open || sa.close != sb.close) return false;
      return InOrder(sa.elements, sb.elements);
    }
    if (a_unordered && b_unordered) return AnyOrder(sa.elements, sb.elements);
    // A bare list against a tuple: in order, and only a parenthesised tuple.
    const Structure& tuple = sa.kind == Structure::kTuple ? sa : sb;
    const Structure& other = sa.kind == Structure::kTuple ? sb : sa;
    if (other.kind != Structure::kList || tuple.open != '(' || tuple.close != ')') return false;
    return InOrder(sa.elements, sb.elements);
  }

  bool InOrder(const std::vector<std::string_view>& xs, const std::vector<std::string_view>& ys) {
    for (size_t i = 0; i < xs.size(); ++i) {
      if (timed_out() || !ScalarsEqual(xs[i], ys[i], false, false)) return false;
    }
    return true;
  }

  // Multiset equality by greedy matching (each y used once).
  bool AnyOrder(const std::vector<std::string_view>& xs, const std::vector<std::string_view>& ys) {
    if (xs.size() > kMaxUnorderedElements) return false;
    std::vector<bool> used(ys.size(), false);
    for (std::string_view x : xs) {
      bool found = false;
      for (size_t j = 0; j < ys.size() && !found; ++j) {
        if (timed_out()) return false;
        if (!used[j] && ScalarsEqual(x, ys[j], false, false)) used[j] = found = true;
      }
      if (!found) return false;
    }
    return true;
  }

  // Both sides equations "lhs=rhs" (a single '=' each): equal when the sides match in
  // order or swapped. nullopt when not both are equations.
  std::optional<bool> EquationsEqual(std::string_view a, std::string_view b) {
    size_t ea = a.find('='), eb = b.find('=');
    if (ea == std::string_view::npos || eb == std::string_view::npos) return std::nullopt;
    if (a.find('=', ea + 1) != std::string_view::npos ||
        b.find('=', eb + 1) != std::string_view::npos) {
      return std::nullopt;
    }
    std::string_view la = a.substr(0, ea), ra = a.substr(ea + 1);
    std::string_view lb = b.substr(0, eb), rb = b.substr(eb + 1);
    if (ScalarsEqual(la, lb, false, false) && ScalarsEqual(ra, rb, false, false)) return true;
    return !timed_out() && ScalarsEqual(la, rb, false, false) && ScalarsEqual(ra, lb, false, false);
  }

  bool ScalarsEqual(std::string_view a, std::string_view b, bool a_percent, bool b_percent) {
    if (a == b) return true;
    if (timed_out()) return false;
    std::optional<Number> x = ParseNumber(a, poll_);
    std::optional<Number> y = x ? ParseNumber(b, poll_) : std::nullopt;
    if (x && y) {
      if (NumbersEqual(*x, *y)) return true;
      // "50%" against 0.5: the percent sign divides by 100 when only one side had it.
      if (a_percent != b_percent) {
        return a_percent ? NumbersEqual(Scaled(*x, 0.01L), *y)
                         : NumbersEqual(*x, Scaled(*y, 0.01L));
      }
      return false;  // two plain numbers: nothing symbolic left to find
    }
    switch (SymbolicEqual(a, b, deadline_)) {
      case SymbolicVerdict::kEqual:
        return true;
      case SymbolicVerdict::kTimeout:
        timed_out_ = true;
        return false;
      case SymbolicVerdict::kNotEqual:
      case SymbolicVerdict::kUnsupported:
        return false;
    }
    return false;
  }

  const Deadline& deadline_;
  Poll poll_;
  bool timed_out_ = false;
};

GradeResult TimedOut(GradeResult result) {
  result.verdict = Verdict::kTimeout;
  return result;
}

}  // namespace

// ---------------------------------------------------------------------------
// Graders

GradeResult GradeArith(std::string_view response, std::string_view reference,
                       const Deadline& deadline) {
  GradeResult result;
  Poll poll(deadline);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  result.verdict = Verdict::kParseError;
  if (response.size() > kMaxGradeInputBytes || reference.size() > kMaxGradeInputBytes) {
    return result;
  }
  result.extracted = std::string(response);
  std::optional<std::string> ref = CanonicalInteger(reference, poll);
  std::optional<std::string> answer = CanonicalInteger(response, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  if (!ref) return result;
  result.normalized_reference = *ref;
  if (!answer) return result;
  result.normalized_answer = *answer;
  result.verdict = *answer == *ref ? Verdict::kCorrect : Verdict::kIncorrect;
  return result;
}

GradeResult GradeMath(std::string_view response, std::string_view reference,
                      const Deadline& deadline) {
  GradeResult result;
  Comparer comparer(deadline);
  Poll& poll = comparer.poll();
  if (poll.CheckNow()) return TimedOut(std::move(result));
  result.verdict = Verdict::kParseError;
  if (response.size() > kMaxGradeInputBytes || reference.size() > kMaxGradeInputBytes) {
    return result;
  }

  // A reference may itself be a solution (MATH's boxed solution, GSM8K's "#### 42").
  NormalizedAnswer ref = NormalizeLatex(ReduceReference(reference, poll), poll);
  result.normalized_reference = ref.text;
  if (poll.CheckNow()) return TimedOut(std::move(result));

  std::optional<std::string_view> extracted = ExtractAnswer(response, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  if (!extracted) return result;
  result.extracted = std::string(*extracted);
  NormalizedAnswer answer = NormalizeLatex(*extracted, poll);
  result.normalized_answer = answer.text;
  if (poll.CheckNow()) return TimedOut(std::move(result));
  if (answer.text.empty() || ref.text.empty()) return result;

  bool equal = comparer.AnswersEqual(answer, ref);
  if (comparer.timed_out()) return TimedOut(std::move(result));
  result.verdict = equal ? Verdict::kCorrect : Verdict::kIncorrect;
  return result;
}

absl::StatusOr<Grader> GraderForTask(std::string_view task) {
  if (task == "arith") return Grader(GradeArith);
  if (task == "math") return Grader(GradeMath);
  return absl::InvalidArgumentError(
      absl::StrCat("no grader for task \"", std::string(task), "\"; known tasks: arith, math"));
}

bool GraderNeedsProcess(std::string_view task) { return task == "math"; }

}  // namespace pmdrl
