// Loading a BpeTokenizer from a Hugging Face tokenizer.json: the supported subset of the
// format is checked field by field (errors name the file and the field), and the
// encoding and decoding tables of BpeTokenizer::Impl are built.
#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/bpe_regex.h"
#include "common/bpe_tokenizer.h"
#include "common/bpe_tokenizer_impl.h"
#include "common/log.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using bpe::MergeInfo;
using bpe::PairKey;
using bpe::PreStep;
using bpe::Regex;
using json = nlohmann::json;

// GPT-2's pre-tokenisation pattern, used by ByteLevel with use_regex=true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// How deep Sequence normalizers / pre-tokenizers may nest. Real files nest one level (a
// Sequence of leaves); parsing them recurses, so a hostile file nested 100k deep would
// otherwise run the loader off the end of its stack.
constexpr int kMaxSequenceDepth = 32;

// Token ids size the decoding tables (one entry, about 40 bytes, per id up to the
// largest), so an id near INT32_MAX in a 100-byte file would ask for ~80 GB. Real
// vocabularies are far below this bound (Qwen2: 151,665 ids; Llama 3: 128,256; Gemma:
// 262,144).
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
// Ids may leave gaps (reserved or padded ranges), but the largest must stay below
// 2 * entries + kIdSlack: the tables then cost a small multiple of the file's own size
// (each entry takes several bytes of JSON) plus a few MB, whatever the ids claim.
constexpr int64_t kIdSlack = 65536;

// Debian's Abseil has its own string_view type, not std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

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

}  // namespace

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

absl::Status ParseNormalizer(const Loader& L, const json& n, const std::string& field,
                             int depth = 0) {
  if (n.is_null()) return absl::OkStatus();
  if (!n.is_object()) return L.Error(field, "must be an object or null");
  ASSIGN_OR_RETURN(std::string type, L.OptString(n, field, "type", ""));
  if (type == "NFC") return absl::OkStatus();  // assumed identity: see the header
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) {
      return L.Error(field, absl::StrCat("Sequence normalizers nested more than ",
                                         kMaxSequenceDepth, " deep"));
    }
    auto it = n.find("normalizers");
    if (it == n.end() || !it->is_array()) {
      return L.Error(field + ".normalizers", "must be an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s =
          ParseNormalizer(L, (*it)[i], absl::StrCat(field, ".normalizers[", i, "]"), depth + 1);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return L.Error(field + ".type",
                 absl::StrCat("unsupported normalizer \"", type, "\" (supported: null, NFC)"));
}

// Appends the steps of one pre-tokeniser; sets *byte_level when it is ByteLevel.
absl::Status ParsePreTokenizer(const Loader& L, const json& p, const std::string& field,
                               std::vector<PreStep>* steps, bool* byte_level, int depth = 0) {
  if (p.is_null()) return absl::OkStatus();
  if (!p.is_object()) return L.Error(field, "must be an object or null");
  ASSIGN_OR_RETURN(std::string type, L.OptString(p, field, "type", ""));
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) {
      return L.Error(field, absl::StrCat("Sequence pre-tokenizers nested more than ",
                                         kMaxSequenceDepth, " deep"));
    }
    auto it = p.find("pretokenizers");
    if (it == p.end() || !it->is_array()) {
      return L.Error(field + ".pretokenizers", "must be an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s =
          ParsePreTokenizer(L, (*it)[i], absl::StrCat(field, ".pretokenizers[", i, "]"), steps,
                            byte_level, depth + 1);
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

// The id of `token` (for messages) at `field`, within [0, kMaxTokenId].
absl::StatusOr<int32_t> ParseId(const Loader& L, const json& v, const std::string& field,
                                std::string_view token) {
  if (!v.is_number_integer()) return L.Error(field, "must be an integer id");
  // An unsigned id above INT64_MAX reads back negative: rejected like any negative one.
  int64_t id = v.get<int64_t>();
  if (id < 0 || id > kMaxTokenId) {
    return L.Error(field, absl::StrCat("id ", v.dump(), " of token ", QuoteUntrusted(token, 64),
                                       " is out of range [0, ", kMaxTokenId, "]"));
  }
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
  // The largest id, and where and whose it is, for the sparsity check below.
  int64_t max_id = -1;
  std::string max_id_field, max_id_token;
  auto note_id = [&](int64_t id, const std::string& field, const std::string& token) {
    if (id <= max_id) return;
    max_id = id;
    max_id_field = field;
    max_id_token = token;
  };
  impl->vocab.reserve(vocab_it->size());
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    std::string field = absl::StrCat("model.vocab[\"", it.key(), "\"]");
    ASSIGN_OR_RETURN(int32_t id, ParseId(L, it.value(), field, it.key()));
    impl->vocab[it.key()] = id;
    note_id(id, field, it.key());
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
      ASSIGN_OR_RETURN(tok.content, L.OptString(t, field, "content", ""));
      if (tok.content.empty()) return L.Error(field + ".content", "missing or empty");
      auto id_it = t.find("id");
      if (id_it == t.end()) return L.Error(field + ".id", "missing");
      ASSIGN_OR_RETURN(tok.id, ParseId(L, *id_it, field + ".id", tok.content));
      ASSIGN_OR_RETURN(tok.special, L.OptBool(t, field, "special", false));
      ASSIGN_OR_RETURN(tok.lstrip, L.OptBool(t, field, "lstrip", false));
      ASSIGN_OR_RETURN(tok.rstrip, L.OptBool(t, field, "rstrip", false));
      note_id(tok.id, field + ".id", tok.content);
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

  // --- id tables for decoding, sized by the largest id: check it is not far beyond what
  // the entries need before allocating (see kIdSlack).
  const int64_t entries = static_cast<int64_t>(impl->vocab.size() + impl->added.size());
  if (max_id >= 2 * entries + kIdSlack) {
    return L.Error(
        max_id_field,
        absl::StrCat("id ", max_id, " of token ", QuoteUntrusted(max_id_token, 64),
                     " is far beyond the ", entries,
                     " entries of the file (ids must stay below 2 * entries + ", kIdSlack, ")"));
  }
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

}  // namespace pmdrl
