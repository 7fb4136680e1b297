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
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {

// ---------------------------------------------------------------------------
// Deadline

Deadline::Deadline(std::chrono::milliseconds budget)
    : when_(std::chrono::steady_clock::now() + budget) {}

Deadline Deadline::Infinite() { return Deadline(std::chrono::steady_clock::time_point::max()); }

bool Deadline::Expired() const { return std::chrono::steady_clock::now() >= when_; }

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

// Polls a deadline from inner loops. Reading the clock costs tens of nanoseconds, so it
// is read once every 256 ticks; once expired, the flag sticks and every loop unwinds.
// All passes below are linear in the (capped) input, so the time between two clock
// reads is bounded.
class Poll {
 public:
  explicit Poll(const Deadline& deadline) : deadline_(deadline) {}
  bool Tick() {
    if (!expired_ && (++ticks_ & 255u) == 0 && deadline_.Expired()) expired_ = true;
    return expired_;
  }
  bool CheckNow() {
    if (!expired_ && deadline_.Expired()) expired_ = true;
    return expired_;
  }
  bool expired() const { return expired_; }

 private:
  const Deadline& deadline_;
  uint32_t ticks_ = 0;
  bool expired_ = false;
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool EqualsIgnoreAsciiCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(a[i])) !=
        absl::ascii_tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// For every '{' of `s`, the index of its matching '}' (npos when unbalanced); other
// entries are npos. Escaped braces "\{" "\}" are literal characters, not groups.
// Iterative with an explicit stack: nesting depth is bounded only by the input length.
std::vector<size_t> MatchBraces(std::string_view s, Poll& poll) {
  std::vector<size_t> match(s.size(), std::string_view::npos);
  std::vector<size_t> open;
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) break;
    char c = s[i];
    if (c == '\\' && i + 1 < s.size()) {
      ++i;  // skip the escaped character (\{, \}, \\ ...)
    } else if (c == '{') {
      open.push_back(i);
    } else if (c == '}' && !open.empty()) {
      match[open.back()] = i;
      open.pop_back();
    }
  }
  return match;
}

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
// Extraction

// Content of the last balanced \boxed{...} or \fbox{...}; nullopt when there is none.
std::optional<std::string_view> LastBoxed(std::string_view s, Poll& poll) {
  std::vector<size_t> match = MatchBraces(s, poll);
  std::optional<std::string_view> best;
  size_t best_start = 0;
  for (std::string_view command : {std::string_view("\\boxed"), std::string_view("\\fbox")}) {
    size_t pos = s.size();
    while (!poll.expired()) {
      pos = s.rfind(command, pos == 0 ? std::string_view::npos : pos - 1);
      if (pos == std::string_view::npos || (best && pos < best_start)) break;
      size_t brace = pos + command.size();
      while (brace < s.size() && IsSpace(s[brace])) ++brace;
      if (brace < s.size() && s[brace] == '{' && match[brace] != std::string_view::npos) {
        best = s.substr(brace + 1, match[brace] - brace - 1);
        best_start = pos;
        break;
      }
      if (pos == 0) break;
    }
  }
  return best;
}

// The text after the last "Answer:" (any case), up to the end of its line; if that is
// empty (e.g. "**Answer:**" on a line of its own), the next non-empty line. Markdown
// emphasis around the answer is dropped.
std::optional<std::string_view> LastAnswerLine(std::string_view s, Poll& poll) {
  static constexpr std::string_view kKey = "answer:";
  std::optional<size_t> found;
  for (size_t i = s.size() >= kKey.size() ? s.size() - kKey.size() + 1 : 0; i-- > 0;) {
    if (poll.Tick()) return std::nullopt;
    if (EqualsIgnoreAsciiCase(s.substr(i, kKey.size()), kKey)) {
      found = i;
      break;
    }
  }
  if (!found) return std::nullopt;
  std::string_view rest = s.substr(*found + kKey.size());
  while (!rest.empty()) {
    size_t eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    while (!line.empty() && (IsSpace(line.front()) || line.front() == '*')) line.remove_prefix(1);
    while (!line.empty() && (IsSpace(line.back()) || line.back() == '*')) line.remove_suffix(1);
    if (!line.empty()) return line;
    if (eol == std::string_view::npos) break;
    rest.remove_prefix(eol + 1);
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Normalisation. A pipeline of single passes, each linear in its input and without
// recursion, so nesting depth and length cannot blow the stack or the time budget.

// Pass 1: drops math delimiters ($, \( \) \[ \]), thin spaces (\! \, \; \: "\ "),
// \left / \right, \displaystyle, line breaks "\\"; rewrites \dfrac and \tfrac to \frac
// and "\%" to "%"; "~" (a LaTeX non-breaking space) becomes a space.
std::string CleanCommands(std::string_view s, Poll& poll) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) break;
    char c = s[i];
    if (c == '$') continue;
    if (c == '~') {
      out.push_back(' ');
      continue;
    }
    if (c != '\\') {
      out.push_back(c);
      continue;
    }
    if (i + 1 >= s.size()) break;  // a dangling backslash
    char next = s[i + 1];
    if (!IsAlpha(next)) {
      ++i;
      switch (next) {
        case '!':
        case ',':
        case ';':
        case ':':
        case ' ':  // thin spaces
        case '(':
        case ')':
        case '[':
        case ']':   // math delimiters
        case '\\':  // line break
          break;
        case '%':
          out.push_back('%');
          break;
        case '$':  // an escaped dollar is a currency sign: "\$5" -> "5"
          break;
        default:
          out.push_back('\\');
          out.push_back(next);
      }
      continue;
    }
    size_t end = i + 1;
    while (end < s.size() && IsAlpha(s[end])) ++end;
    std::string_view name = s.substr(i + 1, end - i - 1);
    if (name == "left" || name == "right" || name == "displaystyle") {
      // dropped
    } else if (name == "dfrac" || name == "tfrac") {
      out += "\\frac";
    } else {
      out.push_back('\\');
      out.append(name);
    }
    i = end - 1;
  }
  return out;
}

// Text-like commands whose argument is kept and the wrapper dropped.
bool IsTextCommand(std::string_view name) {
  return name == "text" || name == "textbf" || name == "textit" || name == "textrm" ||
         name == "mathrm" || name == "mathbf" || name == "mathit" || name == "mbox" ||
         name == "operatorname";
}

// Commands in which users write units: "5\text{ cm}", "3\mathrm{kg}".
bool IsUnitCommand(std::string_view name) {
  return name == "text" || name == "textrm" || name == "mathrm" || name == "mbox";
}

// If `s` ends with "\text{...}" (or another text command) whose content is a unit-like
// word (letters, spaces, '.') and what precedes it ends in a digit or '}', returns that
// prefix: "10\text{ cm}" -> "10". Otherwise nullopt.
std::optional<std::string_view> StripTrailingUnit(std::string_view s) {
  if (s.empty() || s.back() != '}') return std::nullopt;
  size_t open = s.rfind('{');
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view content = s.substr(open + 1, s.size() - open - 2);
  if (Trim(content).empty()) return std::nullopt;
  for (char c : content) {
    if (!IsAlpha(c) && !IsSpace(c) && c != '.') return std::nullopt;
  }
  size_t name_end = open;
  while (name_end > 0 && IsSpace(s[name_end - 1])) --name_end;
  size_t name_start = name_end;
  while (name_start > 0 && IsAlpha(s[name_start - 1])) --name_start;
  if (name_start == 0 || s[name_start - 1] != '\\') return std::nullopt;
  if (!IsUnitCommand(s.substr(name_start, name_end - name_start))) return std::nullopt;
  std::string_view prefix = Trim(s.substr(0, name_start - 1));
  if (prefix.empty() || !(IsDigit(prefix.back()) || prefix.back() == '}')) return std::nullopt;
  return prefix;
}

// Pass 2: strips trailing decorations until none is left: whitespace, a final period,
// degrees (^\circ, ^{\circ}, \circ, °), percent, and units in \text{}. Each round
// removes a suffix, so the loop is linear overall.
std::string_view StripTrailing(std::string_view s, Poll& poll) {
  static constexpr std::string_view kSuffixes[] = {"^{\\circ}",        "^\\circ", "\\circ",
                                                   "\xc2\xb0" /* ° */, "%",       "."};
  bool changed = true;
  while (changed && !poll.Tick()) {
    changed = false;
    s = Trim(s);
    for (std::string_view suffix : kSuffixes) {
      if (s.ends_with(suffix) && s.size() > suffix.size()) {
        s.remove_suffix(suffix.size());
        changed = true;
      }
    }
    if (std::optional<std::string_view> prefix = StripTrailingUnit(s)) {
      s = *prefix;
      changed = true;
    }
  }
  return Trim(s);
}

// Pass 3: unwraps text-like commands ("\text{ and }" -> " and "), expands one-token
// arguments of \frac and \sqrt ("\frac12" -> "\frac{1}{2}", "\frac{1}2", "\sqrt3")
// and removes all whitespace. One scan: a wrapper's braces are marked for dropping and
// single-character arguments are marked for wrapping ahead of the cursor.
std::string UnwrapAndExpand(std::string_view s, Poll& poll) {
  const std::vector<size_t> match = MatchBraces(s, poll);
  std::vector<uint8_t> mark(s.size(), 0);  // 1: drop this char, 2: wrap it in braces
  constexpr uint8_t kDrop = 1, kWrap = 2;
  std::string out;
  out.reserve(s.size() + 16);
  auto skip_spaces = [&](size_t j) {
    while (j < s.size() && IsSpace(s[j])) ++j;
    return j;
  };
  // Marks a one-token argument at `j` for wrapping; returns the index after the
  // argument, or npos when it is neither a group nor a single alphanumeric char.
  auto take_argument = [&](size_t j) -> size_t {
    j = skip_spaces(j);
    if (j >= s.size()) return std::string_view::npos;
    if (s[j] == '{') {
      return match[j] == std::string_view::npos ? std::string_view::npos : match[j] + 1;
    }
    if (IsDigit(s[j]) || IsAlpha(s[j])) {
      mark[j] = kWrap;
      return j + 1;
    }
    return std::string_view::npos;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) break;
    char c = s[i];
    if (mark[i] == kDrop) continue;
    if (mark[i] == kWrap) {
      out.push_back('{');
      out.push_back(c);
      out.push_back('}');
      continue;
    }
    if (IsSpace(c)) continue;
    if (c != '\\' || i + 1 >= s.size()) {
      out.push_back(c);
      continue;
    }
    if (!IsAlpha(s[i + 1])) {  // escaped symbol: copy both characters
      out.push_back(c);
      out.push_back(s[++i]);
      continue;
    }
    size_t end = i + 1;
    while (end < s.size() && IsAlpha(s[end])) ++end;
    std::string_view name = s.substr(i + 1, end - i - 1);
    if (IsTextCommand(name)) {
      size_t brace = skip_spaces(end);
      if (brace < s.size() && s[brace] == '{' && match[brace] != std::string_view::npos) {
        mark[brace] = kDrop;
        mark[match[brace]] = kDrop;
        i = brace;  // continue inside the group
        continue;
      }
    }
    out.push_back('\\');
    out.append(name);
    if (name == "frac") {
      size_t after_first = take_argument(end);
      if (after_first != std::string_view::npos) take_argument(after_first);
    } else if (name == "sqrt") {
      size_t arg = skip_spaces(end);
      if (arg < s.size() && s[arg] != '[') take_argument(arg);
    }
    i = end - 1;
  }
  return out;
}

// "1,234,567.5" -> "1234567.5" when the whole string is a number with thousands
// separators; anything else (e.g. the tuple "1,2") is returned unchanged.
std::string RemoveThousandsSeparators(std::string_view s) {
  const std::string unchanged(s);
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  size_t lead = 0;
  while (i + lead < s.size() && IsDigit(s[i + lead])) ++lead;
  if (lead < 1 || lead > 3) return unchanged;
  size_t j = i + lead;
  int groups = 0;
  while (j < s.size() && s[j] == ',') {
    if (j + 3 >= s.size()) return unchanged;  // fewer than three digits follow
    if (!IsDigit(s[j + 1]) || !IsDigit(s[j + 2]) || !IsDigit(s[j + 3])) return unchanged;
    if (j + 4 < s.size() && IsDigit(s[j + 4])) return unchanged;
    j += 4;
    ++groups;
  }
  if (groups == 0) return unchanged;
  if (j < s.size()) {
    if (s[j] != '.') return unchanged;
    for (size_t k = j + 1; k < s.size(); ++k) {
      if (!IsDigit(s[k])) return unchanged;
    }
  }
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c != ',') out.push_back(c);
  }
  return out;
}

// "x=5" -> "5": a short variable name on the left of a single '='.
std::string_view StripVariableAssignment(std::string_view s) {
  size_t eq = s.find('=');
  if (eq == std::string_view::npos || s.find('=', eq + 1) != std::string_view::npos) return s;
  std::string_view lhs = s.substr(0, eq);
  if (lhs.empty() || lhs.size() > 2 || eq + 1 >= s.size()) return s;
  for (char c : lhs) {
    if (!IsAlpha(c)) return s;
  }
  return s.substr(eq + 1);
}

std::string Normalize(std::string_view raw, Poll& poll) {
  const std::string cleaned = CleanCommands(raw, poll);
  const std::string unwrapped = UnwrapAndExpand(StripTrailing(cleaned, poll), poll);
  // Text unwrapping can expose more trailing decorations ("5\text{\%}" -> "5%").
  std::string_view stripped = StripTrailing(unwrapped, poll);
  // "{,}" is LaTeX's way of writing a comma inside numbers: "1{,}000".
  std::string s;
  s.reserve(stripped.size());
  for (size_t i = 0; i < stripped.size(); ++i) {
    if (poll.Tick()) break;
    if (stripped.substr(i, 3) == "{,}") {
      s.push_back(',');
      i += 2;
    } else {
      s.push_back(stripped[i]);
    }
  }
  return RemoveThousandsSeparators(StripVariableAssignment(s));
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
  return std::fabs(x - y) <= 1e-6L * scale;
}

// ---------------------------------------------------------------------------
// Comparison

// Equal as normalised strings or as numbers.
bool ScalarsEqual(std::string_view a, std::string_view b, Poll& poll) {
  if (a == b) return true;
  std::optional<Number> x = ParseNumber(a, poll);
  std::optional<Number> y = x ? ParseNumber(b, poll) : std::nullopt;
  if (x && y && NumbersEqual(*x, *y)) return true;
  // TODO(pmdrl): symbolic equivalence (GiNaC, Debian's libginac-dev) belongs here:
  // parse both sides to expressions and test simplify(a - b) == 0, under the same
  // cooperative deadline (GiNaC work must be bounded by expression size, since it
  // cannot be interrupted) — e.g. "\sqrt{8}" vs "2\sqrt{2}", "\frac{\pi}{2}" vs "\pi/2".
  return false;
}

// Splits "(a,b,c)" / "[a,b)" / "a,b" at top-level commas. Returns false when `s` is not
// a list of at least two elements. `open`/`close` receive the brackets ('\0' if none).
bool SplitTuple(std::string_view s, std::vector<std::string_view>* parts, char* open, char* close,
                Poll& poll) {
  parts->clear();
  *open = *close = '\0';
  if (s.size() >= 2 && (s.front() == '(' || s.front() == '[') &&
      (s.back() == ')' || s.back() == ']')) {
    // Only if the first bracket closes at the very end: "(1,2)+(3,4)" is no tuple.
    int depth = 0;
    bool wraps = true;
    for (size_t i = 0; i < s.size() && wraps; ++i) {
      if (poll.Tick()) return false;
      char c = s[i];
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') --depth;
      if (depth == 0 && i + 1 < s.size()) wraps = false;
    }
    if (wraps) {
      *open = s.front();
      *close = s.back();
      s = s.substr(1, s.size() - 2);
    }
  }
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) return false;
    char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      parts->push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  parts->push_back(s.substr(start));
  return parts->size() >= 2;
}

bool AnswersEqual(std::string_view a, std::string_view b, Poll& poll) {
  if (ScalarsEqual(a, b, poll)) return true;
  std::vector<std::string_view> xs, ys;
  char open_a, close_a, open_b, close_b;
  if (!SplitTuple(a, &xs, &open_a, &close_a, poll) ||
      !SplitTuple(b, &ys, &open_b, &close_b, poll)) {
    return false;
  }
  // Brackets matter for intervals ("[1,2)" vs "(1,2)"); element-wise otherwise.
  if (open_a != open_b || close_a != close_b || xs.size() != ys.size()) return false;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (poll.expired() || !ScalarsEqual(xs[i], ys[i], poll)) return false;
  }
  return true;
}

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
  Poll poll(deadline);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  result.verdict = Verdict::kParseError;
  if (response.size() > kMaxGradeInputBytes || reference.size() > kMaxGradeInputBytes) {
    return result;
  }

  // A reference may itself be a solution with a boxed answer (MATH's "solution" field).
  std::optional<std::string_view> ref = LastBoxed(reference, poll);
  result.normalized_reference = Normalize(ref ? *ref : reference, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));

  std::optional<std::string_view> extracted = LastBoxed(response, poll);
  if (!extracted) extracted = LastAnswerLine(response, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  if (!extracted) return result;
  result.extracted = std::string(*extracted);
  result.normalized_answer = Normalize(*extracted, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  if (result.normalized_answer.empty() || result.normalized_reference.empty()) return result;

  bool equal = AnswersEqual(result.normalized_answer, result.normalized_reference, poll);
  if (poll.CheckNow()) return TimedOut(std::move(result));
  result.verdict = equal ? Verdict::kCorrect : Verdict::kIncorrect;
  return result;
}

absl::StatusOr<Grader> GraderForTask(std::string_view task) {
  if (task == "arith") return Grader(GradeArith);
  if (task == "math") return Grader(GradeMath);
  return absl::InvalidArgumentError(
      absl::StrCat("no grader for task \"", std::string(task), "\"; known tasks: arith, math"));
}

}  // namespace pmdrl
