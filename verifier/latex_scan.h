// Small character-level helpers shared by answer extraction and LaTeX normalisation.
// Everything here is linear in its input and never recurses.
#ifndef PMDRL_VERIFIER_LATEX_SCAN_H_
#define PMDRL_VERIFIER_LATEX_SCAN_H_

#include <cstddef>
#include <string_view>
#include <vector>

#include "verifier/deadline.h"

namespace pmdrl::latex {

inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }
inline bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

inline std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// For every '{' of `s`, the index of its matching '}' (npos when unbalanced); other
// entries are npos. Escaped braces "\{" "\}" are literal characters, not groups.
// Iterative with an explicit stack: nesting depth is bounded only by the input length.
std::vector<size_t> MatchBraces(std::string_view s, DeadlinePoll& poll);

}  // namespace pmdrl::latex

#endif  // PMDRL_VERIFIER_LATEX_SCAN_H_
