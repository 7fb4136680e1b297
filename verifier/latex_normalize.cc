#include "verifier/latex_normalize.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "verifier/latex_scan.h"

namespace pmdrl {
namespace {

using latex::IsAlpha;
using latex::IsDigit;
using latex::IsSpace;
using latex::Trim;
using Poll = DeadlinePoll;

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
    } else if (name == "dfrac" || name == "tfrac" || name == "cfrac") {
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

// Unit words stripped from the end of an answer when they follow a number: "5 dollars",
// "30 degrees", "12 cm". Only whole words after a digit, '}' or a space-separated
// number, so "2x" or "\pi r" keep their letters.
bool IsUnitWord(std::string_view w) {
  static constexpr std::string_view kUnits[] = {
      "dollars", "dollar", "cents", "cent",   "degrees", "degree", "percent", "cm",     "mm",
      "km",      "meters", "meter", "metres", "metre",   "inches", "inch",    "feet",   "foot",
      "ft",      "miles",  "mile",  "hours",  "hour",    "hrs",    "minutes", "minute", "min",
      "seconds", "second", "sec",   "days",   "day",     "weeks",  "week",    "months", "month",
      "years",   "year",   "units", "unit",   "square",  "sq",     "cubic",   "kg",     "grams",
      "gram",    "pounds", "pound", "lbs",    "lb",      "ounces", "oz",      "liters", "liter",
      "litres",  "ml",     "mph",   "kmh",    "points",  "people", "students"};
  for (std::string_view u : kUnits) {
    if (w == u) return true;
  }
  return false;
}

// "5 dollars" -> "5": a trailing unit word preceded by a space and a number-like end.
std::optional<std::string_view> StripTrailingUnitWord(std::string_view s) {
  size_t start = s.size();
  while (start > 0 && IsAlpha(s[start - 1])) --start;
  if (start == s.size() || start == 0) return std::nullopt;
  if (!IsUnitWord(s.substr(start))) return std::nullopt;
  if (s[start - 1] == '\\') return std::nullopt;  // a command such as "\min"
  std::string_view prefix = Trim(s.substr(0, start));
  if (prefix.empty()) return std::nullopt;
  char last = prefix.back();
  // "12cm" is fine for multi-letter units; otherwise a space must separate them.
  if (!(IsDigit(last) || last == '}' || last == '%' || last == '.')) {
    if (!IsAlpha(last) || prefix.size() == s.substr(0, start).size()) return std::nullopt;
    // "5 square units": the word before is itself a unit word, stripped next round.
    size_t w = prefix.size();
    while (w > 0 && IsAlpha(prefix[w - 1])) --w;
    if (!IsUnitWord(prefix.substr(w))) return std::nullopt;
  }
  return prefix;
}

// Pass 2: strips trailing decorations until none is left: whitespace, a final period,
// degrees (^\circ, ^{\circ}, \circ, °), percent, units in \text{} (optionally squared or
// cubed) and unit words. Each round removes a suffix, so the loop is linear overall.
// Sets *percent when a percent sign or word went.
std::string_view StripTrailing(std::string_view s, bool* percent, Poll& poll) {
  static constexpr std::string_view kSuffixes[] = {"^{\\circ}",        "^\\circ", "\\circ",
                                                   "\xc2\xb0" /* ° */, "%",       "."};
  static constexpr std::string_view kPowers[] = {"^2", "^3", "^{2}", "^{3}"};
  bool changed = true;
  while (changed && !poll.Tick()) {
    changed = false;
    s = Trim(s);
    for (std::string_view suffix : kSuffixes) {
      if (s.ends_with(suffix) && s.size() > suffix.size()) {
        s.remove_suffix(suffix.size());
        if (suffix == "%") *percent = true;
        changed = true;
      }
    }
    if (std::optional<std::string_view> prefix = StripTrailingUnit(s)) {
      s = *prefix;
      changed = true;
    }
    for (std::string_view power : kPowers) {  // "4\text{ cm}^2"
      if (!s.ends_with(power)) continue;
      std::string_view base = s.substr(0, s.size() - power.size());
      if (base.ends_with('}')) {
        if (std::optional<std::string_view> prefix = StripTrailingUnit(base)) {
          s = *prefix;
          changed = true;
        }
      }
    }
    if (std::optional<std::string_view> prefix = StripTrailingUnitWord(s)) {
      if (s.ends_with("percent")) *percent = true;
      s = *prefix;
      changed = true;
    }
  }
  return Trim(s);
}

// "1 and 2", "1, and 2", "1 \text{ and } 2" -> commas: the word "and" standing alone
// (no letter or backslash before it, no letter after it) becomes ','.
std::string ReplaceConjunctions(std::string_view s, Poll& poll) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (poll.Tick()) break;
    if (s.substr(i, 3) == "and" && (i == 0 || (!IsAlpha(s[i - 1]) && s[i - 1] != '\\')) &&
        (i + 3 == s.size() || !IsAlpha(s[i + 3]))) {
      out.push_back(',');
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Pass 3: unwraps text-like commands ("\text{ and }" -> " and "), expands one-token
// arguments of \frac and \sqrt ("\frac12" -> "\frac{1}{2}", "\frac{1}2", "\sqrt3")
// and removes all whitespace. One scan: a wrapper's braces are marked for dropping and
// single-character arguments are marked for wrapping ahead of the cursor.
std::string UnwrapAndExpand(std::string_view s, Poll& poll) {
  const std::vector<size_t> match = latex::MatchBraces(s, poll);
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
    if (IsSpace(c)) {
      // Whitespace goes, except one space that ends a command name before a letter:
      // "\pi r" must not become the unknown command "\pir".
      size_t next = skip_spaces(i);
      size_t k = out.size();
      while (k > 0 && IsAlpha(out[k - 1])) --k;
      if (next < s.size() && IsAlpha(s[next]) && k < out.size() && k > 0 && out[k - 1] == '\\') {
        out.push_back(' ');
      }
      i = next - 1;
      continue;
    }
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

// "x=5" -> "5", "\theta=\pi" -> "\pi", "x_1=2" -> "2", "f(x)=2x" -> "2x": a single
// variable (one or two letters, or one command such as \theta, with an optional
// subscript) or a one-letter function of letters on the left of a single '='.
std::string_view StripVariableAssignment(std::string_view s) {
  size_t eq = s.find('=');
  if (eq == std::string_view::npos || s.find('=', eq + 1) != std::string_view::npos) return s;
  std::string_view lhs = s.substr(0, eq);
  if (lhs.empty() || eq + 1 >= s.size()) return s;
  if (size_t sub = lhs.find('_'); sub != std::string_view::npos) {
    std::string_view index = lhs.substr(sub + 1);
    if (index.size() >= 2 && index.front() == '{' && index.back() == '}') {
      index = index.substr(1, index.size() - 2);
    }
    if (index.empty() || index.size() > 3) return s;
    for (char c : index) {
      if (!IsAlpha(c) && !IsDigit(c)) return s;
    }
    lhs = lhs.substr(0, sub);
  }
  // "f(x)=...": a one-letter function of one-letter variables.
  if (lhs.size() >= 4 && IsAlpha(lhs[0]) && lhs[1] == '(' && lhs.back() == ')') {
    for (size_t i = 2; i + 1 < lhs.size(); ++i) {
      if (!IsAlpha(lhs[i]) && lhs[i] != ',') return s;
    }
    return s.substr(eq + 1);
  }
  size_t letters_from = 0;
  if (!lhs.empty() && lhs.front() == '\\') {
    letters_from = 1;
    if (lhs.size() < 3) return s;
  } else if (lhs.size() > 2) {
    return s;
  }
  if (lhs.size() <= letters_from) return s;
  for (size_t i = letters_from; i < lhs.size(); ++i) {
    if (!IsAlpha(lhs[i])) return s;
  }
  return s.substr(eq + 1);
}

}  // namespace

NormalizedAnswer NormalizeLatex(std::string_view raw, Poll& poll) {
  NormalizedAnswer result;
  const std::string cleaned = ReplaceConjunctions(CleanCommands(raw, poll), poll);
  const std::string unwrapped =
      UnwrapAndExpand(StripTrailing(cleaned, &result.percent, poll), poll);
  // Text unwrapping can expose more trailing decorations ("5\text{\%}" -> "5%").
  std::string_view stripped = StripTrailing(unwrapped, &result.percent, poll);
  // "{,}" is LaTeX's way of writing a comma inside numbers: "1{,}000"; repeated commas
  // come from "1, and 2".
  std::string s;
  s.reserve(stripped.size());
  for (size_t i = 0; i < stripped.size(); ++i) {
    if (poll.Tick()) break;
    if (stripped.substr(i, 3) == "{,}") {
      s.push_back(',');
      i += 2;
    } else if (stripped[i] == ',' && !s.empty() && s.back() == ',') {
      continue;
    } else {
      s.push_back(stripped[i]);
    }
  }
  result.text = RemoveThousandsSeparators(StripVariableAssignment(s));
  return result;
}

}  // namespace pmdrl
