// UTF-8 helpers for byte-level text handling (common/bpe_tokenizer.cc and its loader):
// encoding a code point, measuring and repairing sequences the way Python's
// errors="replace" does. Pure functions on caller-owned strings.
#ifndef PMDRL_COMMON_UTF8_H_
#define PMDRL_COMMON_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pmdrl {

// Appends the UTF-8 encoding of code point `cp` to *out.
void AppendUtf8(uint32_t cp, std::string* out);

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are
// not one; *consumed is the length of the maximal ill-formed subpart in that case
// (what one U+FFFD replaces, as Python's errors="replace" does).
size_t Utf8SequenceLength(std::string_view s, size_t i, size_t* consumed);

// `s` with every maximal ill-formed subpart replaced by U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view s);

// Decodes one UTF-8 code point at s[*i] (input known valid) and advances *i.
uint32_t NextCodePoint(std::string_view s, size_t* i);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_UTF8_H_
