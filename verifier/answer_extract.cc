#include "verifier/answer_extract.h"

#include <cstddef>
#include <vector>

#include "absl/strings/ascii.h"
#include "verifier/latex_scan.h"

namespace pmdrl {
namespace {

using latex::IsSpace;
using latex::Trim;

constexpr size_t kNpos = std::string_view::npos;

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

// Index of the last case-insensitive occurrence of `key` in `s`, or npos.
size_t RFindIgnoreCase(std::string_view s, std::string_view key, DeadlinePoll& poll) {
  if (s.size() < key.size()) return kNpos;
  for (size_t i = s.size() - key.size() + 1; i-- > 0;) {
    if (poll.Tick()) return kNpos;
    if (EqualsIgnoreAsciiCase(s.substr(i, key.size()), key)) return i;
  }
  return kNpos;
}

// Drops spaces, markdown emphasis, math dollars and a final period around an answer.
std::string_view Tidy(std::string_view s) {
  bool changed = true;
  while (changed && !s.empty()) {
    changed = false;
    std::string_view before = s;
    s = Trim(s);
    while (!s.empty() && (s.front() == '*' || s.front() == ':')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == '*' || s.back() == '.')) s.remove_suffix(1);
    changed = s.size() != before.size();
  }
  return s;
}

// The first non-empty (after Tidy) line of `rest`.
std::optional<std::string_view> FirstNonEmptyLine(std::string_view rest) {
  while (!rest.empty()) {
    size_t eol = rest.find('\n');
    std::string_view line = Tidy(rest.substr(0, eol));
    if (!line.empty()) return line;
    if (eol == kNpos) break;
    rest.remove_prefix(eol + 1);
  }
  return std::nullopt;
}

// "... the answer is 42. Because ..." -> "42": up to the end of the line or the first
// sentence end (". " — a period followed by a space, so "3.5" survives).
std::optional<std::string_view> AnswerIsSentence(std::string_view rest) {
  rest = rest.substr(0, rest.find('\n'));
  size_t stop = rest.find(". ");
  if (stop != kNpos) rest = rest.substr(0, stop);
  std::string_view out = Tidy(rest);
  if (out.empty()) return std::nullopt;
  return out;
}

}  // namespace

std::optional<std::string_view> LastBoxed(std::string_view s, DeadlinePoll& poll) {
  std::vector<size_t> match = latex::MatchBraces(s, poll);
  std::optional<std::string_view> best;
  size_t best_start = 0;
  for (std::string_view command : {std::string_view("\\boxed"), std::string_view("\\fbox")}) {
    size_t pos = s.size();
    while (!poll.expired()) {
      pos = s.rfind(command, pos == 0 ? kNpos : pos - 1);
      if (pos == kNpos || (best && pos < best_start)) break;
      size_t arg = pos + command.size();
      size_t brace = arg;
      while (brace < s.size() && IsSpace(s[brace])) ++brace;
      if (brace < s.size() && s[brace] == '{') {
        if (match[brace] != kNpos) {
          best = s.substr(brace + 1, match[brace] - brace - 1);
          best_start = pos;
          break;
        }
      } else if (brace > arg && brace < s.size()) {
        // "\boxed 5": a brace-less argument runs to the next space or '$'.
        size_t end = brace;
        while (end < s.size() && !IsSpace(s[end]) && s[end] != '$') ++end;
        best = s.substr(brace, end - brace);
        best_start = pos;
        break;
      }
      if (pos == 0) break;
    }
  }
  return best;
}

std::optional<std::string_view> ExtractAnswer(std::string_view response, DeadlinePoll& poll) {
  if (std::optional<std::string_view> boxed = LastBoxed(response, poll)) {
    if (!Trim(*boxed).empty()) return boxed;
    return std::nullopt;  // "\boxed{}": the model committed to an empty answer
  }
  static constexpr std::string_view kHashes = "####",
                                    kAnswerColon = "answer:", kAnswerIs = "answer is";
  const size_t hashes = response.rfind(kHashes);
  const size_t colon = RFindIgnoreCase(response, kAnswerColon, poll);
  const size_t is = RFindIgnoreCase(response, kAnswerIs, poll);
  if (poll.expired()) return std::nullopt;
  size_t last = kNpos;
  for (size_t p : {hashes, colon, is}) {
    if (p != kNpos && (last == kNpos || p > last)) last = p;
  }
  if (last == kNpos) return std::nullopt;
  if (last == hashes) {
    std::string_view rest = response.substr(hashes + kHashes.size());
    std::string_view line = Tidy(rest.substr(0, rest.find('\n')));
    if (line.empty()) return std::nullopt;
    return line;
  }
  if (last == colon) return FirstNonEmptyLine(response.substr(colon + kAnswerColon.size()));
  return AnswerIsSentence(response.substr(is + kAnswerIs.size()));
}

std::string_view ReduceReference(std::string_view reference, DeadlinePoll& poll) {
  if (std::optional<std::string_view> boxed = LastBoxed(reference, poll)) return *boxed;
  size_t hashes = reference.rfind("####");
  if (hashes != kNpos) {
    std::string_view rest = reference.substr(hashes + 4);
    std::string_view line = Tidy(rest.substr(0, rest.find('\n')));
    if (!line.empty()) return line;
  }
  return reference;
}

}  // namespace pmdrl
