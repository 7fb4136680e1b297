#include "common/bpe_regex.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {
namespace bpe {

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(const std::string& pattern, bool literal) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
  if (literal) options |= PCRE2_LITERAL;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error, buf, sizeof(buf));
    return absl::InvalidArgumentError(absl::StrCat("PCRE2 cannot compile the pattern at offset ",
                                                   offset, ": ",
                                                   reinterpret_cast<const char*>(buf)));
  }
  // JIT is an optimisation only: without it pcre2_match interprets.
  bool jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<Regex>(new Regex(code, jit));
}

Regex::~Regex() { pcre2_code_free(code_); }

}  // namespace bpe
}  // namespace pmdrl
