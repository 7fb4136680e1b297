// The byte-level BPE tokenizer's pre-tokenisation split (common/bpe_tokenizer.h): a
// compiled PCRE2 pattern (UTF, UCP; JIT-compiled when the library supports it) and the
// "Isolated" split of tokenizer.json's Split pre-tokenizer. A Regex owns its compiled
// code, which is safe to share between threads; match data (MatchData) is per call and
// owned by the caller. Internal to the tokenizer's files.
#ifndef PMDRL_COMMON_BPE_REGEX_H_
#define PMDRL_COMMON_BPE_REGEX_H_

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/utf8.h"

namespace pmdrl {
namespace bpe {

class Regex {
 public:
  // Errors: a pattern PCRE2 cannot compile (InvalidArgument, with the offset).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls emit(begin, end) for every piece of `text` under "Isolated" splitting: each
  // match is a piece and so is each non-empty stretch between matches.
  template <typename Emit>
  void Split(std::string_view text, pcre2_match_data* md, Emit&& emit) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, last = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        // A pathological input outgrew JIT's small stack; the interpreter uses the heap.
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_JIT, md, nullptr);
      }
      if (rc < 0) break;  // no match (or a limit hit): the rest is one piece
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t begin = ov[0], end = ov[1];
      if (end <= begin) {
        // Empty match: never a piece; step over one character.
        size_t bad = 0;
        size_t n = Utf8SequenceLength(text, std::max(begin, pos), &bad);
        pos = std::max(begin, pos) + (n > 0 ? n : bad);
        continue;
      }
      if (begin > last) emit(last, begin);
      emit(begin, end);
      last = pos = end;
    }
    if (last < text.size()) emit(last, text.size());
  }

 private:
  Regex(pcre2_code* code, bool jit) : code_(code), jit_(jit) {}
  pcre2_code* code_;
  [[maybe_unused]] bool jit_;
};

// Match data for one Split call at a time.
struct MatchData {
  MatchData() : md(pcre2_match_data_create(1, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(md); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* md;
};

}  // namespace bpe
}  // namespace pmdrl

#endif  // PMDRL_COMMON_BPE_REGEX_H_
