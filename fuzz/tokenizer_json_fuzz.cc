// Loading a tokenizer.json (common/bpe_tokenizer.h, BpeTokenizer::FromJson) from hostile
// text: the input is the file. Parsing must fail cleanly (an error, never a crash, an
// exception or an allocation sized by a claimed id). A tokenizer that loads is then used:
// a few fixed texts and the input's own bytes are encoded with and without special
// tokens, every id must lie in [0, VocabSize()), Decode/DecodeBytes of those ids and of
// ids taken from the input (unassigned, negative, huge) must not crash, and the tokens'
// texts map back to ids.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/bpe_tokenizer.h"
#include "fuzz/fuzz_check.h"

namespace {

void CheckIds(const pmdrl::BpeTokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.VocabSize());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::unique_ptr<pmdrl::BpeTokenizer>> tok = pmdrl::BpeTokenizer::FromJson(json);
  if (!tok.ok()) return 0;
  const pmdrl::BpeTokenizer& t = **tok;
  FUZZ_CHECK(t.VocabSize() >= 0);
  static const char* const kTexts[] = {"Hello, world! 12 + 30 = 42", "<|im_start|>user\n\\boxed{x}",
                                       "  spaces\t\ttabs\r\n", "caf\xc3\xa9 \xe2\x88\x9a"};
  std::vector<std::string_view> texts(std::begin(kTexts), std::end(kTexts));
  texts.push_back(json.substr(0, 256));
  for (std::string_view text : texts) {
    for (bool special : {true, false}) {
      const std::vector<int32_t> ids = t.Encode(text, special);
      CheckIds(t, ids);
      (void)t.Decode(ids, /*skip_special=*/false);
      (void)t.DecodeBytes(ids, /*skip_special=*/true);
    }
  }
  (void)t.CountPreTokens(json.substr(0, 256));
  // Arbitrary ids: every 4 input bytes are one.
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 4 <= size && ids.size() < 64; i += 4) {
    int32_t id;
    std::memcpy(&id, data + i, 4);
    ids.push_back(id);
  }
  (void)t.Decode(ids, false);
  (void)t.Decode(ids, true);
  for (const pmdrl::AddedToken& a : t.AddedTokens()) {
    FUZZ_CHECK(a.id >= 0 && a.id < t.VocabSize());
    FUZZ_CHECK(t.TokenToId(a.content) >= 0);
    (void)t.IsSpecial(a.id);
  }
  return 0;
}
