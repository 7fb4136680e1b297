// Encoding and decoding with a loaded BpeTokenizer (loading is in
// common/bpe_tokenizer_json.cc): added-token matching, pre-tokenisation, the BPE merges
// with their word cache, and the byte tables for decoding.
#include "common/bpe_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/bpe_regex.h"
#include "common/bpe_tokenizer_impl.h"
#include "common/utf8.h"

namespace pmdrl {
namespace {

using bpe::CacheShard;
using bpe::kCacheShardCapacity;
using bpe::kCacheShards;
using bpe::kMaxCachedPiece;
using bpe::MatchData;
using bpe::MergeInfo;
using bpe::PairKey;
using bpe::PreStep;

// Debian's Abseil has its own string_view type, not std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

void BpeTokenizer::Impl::PreTokenize(std::string_view segment, pcre2_match_data* md,
                                     std::deque<std::string>* storage,
                                     std::vector<std::string_view>* out) const {
  out->clear();
  out->push_back(segment);
  std::vector<std::string_view> next;
  for (const PreStep& step : pre_steps) {
    next.clear();
    for (std::string_view piece : *out) {
      if (step.add_prefix_space && (piece.empty() || piece[0] != ' ')) {
        storage->push_back(std::string(" ").append(piece));
        piece = storage->back();
      }
      if (step.regex == nullptr) {
        next.push_back(piece);
      } else {
        step.regex->Split(piece, md,
                          [&](size_t b, size_t e) { next.push_back(piece.substr(b, e - b)); });
      }
    }
    out->swap(next);
  }
}

void BpeTokenizer::Impl::EncodeSegment(std::string_view segment, pcre2_match_data* md,
                                       std::vector<int32_t>* ids) const {
  if (segment.empty()) return;
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  PreTokenize(segment, md, &storage, &pieces);
  for (std::string_view piece : pieces) EncodeWord(piece, ids);
}

void BpeTokenizer::Impl::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    int32_t id = byte_id[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      ids->push_back(id);
    } else if (unk_id >= 0) {
      ids->push_back(unk_id);
    }
    return;
  }
  if (ignore_merges) {
    auto it = raw_vocab.find(Av(word));
    if (it != raw_vocab.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() > kMaxCachedPiece) {
    MergeWord(word, ids);
    return;
  }
  CacheShard& shard = cache[std::hash<std::string_view>()(word) % kCacheShards];
  {
    absl::MutexLock lock(&shard.mu);
    auto it = shard.map.find(Av(word));
    if (it != shard.map.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = ids->size();
  MergeWord(word, ids);
  std::vector<int32_t> result(ids->begin() + first, ids->end());
  absl::MutexLock lock(&shard.mu);
  // Clearing a full shard keeps the cache bounded and lets it follow the text.
  if (shard.map.size() >= kCacheShardCapacity) shard.map.clear();
  shard.map.emplace(std::string(word), std::move(result));
}

// The merge loop of Hugging Face tokenizers' Word::merge_all: a heap of candidate
// merges ordered by (rank, position); stale entries are skipped when popped. O(n log n)
// in the word length, so a long run without pre-token boundaries stays cheap.
void BpeTokenizer::Impl::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (char ch : word) {
    int32_t id = byte_id[static_cast<unsigned char>(ch)];
    if (id < 0) id = unk_id;
    if (id < 0) continue;  // as Hugging Face: a byte with no token and no unk is dropped
    int32_t i = static_cast<int32_t>(sym.size());
    sym.push_back({id, i - 1, i + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Cand {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> heap_storage;
  heap_storage.reserve(sym.size());
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>(),
                                                                        std::move(heap_storage));
  auto lookup = [&](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merges.find(PairKey(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (const MergeInfo* m = lookup(sym[i].id, sym[i + 1].id)) {
      heap.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!heap.empty()) {
    Cand top = heap.top();
    heap.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const MergeInfo* m = lookup(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const MergeInfo* p = lookup(sym[left.prev].id, left.id)) {
        heap.push({p->rank, left.prev, p->new_id});
      }
    }
    if (left.next >= 0) {
      if (const MergeInfo* n = lookup(left.id, sym[left.next].id)) {
        heap.push({n->rank, top.pos, n->new_id});
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) ids->push_back(sym[i].id);
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

// ---------------------------------------------------------------------------------
// Encoding and decoding.

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  return Encode(text, /*allow_special=*/true);
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool allow_special) const {
  const Impl& im = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  MatchData md;
  size_t seg_start = 0;  // start of the text not yet encoded
  size_t i = 0;
  while (i < text.size()) {
    const std::vector<int32_t>& cands = im.added_by_first[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (int32_t c : cands) {
      const AddedToken& t = im.added[c];
      if (!allow_special && t.special) continue;
      if (text.compare(i, t.content.size(), t.content) == 0) {
        hit = &t;  // candidates are sorted longest first
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip) {
      while (begin > seg_start && IsAsciiSpace(text[begin - 1])) --begin;
    }
    if (hit->rstrip) {
      while (end < text.size() && IsAsciiSpace(text[end])) ++end;
    }
    im.EncodeSegment(text.substr(seg_start, begin - seg_start), md.md, &ids);
    ids.push_back(hit->id);
    seg_start = i = end;
  }
  im.EncodeSegment(text.substr(seg_start), md.md, &ids);
  return ids;
}

std::string BpeTokenizer::DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::string out;
  for (int32_t id : ids) {
    uint8_t kind = (id >= 0 && static_cast<size_t>(id) < im.id_kind.size())
                       ? im.id_kind[id]
                       : static_cast<uint8_t>(Impl::kUnassigned);
    if (kind == Impl::kUnassigned) {
      absl::StrAppend(&out, "<unk:", id, ">");
    } else if (kind == Impl::kSpecial && skip_special) {
      continue;
    } else {
      out.append(im.id_bytes[id]);
    }
  }
  return out;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  return ReplaceInvalidUtf8(DecodeBytes(ids, skip_special));
}

int32_t BpeTokenizer::TokenToId(std::string_view token) const {
  for (const AddedToken& t : impl_->added) {
    if (t.content == token) return t.id;
  }
  auto it = impl_->vocab.find(Av(token));
  return it == impl_->vocab.end() ? -1 : it->second;
}

const std::vector<AddedToken>& BpeTokenizer::AddedTokens() const { return impl_->added; }

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_kind.size() &&
         impl_->id_kind[id] == Impl::kSpecial;
}

size_t BpeTokenizer::CountPreTokens(std::string_view text) const {
  MatchData md;
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  impl_->PreTokenize(text, md.md, &storage, &pieces);
  return pieces.size();
}

}  // namespace pmdrl
