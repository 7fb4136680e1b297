// Text <-> token ids. The policy, the actor and the SFT trainer see a tokenizer only
// through this interface, so the built-in character-level tokenizer and the byte-level
// BPE tokenizer of real checkpoints are interchangeable.
#ifndef PMDRL_COMMON_TOKENIZER_H_
#define PMDRL_COMMON_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// Maps text to token ids and back. Implementations are immutable and thread-safe after
// construction; callers may share one instance across threads without locking.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; no special tokens (BOS/EOS) are added.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  // Text of `ids`. With `skip_special`, BOS/EOS/PAD (and any other special tokens)
  // are dropped; otherwise they are rendered in a readable form.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;
  virtual int64_t VocabSize() const = 0;
  virtual int32_t BosId() const = 0;
  virtual int32_t EosId() const = 0;
  virtual int32_t PadId() const = 0;
};

// Character-level tokenizer of the built-in arith task: PAD=0, BOS=1, EOS=2,
// '0'..'9'=3..12, '+'=13, '-'=14, '*'=15, '='=16 (17 tokens).
// Encode() skips characters outside the alphabet; EncodeChecked() reports them.
// Decode() of an id outside [0, 17) renders "<unk:ID>" (never skipped: it is a bug
// upstream that should be visible); with skip_special=false, specials render as
// "<pad>", "<bos>", "<eos>".
class CharTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kPad = 0;
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;
  static constexpr int64_t kVocabSize = 17;

  CharTokenizer();

  std::vector<int32_t> Encode(std::string_view text) const override;
  // Like Encode, but a character outside the alphabet is an InvalidArgument error
  // naming the character and its byte offset.
  absl::StatusOr<std::vector<int32_t>> EncodeChecked(std::string_view text) const;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  int64_t VocabSize() const override { return kVocabSize; }
  int32_t BosId() const override { return kBos; }
  int32_t EosId() const override { return kEos; }
  int32_t PadId() const override { return kPad; }

 private:
  std::array<int16_t, 256> char_to_id_;  // -1: not in the alphabet
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_TOKENIZER_H_
