#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/bpe_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr char kQwenPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> code point map, written out independently of the implementation.
std::string ByteChar(unsigned char b) {
  auto direct = [](int x) {
    return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
  };
  uint32_t cp = b;
  if (!direct(b)) {
    cp = 256;
    for (int x = 0; x < b; ++x) cp += direct(x) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// A tiny Qwen-style tokenizer.json: ids 0..255 are the bytes (id == byte value), then
// merged tokens, then added tokens.
json TinyTokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(static_cast<unsigned char>(b))] = b;
  // merge list (as [a, b] pairs) in rank order; each result gets the next id.
  std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},   {"he", "ll"},  {"hell", "o"},  {"Ġ", "w"},
      {"o", "r"}, {"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"}, {"Ġ", "Ġ"},
      {"a", "a"}, {"aa", "aa"}, {"x", "y"},    {"y", "z"},     {"Ġ", "b"}};
  json merge_list = json::array();
  int32_t next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back(json::array({a, b}));
  }
  vocab["abc"] = next++;  // reachable only with ignore_merges
  json j;
  j["version"] = "1.0";
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Split"},
                                                        {"pattern", {{"Regex", kQwenPattern}}},
                                                        {"behavior", "Isolated"},
                                                        {"invert", false}},
                                                       {{"type", "ByteLevel"},
                                                        {"add_prefix_space", false},
                                                        {"trim_offsets", false},
                                                        {"use_regex", false}}})}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  j["model"] = {{"type", "BPE"},          {"dropout", nullptr},     {"unk_token", nullptr},
                {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab},
                {"merges", merge_list}};
  j["added_tokens"] = json::array({{{"id", 300}, {"content", "<|end|>"}, {"special", true}},
                                   {{"id", 301}, {"content", "<|end|>!"}, {"special", true}},
                                   {{"id", 302}, {"content", "<tool>"}, {"special", false}}});
  return j;
}

std::unique_ptr<BpeTokenizer> Load(const json& j) {
  auto tok = BpeTokenizer::FromJson(j.dump(), "tiny.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

int32_t Id(const BpeTokenizer& tok, const std::string& token) {
  int32_t id = tok.TokenToId(token);
  EXPECT_GE(id, 0) << token;
  return id;
}

TEST(BpeTokenizerTest, AppliesMergesInRankOrder) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hello"), ElementsAre(Id(*tok, "hello")));
  EXPECT_THAT(tok->Encode("hello world"), ElementsAre(Id(*tok, "hello"), Id(*tok, "Ġworld")));
  // "x y" (rank 12) beats "y z" (rank 13).
  EXPECT_THAT(tok->Encode("xyz"), ElementsAre(Id(*tok, "xy"), 'z'));
  // Equal ranks merge left to right: "aaa" -> "aa" "a", "aaaaa" -> "aaaa" "a".
  EXPECT_THAT(tok->Encode("aaa"), ElementsAre(Id(*tok, "aa"), 'a'));
  EXPECT_THAT(tok->Encode("aaaaa"), ElementsAre(Id(*tok, "aaaa"), 'a'));
  // Merges accepted as "a b" strings too.
  json j = TinyTokenizer();
  for (json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  auto tok2 = Load(j);
  ASSERT_NE(tok2, nullptr);
  EXPECT_EQ(tok2->Encode("hello world xyz aaaaa"), tok->Encode("hello world xyz aaaaa"));
  EXPECT_TRUE(tok->Encode("").empty());
}

TEST(BpeTokenizerTest, PreTokenizerSplitsBeforeMerging) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  // Qwen's pattern: "a   b" -> "a", "  " (\s+(?!\S)), " b"; "ĠĠ" and "Ġb" are merges,
  // and no merge crosses a piece boundary.
  EXPECT_THAT(tok->Encode("a   b"), ElementsAre('a', Id(*tok, "ĠĠ"), Id(*tok, "Ġb")));
  // Digits are single pieces; "1" and "2" are never merged even if adjacent.
  EXPECT_THAT(tok->Encode("12"), ElementsAre('1', '2'));
  EXPECT_EQ(tok->CountPreTokens("I'm here, 42!\n\n"), 8u);  // I 'm Ġhere , Ġ 4 2 !\n\n
}

TEST(BpeTokenizerTest, CharactersWithoutATokenFallBackToByteTokens) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("é"), ElementsAre(0xC3, 0xA9));
  EXPECT_THAT(tok->Encode("😀"), ElementsAre(0xF0, 0x9F, 0x98, 0x80));
  EXPECT_THAT(tok->Encode("\t"), ElementsAre('\t'));
  // Invalid UTF-8 is encoded byte by byte rather than rejected or dropped.
  std::string bad =
      "a\xff\xfe"
      "b";
  EXPECT_THAT(tok->Encode(bad), ElementsAre('a', 0xFF, 0xFE, 'b'));
  EXPECT_EQ(tok->DecodeBytes(tok->Encode(bad), false), bad);
}

TEST(BpeTokenizerTest, AddedTokensSplitTheInputLongestFirst) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hello<|end|>hello"),
              ElementsAre(Id(*tok, "hello"), 300, Id(*tok, "hello")));
  EXPECT_THAT(tok->Encode("<|end|>!<|end|>"), ElementsAre(301, 300));
  EXPECT_THAT(tok->Encode("x<tool>y"), ElementsAre('x', 302, 'y'));
  // Untrusted text: special tokens are plain text, non-special added tokens still match.
  std::vector<int32_t> plain = tok->Encode("<|end|><tool>", /*allow_special=*/false);
  ASSERT_FALSE(plain.empty());
  EXPECT_EQ(plain.back(), 302);
  for (int32_t id : plain) EXPECT_NE(id, 300);
  EXPECT_EQ(tok->Decode(plain, false), "<|end|><tool>");
  EXPECT_EQ(tok->TokenToId("<|end|>"), 300);
  EXPECT_TRUE(tok->IsSpecial(300));
  EXPECT_FALSE(tok->IsSpecial(302));
  EXPECT_EQ(tok->VocabSize(), 303);
  EXPECT_EQ(tok->AddedTokens().size(), 3u);
}

TEST(BpeTokenizerTest, LstripAndRstripSwallowWhitespace) {
  json j = TinyTokenizer();
  j["added_tokens"][0]["lstrip"] = true;
  j["added_tokens"][0]["rstrip"] = true;
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("a  <|end|> \nb"), ElementsAre('a', 300, 'b'));
}

TEST(BpeTokenizerTest, DecodeRoundTripsAndHandlesSpecialAndUnknownIds) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  for (const std::string s :
       {"", "hello world", "a   b\n\n\tc", "naïve café 😀👩‍👩‍👧",
        "<|end|>hello<tool>", "   ", "\r\n", "中文 العربية हिन्दी кириллица", "It's 2024!! don't"}) {
    EXPECT_EQ(tok->Decode(tok->Encode(s), false), s) << s;
  }
  std::vector<int32_t> ids = tok->Encode("hi<|end|><tool>");
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/true), "hi<tool>");
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/false), "hi<|end|><tool>");
  // 280..299 are inside the id range but unassigned; 999 and -5 are outside it.
  EXPECT_EQ(tok->Decode({'a', 290, 999, -5}, true), "a<unk:290><unk:999><unk:-5>");
  // A cut UTF-8 sequence becomes U+FFFD in Decode, stays raw in DecodeBytes.
  EXPECT_EQ(tok->Decode({0xC3, 'x'}, false), "\xEF\xBF\xBDx");
  EXPECT_EQ(tok->DecodeBytes({0xC3}, false), "\xC3");
}

TEST(BpeTokenizerTest, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  json j = TinyTokenizer();
  auto plain = Load(j);
  ASSERT_NE(plain, nullptr);
  EXPECT_THAT(plain->Encode("abc"), ElementsAre('a', 'b', 'c'));
  j["model"]["ignore_merges"] = true;
  auto ignoring = Load(j);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_THAT(ignoring->Encode("abc"), ElementsAre(Id(*ignoring, "abc")));
}

TEST(BpeTokenizerTest, Gpt2ByteLevelWithRegex) {
  json j = TinyTokenizer();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["normalizer"] = nullptr;
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  // GPT-2 keeps digit runs together (" ?\p{N}+") and its "'s" is case-sensitive.
  EXPECT_EQ(tok->CountPreTokens("12345 abc's"), 3u);  // 12345 Ġabc 's
  EXPECT_EQ(tok->CountPreTokens("ABC'S"), 3u);        // ABC ' S
  EXPECT_THAT(tok->Encode("hello world"), ElementsAre(Id(*tok, "hello"), Id(*tok, "Ġworld")));
  j["pre_tokenizer"]["add_prefix_space"] = true;
  auto prefixed = Load(j);
  ASSERT_NE(prefixed, nullptr);
  EXPECT_THAT(prefixed->Encode("world"), ElementsAre(Id(*prefixed, "Ġworld")));
}

TEST(BpeTokenizerTest, LongInputsAreNotQuadratic) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  // 200k letters form one pre-token: the heap merge handles it in O(n log n).
  std::string s(200000, 'a');
  std::vector<int32_t> ids = tok->Encode(s);
  ASSERT_EQ(ids.size(), 50000u);
  EXPECT_EQ(ids[0], Id(*tok, "aaaa"));
  EXPECT_EQ(tok->Decode(ids, false), s);
  std::string spaces(100000, ' ');
  EXPECT_EQ(tok->Decode(tok->Encode(spaces + "x"), false), spaces + "x");
}

TEST(BpeTokenizerTest, ConcurrentEncodesAgree) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  std::string text;
  for (int i = 0; i < 300; ++i) text += "hello world " + std::to_string(i) + " xyz aaa\n";
  const std::vector<int32_t> expected = tok->Encode(text);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < 20; ++r) got[t] = tok->Encode(text);
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, expected);
}

TEST(BpeTokenizerTest, BosEosPadDefaultToNoneAndCanBeSet) {
  auto tok = Load(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->BosId(), -1);
  EXPECT_EQ(tok->EosId(), -1);
  EXPECT_EQ(tok->PadId(), -1);
  tok->SetEosId(300);
  EXPECT_EQ(tok->EosId(), 300);
}

std::string LoadError(const json& j) {
  auto tok = BpeTokenizer::FromJson(j.dump(), "bad.json");
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? "" : std::string(tok.status().message());
}

TEST(BpeTokenizerTest, BadInputsGiveErrorsNamingTheField) {
  {
    auto tok = BpeTokenizer::FromJson("{not json", "broken.json");
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(tok.status().message(), HasSubstr("broken.json"));
    EXPECT_THAT(tok.status().message(), HasSubstr("not valid JSON"));
  }
  json j = TinyTokenizer();
  j.erase("model");
  EXPECT_THAT(LoadError(j), HasSubstr("bad.json: model"));

  j = TinyTokenizer();
  j["model"]["merges"][1] = json::array({"q", "zz"});
  EXPECT_THAT(LoadError(j), HasSubstr("model.merges[1]: token \"zz\" is not in model.vocab"));

  j = TinyTokenizer();
  j["model"]["merges"][2] = "he ll o";
  EXPECT_THAT(LoadError(j), HasSubstr("model.merges[2]"));

  j = TinyTokenizer();
  j["model"]["vocab"]["h"] = "seven";
  EXPECT_THAT(LoadError(j), HasSubstr("model.vocab[\"h\"]"));

  j = TinyTokenizer();
  j["model"]["type"] = "Unigram";
  EXPECT_THAT(LoadError(j), HasSubstr("model.type"));

  j = TinyTokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(LoadError(j), HasSubstr("normalizer.type"));

  j = TinyTokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  EXPECT_THAT(LoadError(j), HasSubstr("pre_tokenizer.pretokenizers[0].behavior"));

  j = TinyTokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_THAT(LoadError(j), HasSubstr("pre_tokenizer.pretokenizers[0].pattern"));

  j = TinyTokenizer();
  j["added_tokens"][1].erase("id");
  EXPECT_THAT(LoadError(j), HasSubstr("added_tokens[1].id"));

  j = TinyTokenizer();
  j["pre_tokenizer"] = nullptr;
  j["decoder"] = nullptr;
  EXPECT_THAT(LoadError(j), HasSubstr("byte-level"));

  auto missing = BpeTokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/dir/tokenizer.json"));
}

TEST(BpeTokenizerTest, FromFileReadsTheFile) {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("bpe_test_" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(path);
    out << TinyTokenizer().dump();
  }
  auto tok = BpeTokenizer::FromFile(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("hello"), ElementsAre((*tok)->TokenToId("hello")));
}

}  // namespace
}  // namespace pmdrl
