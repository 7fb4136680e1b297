// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (the GPT-2 / Qwen2 /
// Qwen3 / Llama 3 family), giving the same ids as the `tokenizers` library for the
// configurations those checkpoints use.
#ifndef PMDRL_COMMON_BPE_TOKENIZER_H_
#define PMDRL_COMMON_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer.h"

namespace pmdrl {

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;  // a match also swallows the whitespace before it
  bool rstrip = false;  // ... and after it
};

// Encodes text as tokenizer.json's pipeline does: split on added tokens (longest match
// first), normalise, pre-tokenise with the Split regex(es) (PCRE2, UTF + UCP), map the
// bytes of each piece with GPT-2's bytes-to-unicode table and apply the BPE merges in
// rank order. Supported: model.type "BPE" (merges as "a b" strings or [a, b] pairs,
// ignore_merges, unk_token); normalizer null or NFC; pre_tokenizer ByteLevel or a
// Sequence of Split(Regex|String, behavior Isolated) steps and ByteLevel; decoder
// ByteLevel. Anything else is an InvalidArgument error naming the field.
//
// NFC: there is no ICU here, so the NFC normaliser is taken as the identity: input
// text is assumed to be NFC already (any text typed on a keyboard or produced by a
// model almost always is). Decomposed input (e.g. "e" + U+0301) then gives ids that
// differ from Hugging Face's.
//
// Immutable and thread-safe after construction, except for the Set*Id setters, which
// must be called before the instance is shared. A word -> ids cache is kept in
// mutex-protected shards; it never changes results.
class BpeTokenizer final : public Tokenizer {
 public:
  // Reads and parses `path` (a tokenizer.json). Errors name the file and the field.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFile(const std::string& path);
  // Parses the text of a tokenizer.json; `origin` names it in error messages.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(
      std::string_view json, std::string_view origin = "tokenizer.json");

  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Ids of `text`; added tokens (special or not) that occur in the text map to their
  // ids, as Hugging Face does by default. No BOS/EOS is added.
  std::vector<int32_t> Encode(std::string_view text) const override;
  // Like Encode, but with allow_special=false special added tokens in `text` are
  // encoded as ordinary text (use it for untrusted text such as dataset prompts, so
  // that "<|im_end|>" inside a problem cannot end a turn). Non-special added tokens
  // still match.
  std::vector<int32_t> Encode(std::string_view text, bool allow_special) const;

  // Text of `ids`, as transformers' decode(): bytes of vocabulary tokens, added tokens
  // verbatim (special ones dropped with skip_special), "<unk:ID>" for an id that is
  // not assigned (never dropped); byte sequences that are not valid UTF-8 (ids that
  // split a character) become U+FFFD. Decode(Encode(s), false) == s for valid UTF-8 s.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  // Like Decode but returns the raw bytes, without U+FFFD replacement (for streaming:
  // concatenating DecodeBytes of consecutive chunks gives the bytes of the whole).
  std::string DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const;

  // One more than the largest id of the vocabulary and the added tokens. (A model's
  // embedding table is often larger; ids in between are unassigned.)
  int64_t VocabSize() const override { return vocab_size_; }
  int32_t BosId() const override { return bos_id_; }
  int32_t EosId() const override { return eos_id_; }
  int32_t PadId() const override { return pad_id_; }
  // -1 (the default) means "none". Call before sharing the instance.
  void SetBosId(int32_t id) { bos_id_ = id; }
  void SetEosId(int32_t id) { eos_id_ = id; }
  void SetPadId(int32_t id) { pad_id_ = id; }

  // Id of a token given by its text: an added token's content or a vocabulary entry in
  // byte-level form (e.g. "Ġthe"); -1 when there is none.
  int32_t TokenToId(std::string_view token) const;
  // The added tokens, in tokenizer.json order.
  const std::vector<AddedToken>& AddedTokens() const;
  // Whether `id` is a special added token.
  bool IsSpecial(int32_t id) const;

  // Exposed for the benchmark: splits `text` (no added-token handling) with the
  // pre-tokeniser only and returns the number of pieces.
  size_t CountPreTokens(std::string_view text) const;

 private:
  struct Impl;
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int64_t vocab_size_ = 0;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_BPE_TOKENIZER_H_
