#include "common/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenisation pattern, used by ByteLevel with use_regex=true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Pieces longer than this are not cached: they are rare and would crowd out the
// short words that make up almost all text.
constexpr size_t kMaxCachedPiece = 64;
constexpr size_t kCacheShards = 16;
constexpr size_t kCacheShardCapacity = 8192;

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are
// not one; *consumed is the length of the maximal ill-formed subpart in that case
// (what one U+FFFD replaces, as Python's errors="replace" does).
size_t Utf8SequenceLength(std::string_view s, size_t i, size_t* consumed) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *consumed = 1;
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    bool ok = i + k < s.size() && (k == 1 ? (b(i + k) >= lo && b(i + k) <= hi)
                                          : (b(i + k) >= 0x80 && b(i + k) <= 0xBF));
    if (!ok) {
      *consumed = k;
      return 0;
    }
  }
  return need;
}

std::string ReplaceInvalidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t bad = 0;
    size_t n = Utf8SequenceLength(s, i, &bad);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += bad;
    }
  }
  return out;
}

// Decodes one UTF-8 code point at s[*i] (input known valid: vocabulary strings come
// from nlohmann-json, which rejects invalid UTF-8) and advances *i.
uint32_t NextCodePoint(std::string_view s, size_t* i) {
  unsigned char c = static_cast<unsigned char>(s[*i]);
  size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n && *i + k < s.size(); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  }
  *i += n;
  return cp;
}

// Debian's Abseil has its own string_view type, not std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// A compiled PCRE2 pattern (UTF, UCP; JIT-compiled when the library supports it).
// pcre2_code is safe to share between threads; match data is per call.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal) {
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
  ~Regex() { pcre2_code_free(code_); }

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

struct MatchData {
  MatchData() : md(pcre2_match_data_create(1, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(md); }
  pcre2_match_data* md;
};

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

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// GPT-2's reversible map from bytes to printable code points.
std::array<uint32_t, 256> BytesToUnicode() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? b : 256 + n++;
  return map;
}

struct CacheShard {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, std::vector<int32_t>> map ABSL_GUARDED_BY(mu);
};

}  // namespace

struct BpeTokenizer::Impl {
  std::string origin;
  absl::flat_hash_map<std::string, int32_t> vocab;  // byte-level form -> id
  absl::flat_hash_map<uint64_t, MergeInfo> merges;
  std::array<int32_t, 256> byte_id{};          // id of each single byte's token, -1 if none
  std::array<std::string, 256> byte_str;       // byte-level form of each byte
  std::array<int32_t, 512> unicode_to_byte{};  // inverse of BytesToUnicode, -1 elsewhere
  int32_t unk_id = -1;
  bool ignore_merges = false;
  absl::flat_hash_map<std::string, int32_t> raw_vocab;  // raw bytes -> id (ignore_merges)

  std::vector<AddedToken> added;
  // Added-token indices by first byte, longest content first.
  std::array<std::vector<int32_t>, 256> added_by_first;

  std::vector<PreStep> pre_steps;

  // Indexed by id: decoded bytes and kind.
  enum Kind : uint8_t { kUnassigned = 0, kVocab = 1, kAdded = 2, kSpecial = 3 };
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_kind;

  mutable std::array<CacheShard, kCacheShards> cache;

  void PreTokenize(std::string_view segment, pcre2_match_data* md, std::deque<std::string>* storage,
                   std::vector<std::string_view>* out) const;
  void EncodeSegment(std::string_view segment, pcre2_match_data* md,
                     std::vector<int32_t>* ids) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
};

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

// ---------------------------------------------------------------------------------
// Loading.

namespace {

class Loader {
 public:
  explicit Loader(std::string origin) : origin_(std::move(origin)) {}

  absl::Status Error(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ": ", Av(field), ": ", Av(what)));
  }

  // The string `j[key]` or `fallback` when absent or null.
  absl::StatusOr<std::string> OptString(const json& j, const std::string& field, const char* key,
                                        std::string fallback) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_string()) return Error(absl::StrCat(field, ".", key), "must be a string");
    return it->get<std::string>();
  }
  absl::StatusOr<bool> OptBool(const json& j, const std::string& field, const char* key,
                               bool fallback) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return Error(absl::StrCat(field, ".", key), "must be true or false");
    return it->get<bool>();
  }

  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
};

#define PMDRL_ASSIGN_OR_RETURN_IMPL(var, expr, tmp) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  var = std::move(*tmp)
#define PMDRL_BPE_CONCAT2(a, b) a##b
#define PMDRL_BPE_CONCAT(a, b) PMDRL_BPE_CONCAT2(a, b)
#define ASSIGN_OR_RETURN(var, expr) \
  PMDRL_ASSIGN_OR_RETURN_IMPL(var, expr, PMDRL_BPE_CONCAT(status_or_, __LINE__))

absl::Status ParseNormalizer(const Loader& L, const json& n, const std::string& field) {
  if (n.is_null()) return absl::OkStatus();
  if (!n.is_object()) return L.Error(field, "must be an object or null");
  ASSIGN_OR_RETURN(std::string type, L.OptString(n, field, "type", ""));
  if (type == "NFC") return absl::OkStatus();  // assumed identity: see the header
  if (type == "Sequence") {
    auto it = n.find("normalizers");
    if (it == n.end() || !it->is_array()) {
      return L.Error(field + ".normalizers", "must be an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s = ParseNormalizer(L, (*it)[i], absl::StrCat(field, ".normalizers[", i, "]"));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return L.Error(field + ".type",
                 absl::StrCat("unsupported normalizer \"", type, "\" (supported: null, NFC)"));
}

// Appends the steps of one pre-tokeniser; sets *byte_level when it is ByteLevel.
absl::Status ParsePreTokenizer(const Loader& L, const json& p, const std::string& field,
                               std::vector<PreStep>* steps, bool* byte_level) {
  if (p.is_null()) return absl::OkStatus();
  if (!p.is_object()) return L.Error(field, "must be an object or null");
  ASSIGN_OR_RETURN(std::string type, L.OptString(p, field, "type", ""));
  if (type == "Sequence") {
    auto it = p.find("pretokenizers");
    if (it == p.end() || !it->is_array()) {
      return L.Error(field + ".pretokenizers", "must be an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s = ParsePreTokenizer(
          L, (*it)[i], absl::StrCat(field, ".pretokenizers[", i, "]"), steps, byte_level);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    PreStep step;
    ASSIGN_OR_RETURN(step.add_prefix_space, L.OptBool(p, field, "add_prefix_space", true));
    ASSIGN_OR_RETURN(bool use_regex, L.OptBool(p, field, "use_regex", true));
    if (use_regex) {
      auto regex = Regex::Compile(kGpt2Pattern, /*literal=*/false);
      if (!regex.ok()) return L.Error(field, std::string(regex.status().message()));
      step.regex = std::move(*regex);
    }
    if (step.add_prefix_space || step.regex != nullptr) steps->push_back(std::move(step));
    return absl::OkStatus();
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(std::string behavior, L.OptString(p, field, "behavior", ""));
    if (behavior != "Isolated") {
      return L.Error(field + ".behavior", absl::StrCat("unsupported Split behavior \"", behavior,
                                                       "\" (supported: Isolated)"));
    }
    ASSIGN_OR_RETURN(bool invert, L.OptBool(p, field, "invert", false));
    if (invert) return L.Error(field + ".invert", "invert=true is not supported");
    auto pat = p.find("pattern");
    if (pat == p.end() || !pat->is_object()) {
      return L.Error(field + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
    }
    bool literal;
    std::string text;
    if (auto r = pat->find("Regex"); r != pat->end() && r->is_string()) {
      literal = false;
      text = r->get<std::string>();
    } else if (auto s = pat->find("String"); s != pat->end() && s->is_string()) {
      literal = true;
      text = s->get<std::string>();
    } else {
      return L.Error(field + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
    }
    auto regex = Regex::Compile(text, literal);
    if (!regex.ok()) return L.Error(field + ".pattern", std::string(regex.status().message()));
    PreStep step;
    step.regex = std::move(*regex);
    steps->push_back(std::move(step));
    return absl::OkStatus();
  }
  return L.Error(field + ".type", absl::StrCat("unsupported pre-tokenizer \"", type,
                                               "\" (supported: ByteLevel, Split, Sequence)"));
}

absl::StatusOr<int32_t> ParseId(const Loader& L, const json& v, const std::string& field) {
  if (!v.is_number_integer()) return L.Error(field, "must be an integer id");
  int64_t id = v.get<int64_t>();
  if (id < 0 || id > INT32_MAX - 1) return L.Error(field, absl::StrCat("id ", id, " out of range"));
  return static_cast<int32_t>(id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read tokenizer file ", path));
  return FromJson(buf.str(), path);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(std::string_view text,
                                                                     std::string_view origin) {
  Loader L{std::string(origin)};
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return L.Error("(document)", "not valid JSON");
  if (!root.is_object()) return L.Error("(document)", "must be a JSON object");

  auto impl = std::make_unique<Impl>();
  impl->origin = L.origin();

  // --- model
  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) return L.Error("model", "missing object");
  const json& model = *model_it;
  ASSIGN_OR_RETURN(std::string model_type, L.OptString(model, "model", "type", "BPE"));
  if (model_type != "BPE") {
    return L.Error("model.type", absl::StrCat("unsupported model \"", model_type,
                                              "\" (only byte-level BPE is supported)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    ASSIGN_OR_RETURN(std::string v, L.OptString(model, "model", key, ""));
    if (!v.empty()) return L.Error(absl::StrCat("model.", key), "must be empty for byte-level BPE");
  }
  if (auto d = model.find("dropout");
      d != model.end() && !d->is_null() && !(d->is_number() && d->get<double>() == 0.0)) {
    return L.Error("model.dropout", "BPE dropout is not supported (must be null)");
  }
  ASSIGN_OR_RETURN(impl->ignore_merges, L.OptBool(model, "model", "ignore_merges", false));

  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return L.Error("model.vocab", "missing object {token: id}");
  }
  int64_t max_id = -1;
  impl->vocab.reserve(vocab_it->size());
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    ASSIGN_OR_RETURN(int32_t id,
                     ParseId(L, it.value(), absl::StrCat("model.vocab[\"", it.key(), "\"]")));
    impl->vocab[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }

  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return L.Error("model.merges", "missing array");
  }
  impl->merges.reserve(merges_it->size());
  auto vocab_id = [&](const std::string& token, size_t i) -> absl::StatusOr<int32_t> {
    auto it = impl->vocab.find(token);
    if (it == impl->vocab.end()) {
      return L.Error(absl::StrCat("model.merges[", i, "]"),
                     absl::StrCat("token \"", token, "\" is not in model.vocab"));
    }
    return it->second;
  };
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const json& m = (*merges_it)[i];
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return L.Error(absl::StrCat("model.merges[", i, "]"),
                       absl::StrCat("\"", s, "\" is not two tokens separated by one space"));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return L.Error(absl::StrCat("model.merges[", i, "]"), "must be \"a b\" or [\"a\", \"b\"]");
    }
    ASSIGN_OR_RETURN(int32_t ia, vocab_id(a, i));
    ASSIGN_OR_RETURN(int32_t ib, vocab_id(b, i));
    ASSIGN_OR_RETURN(int32_t inew, vocab_id(a + b, i));
    // First occurrence wins, as the rank of a duplicated merge is its first.
    impl->merges.try_emplace(PairKey(ia, ib), MergeInfo{static_cast<int32_t>(i), inew});
  }

  ASSIGN_OR_RETURN(std::string unk, L.OptString(model, "model", "unk_token", ""));
  if (!unk.empty()) {
    auto it = impl->vocab.find(unk);
    if (it == impl->vocab.end()) {
      return L.Error("model.unk_token", absl::StrCat("\"", unk, "\" is not in model.vocab"));
    }
    impl->unk_id = it->second;
  }

  // --- normalizer, pre-tokenizer, decoder
  if (auto n = root.find("normalizer"); n != root.end()) {
    absl::Status s = ParseNormalizer(L, *n, "normalizer");
    if (!s.ok()) return s;
  }
  bool byte_level = false;
  if (auto p = root.find("pre_tokenizer"); p != root.end()) {
    absl::Status s = ParsePreTokenizer(L, *p, "pre_tokenizer", &impl->pre_steps, &byte_level);
    if (!s.ok()) return s;
  }
  if (auto d = root.find("decoder"); d != root.end() && !d->is_null()) {
    ASSIGN_OR_RETURN(std::string type, L.OptString(*d, "decoder", "type", ""));
    if (type == "ByteLevel") {
      byte_level = true;
    } else {
      return L.Error("decoder.type",
                     absl::StrCat("unsupported decoder \"", type, "\" (supported: ByteLevel)"));
    }
  }
  if (!byte_level) {
    return L.Error("pre_tokenizer",
                   "no ByteLevel pre-tokenizer or decoder: only byte-level BPE "
                   "(GPT-2 / Qwen / Llama 3 family) is supported");
  }

  // --- byte maps
  std::array<uint32_t, 256> b2u = BytesToUnicode();
  impl->unicode_to_byte.fill(-1);
  for (int b = 0; b < 256; ++b) {
    impl->unicode_to_byte[b2u[b]] = b;
    AppendUtf8(b2u[b], &impl->byte_str[b]);
    auto it = impl->vocab.find(impl->byte_str[b]);
    impl->byte_id[b] = it == impl->vocab.end() ? -1 : it->second;
  }

  // --- added tokens
  if (auto a = root.find("added_tokens"); a != root.end() && !a->is_null()) {
    if (!a->is_array()) return L.Error("added_tokens", "must be an array");
    for (size_t i = 0; i < a->size(); ++i) {
      const json& t = (*a)[i];
      std::string field = absl::StrCat("added_tokens[", i, "]");
      if (!t.is_object()) return L.Error(field, "must be an object");
      AddedToken tok;
      auto id_it = t.find("id");
      if (id_it == t.end()) return L.Error(field + ".id", "missing");
      ASSIGN_OR_RETURN(tok.id, ParseId(L, *id_it, field + ".id"));
      ASSIGN_OR_RETURN(tok.content, L.OptString(t, field, "content", ""));
      if (tok.content.empty()) return L.Error(field + ".content", "missing or empty");
      ASSIGN_OR_RETURN(tok.special, L.OptBool(t, field, "special", false));
      ASSIGN_OR_RETURN(tok.lstrip, L.OptBool(t, field, "lstrip", false));
      ASSIGN_OR_RETURN(tok.rstrip, L.OptBool(t, field, "rstrip", false));
      max_id = std::max<int64_t>(max_id, tok.id);
      impl->added.push_back(std::move(tok));
    }
  }
  for (size_t i = 0; i < impl->added.size(); ++i) {
    unsigned char first = static_cast<unsigned char>(impl->added[i].content[0]);
    impl->added_by_first[first].push_back(static_cast<int32_t>(i));
  }
  for (auto& list : impl->added_by_first) {
    std::stable_sort(list.begin(), list.end(), [&](int32_t x, int32_t y) {
      return impl->added[x].content.size() > impl->added[y].content.size();
    });
  }

  // --- id tables for decoding
  impl->id_bytes.resize(max_id + 1);
  impl->id_kind.assign(max_id + 1, Impl::kUnassigned);
  for (const auto& [token, id] : impl->vocab) {
    std::string bytes;
    size_t i = 0;
    while (i < token.size()) {
      size_t start = i;
      uint32_t cp = NextCodePoint(token, &i);
      int32_t b = cp < 512 ? impl->unicode_to_byte[cp] : -1;
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        bytes.append(token, start, i - start);  // not byte-level form: keep as is
      }
    }
    if (impl->ignore_merges) impl->raw_vocab.emplace(bytes, id);
    impl->id_bytes[id] = std::move(bytes);
    impl->id_kind[id] = Impl::kVocab;
  }
  for (const AddedToken& t : impl->added) {
    impl->id_bytes[t.id] = t.content;
    impl->id_kind[t.id] = t.special ? Impl::kSpecial : Impl::kAdded;
  }

  auto tok = std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
  tok->vocab_size_ = max_id + 1;
  return tok;
}

#undef ASSIGN_OR_RETURN
#undef PMDRL_BPE_CONCAT
#undef PMDRL_BPE_CONCAT2
#undef PMDRL_ASSIGN_OR_RETURN_IMPL

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
