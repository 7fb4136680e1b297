#include "verifier/latex_scan.h"

namespace pmdrl::latex {

std::vector<size_t> MatchBraces(std::string_view s, DeadlinePoll& poll) {
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

}  // namespace pmdrl::latex
