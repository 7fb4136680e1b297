#include "common/tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pmdrl {
namespace {

// Characters of ids 3..16, in id order.
constexpr std::string_view kAlphabet = "0123456789+-*=";
constexpr int32_t kFirstCharId = 3;

}  // namespace

CharTokenizer::CharTokenizer() {
  char_to_id_.fill(-1);
  for (size_t i = 0; i < kAlphabet.size(); ++i) {
    char_to_id_[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int16_t>(kFirstCharId + i);
  }
}

std::vector<int32_t> CharTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) {
    int16_t id = char_to_id_[static_cast<unsigned char>(c)];
    if (id >= 0) ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> CharTokenizer::EncodeChecked(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    int16_t id = char_to_id_[c];
    if (id < 0) {
      std::string shown = (c >= 0x20 && c < 0x7f)
                              ? absl::StrCat("'", std::string(1, static_cast<char>(c)), "'")
                              : absl::StrFormat("byte 0x%02x", c);
      return absl::InvalidArgumentError(
          absl::StrCat("CharTokenizer: character ", shown, " at offset ", i,
                       " is not in the arith alphabet \"", std::string(kAlphabet), "\""));
    }
    ids.push_back(id);
  }
  return ids;
}

std::string CharTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= kFirstCharId && id < kVocabSize) {
      out.push_back(kAlphabet[id - kFirstCharId]);
    } else if (id == kPad || id == kBos || id == kEos) {
      if (skip_special) continue;
      out += id == kPad ? "<pad>" : id == kBos ? "<bos>" : "<eos>";
    } else {
      absl::StrAppend(&out, "<unk:", id, ">");
    }
  }
  return out;
}

}  // namespace pmdrl
