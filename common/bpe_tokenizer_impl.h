// Internal to the byte-level BPE tokenizer (common/bpe_tokenizer.h): the state behind
// BpeTokenizer's pointer to implementation, shared by the files that implement it:
// common/bpe_tokenizer_json.cc fills it from a tokenizer.json, common/bpe_tokenizer.cc
// encodes and decodes with it. Nothing else includes it.
// Ownership: the BpeTokenizer owns its Impl; the Impl owns its tables, regexes and word
// cache. Immutable after loading except the cache, whose shards have their own mutexes.
#ifndef PMDRL_COMMON_BPE_TOKENIZER_IMPL_H_
#define PMDRL_COMMON_BPE_TOKENIZER_IMPL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/bpe_regex.h"
#include "common/bpe_tokenizer.h"

namespace pmdrl {
namespace bpe {

// Pieces longer than this are not cached: they are rare and would crowd out the
// short words that make up almost all text.
constexpr size_t kMaxCachedPiece = 64;
constexpr size_t kCacheShards = 16;
constexpr size_t kCacheShardCapacity = 8192;

// One pre-tokenisation step: a regex split, optionally preceded by the ByteLevel
// prefix space.
struct PreStep {
  std::unique_ptr<Regex> regex;  // null: no split
  bool add_prefix_space = false;
};

struct MergeInfo {
  int32_t rank;
  int32_t new_id;
};

inline uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct CacheShard {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, std::vector<int32_t>> map ABSL_GUARDED_BY(mu);
};

}  // namespace bpe

struct BpeTokenizer::Impl {
  std::string origin;
  absl::flat_hash_map<std::string, int32_t> vocab;  // byte-level form -> id
  absl::flat_hash_map<uint64_t, bpe::MergeInfo> merges;
  std::array<int32_t, 256> byte_id{};          // id of each single byte's token, -1 if none
  std::array<std::string, 256> byte_str;       // byte-level form of each byte
  std::array<int32_t, 512> unicode_to_byte{};  // inverse of BytesToUnicode, -1 elsewhere
  int32_t unk_id = -1;
  bool ignore_merges = false;
  absl::flat_hash_map<std::string, int32_t> raw_vocab;  // raw bytes -> id (ignore_merges)

  std::vector<AddedToken> added;
  // Added-token indices by first byte, longest content first.
  std::array<std::vector<int32_t>, 256> added_by_first;

  std::vector<bpe::PreStep> pre_steps;

  // Indexed by id: decoded bytes and kind.
  enum Kind : uint8_t { kUnassigned = 0, kVocab = 1, kAdded = 2, kSpecial = 3 };
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_kind;

  mutable std::array<bpe::CacheShard, bpe::kCacheShards> cache;

  void PreTokenize(std::string_view segment, pcre2_match_data* md, std::deque<std::string>* storage,
                   std::vector<std::string_view>* out) const;
  void EncodeSegment(std::string_view segment, pcre2_match_data* md,
                     std::vector<int32_t>* ids) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_BPE_TOKENIZER_IMPL_H_
