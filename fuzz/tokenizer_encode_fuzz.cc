// Encoding and decoding untrusted text with a real tokenizer (the test fixture
// tests/data/tiny_bpe/tokenizer.json: byte-level BPE, a Split regex, NFC, three special
// tokens). The first input byte picks the options, the rest is the text. Checks:
//  - every id lies in [0, VocabSize());
//  - DecodeBytes(Encode(s)) == s for any bytes s, and Decode(Encode(s), false) == s for
//    valid UTF-8 s (the byte-level round trip BpeTokenizer promises), with special tokens
//    allowed or not;
//  - with special tokens not allowed, no special id comes out;
//  - DecodeBytes of two halves of an id list concatenates to DecodeBytes of the whole
//    (what streaming relies on), and Decode of arbitrary ids (from the input) never crashes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/bpe_tokenizer.h"
#include "common/utf8.h"
#include "fuzz/fuzz_check.h"

namespace {

const pmdrl::BpeTokenizer& Tokenizer() {
  static const pmdrl::BpeTokenizer* tok = [] {
    absl::StatusOr<std::unique_ptr<pmdrl::BpeTokenizer>> t =
        pmdrl::BpeTokenizer::FromFile(PMDRL_SOURCE_DIR "/tests/data/tiny_bpe/tokenizer.json");
    FUZZ_CHECK(t.ok());
    return t->release();
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const pmdrl::BpeTokenizer& t = Tokenizer();
  const uint8_t flags = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool allow_special = (flags & 1) != 0;
  const std::vector<int32_t> ids = t.Encode(text, allow_special);
  for (int32_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < t.VocabSize());
    if (!allow_special) FUZZ_CHECK(!t.IsSpecial(id));
  }
  const std::string bytes = t.DecodeBytes(ids, /*skip_special=*/false);
  FUZZ_CHECK(bytes == text);
  if (pmdrl::ReplaceInvalidUtf8(text) == text) {
    FUZZ_CHECK(t.Decode(ids, /*skip_special=*/false) == text);
  }
  const size_t cut = ids.empty() ? 0 : flags % (ids.size() + 1);
  const std::vector<int32_t> a(ids.begin(), ids.begin() + static_cast<long>(cut));
  const std::vector<int32_t> b(ids.begin() + static_cast<long>(cut), ids.end());
  FUZZ_CHECK(t.DecodeBytes(a, false) + t.DecodeBytes(b, false) == bytes);
  if ((flags & 2) != 0) {
    std::vector<int32_t> raw;
    for (size_t i = 1; i + 4 <= size && raw.size() < 64; i += 4) {
      int32_t id;
      std::memcpy(&id, data + i, 4);
      raw.push_back((flags & 4) != 0 ? id : id % 600);
    }
    (void)t.Decode(raw, (flags & 8) != 0);
    (void)t.DecodeBytes(raw, (flags & 8) != 0);
  }
  return 0;
}
