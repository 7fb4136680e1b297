// Hostile tokenizer.json files (issue 15): ids that would size the id tables in
// gigabytes and Sequence nesting deep enough to overflow the stack must come back as
// errors, not crashes. Documents are written as text, not built with nlohmann::json,
// because dumping a deeply nested json would itself recurse.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/bpe_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

// A minimal loadable tokenizer.json: `vocab` and `added` are the JSON texts of
// model.vocab and added_tokens; `extra` is spliced in as more top-level members.
std::string Doc(const std::string& vocab, const std::string& added = "[]",
                const std::string& extra = "") {
  return R"({"model": {"type": "BPE", "vocab": )" + vocab +
         R"(, "merges": []}, "decoder": {"type": "ByteLevel"}, "added_tokens": )" + added + extra +
         "}";
}

std::string LoadError(const std::string& text) {
  auto tok = BpeTokenizer::FromJson(text, "hostile.json");
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? "" : std::string(tok.status().message());
}

TEST(BpeTokenizerLimitsTest, MinimalDocumentLoads) {
  auto tok = BpeTokenizer::FromJson(Doc(R"({"a": 0, "b": 1})"), "ok.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->TokenToId("b"), 1);
}

TEST(BpeTokenizerLimitsTest, VocabIdNearInt32MaxIsRejected) {
  const std::string msg = LoadError(Doc(R"({"a": 0, "huge": 2147483646})"));
  EXPECT_THAT(msg, HasSubstr("hostile.json"));
  EXPECT_THAT(msg, HasSubstr("2147483646"));
  EXPECT_THAT(msg, HasSubstr("huge"));
}

TEST(BpeTokenizerLimitsTest, AddedTokenIdNearInt32MaxIsRejected) {
  const std::string msg =
      LoadError(Doc(R"({"a": 0})", R"([{"id": 2147483000, "content": "<evil>"}])"));
  EXPECT_THAT(msg, HasSubstr("added_tokens[0]"));
  EXPECT_THAT(msg, HasSubstr("2147483000"));
  EXPECT_THAT(msg, HasSubstr("<evil>"));
}

TEST(BpeTokenizerLimitsTest, NegativeIdsAreRejected) {
  EXPECT_THAT(LoadError(Doc(R"({"a": 0, "neg": -5})")), HasSubstr("-5"));
  EXPECT_THAT(LoadError(Doc(R"({"a": 0})", R"([{"id": -1, "content": "<neg>"}])")),
              HasSubstr("<neg>"));
}

// Below the absolute cap but far beyond what two entries need: an 8M-entry table
// (hundreds of MB) for a 100-byte file.
TEST(BpeTokenizerLimitsTest, IdFarBeyondTheEntryCountIsRejected) {
  const std::string msg = LoadError(Doc(R"({"a": 0, "sparse": 8388608})"));
  EXPECT_THAT(msg, HasSubstr("8388608"));
  EXPECT_THAT(msg, HasSubstr("sparse"));
  EXPECT_THAT(LoadError(Doc(R"({"a": 0})", R"([{"id": 8388608, "content": "<far>"}])")),
              HasSubstr("<far>"));
}

// Real tokenizers leave gaps (reserved ranges, padded vocabularies): a modest gap loads.
TEST(BpeTokenizerLimitsTest, ModestIdGapsStillLoad) {
  auto tok = BpeTokenizer::FromJson(
      Doc(R"({"a": 0, "b": 1})", R"([{"id": 60000, "content": "<|end|>", "special": true}])"),
      "gap.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->TokenToId("<|end|>"), 60000);
}

// {"type": "Sequence", "<key>": [ ... depth times ... {"type": "NFC"} ... ]}
std::string NestedSequence(const char* key, const char* leaf, int depth) {
  std::string open = std::string(R"({"type": "Sequence", ")") + key + R"(": [)";
  std::string out;
  out.reserve((open.size() + 2) * depth + 64);
  for (int i = 0; i < depth; ++i) out += open;
  out += leaf;
  for (int i = 0; i < depth; ++i) out += "]}";
  return out;
}

TEST(BpeTokenizerLimitsTest, DeeplyNestedNormalizersAreRejected) {
  const std::string doc =
      Doc(R"({"a": 0})", "[]",
          ", \"normalizer\": " + NestedSequence("normalizers", R"({"type": "NFC"})", 100000));
  const std::string msg = LoadError(doc);
  EXPECT_THAT(msg, HasSubstr("normalizer"));
  EXPECT_THAT(msg, HasSubstr("nested"));
}

TEST(BpeTokenizerLimitsTest, DeeplyNestedPreTokenizersAreRejected) {
  const std::string doc =
      Doc(R"({"a": 0})", "[]",
          ", \"pre_tokenizer\": " +
              NestedSequence("pretokenizers", R"({"type": "ByteLevel"})", 100000));
  const std::string msg = LoadError(doc);
  EXPECT_THAT(msg, HasSubstr("pre_tokenizer"));
  EXPECT_THAT(msg, HasSubstr("nested"));
}

TEST(BpeTokenizerLimitsTest, ShallowSequencesStillLoad) {
  const std::string doc = Doc(
      R"({"a": 0})", "[]",
      ", \"normalizer\": " + NestedSequence("normalizers", R"({"type": "NFC"})", 8) +
          ", \"pre_tokenizer\": " + NestedSequence("pretokenizers", R"({"type": "ByteLevel"})", 8));
  auto tok = BpeTokenizer::FromJson(doc, "shallow.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
}

// nlohmann::json parses iteratively and (3.10+) destroys iteratively; these pin that
// down for the documents our loader sees, from memory and from a file.
TEST(BpeTokenizerLimitsTest, DeeplyNestedJsonElsewhereDoesNotCrash) {
  const int kDepth = 100000;
  std::string arrays(kDepth, '[');
  arrays.append(kDepth, ']');
  EXPECT_THAT(LoadError(arrays), HasSubstr("must be a JSON object"));
  // Unparsable (unclosed) deep input.
  EXPECT_THAT(LoadError(std::string(kDepth, '[')), HasSubstr("not valid JSON"));
  // A deep member the loader never looks into: loads.
  const std::string doc = Doc(R"({"a": 0})", "[]", ", \"post_processor\": " + arrays);
  auto tok = BpeTokenizer::FromJson(doc, "deep.json");
  EXPECT_TRUE(tok.ok()) << tok.status();

  const std::filesystem::path path =
      std::filesystem::path(testing::TempDir()) / "deep_tokenizer.json";
  {
    std::ofstream out(path, std::ios::binary);
    out << Doc(R"({"a": 0})", "[]",
               ", \"normalizer\": " + NestedSequence("normalizers", R"({"type": "NFC"})", kDepth));
  }
  auto from_file = BpeTokenizer::FromFile(path.string());
  ASSERT_FALSE(from_file.ok());
  EXPECT_THAT(from_file.status().message(), HasSubstr("nested"));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pmdrl
