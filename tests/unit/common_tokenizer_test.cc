#include <string>
#include <vector>

#include "common/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CharTokenizerTest, FixedIds) {
  CharTokenizer tok;
  EXPECT_EQ(tok.VocabSize(), 17);
  EXPECT_EQ(tok.PadId(), 0);
  EXPECT_EQ(tok.BosId(), 1);
  EXPECT_EQ(tok.EosId(), 2);
  EXPECT_THAT(tok.Encode("0123456789"), ElementsAre(3, 4, 5, 6, 7, 8, 9, 10, 11, 12));
  EXPECT_THAT(tok.Encode("+-*="), ElementsAre(13, 14, 15, 16));
  EXPECT_THAT(tok.Encode("012+345="), ElementsAre(3, 4, 5, 13, 6, 7, 8, 16));
  EXPECT_TRUE(tok.Encode("").empty());
}

TEST(CharTokenizerTest, RoundTrip) {
  CharTokenizer tok;
  for (const std::string text : {"", "0", "999*999=998001", "-12", "000+000=", "1-2*3+4=5"}) {
    std::vector<int32_t> ids = tok.Encode(text);
    ASSERT_EQ(ids.size(), text.size()) << text;
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), text);
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/false), text);
  }
}

TEST(CharTokenizerTest, AllIdsRoundTrip) {
  CharTokenizer tok;
  for (int32_t id = 3; id < 17; ++id) {
    std::string text = tok.Decode({id}, true);
    ASSERT_EQ(text.size(), 1u) << id;
    EXPECT_THAT(tok.Encode(text), ElementsAre(id));
  }
}

TEST(CharTokenizerTest, DecodeSpecials) {
  CharTokenizer tok;
  std::vector<int32_t> ids = {1, 4, 13, 5, 16, 6, 2, 0, 0};
  EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), "1+2=3");
  EXPECT_EQ(tok.Decode(ids, /*skip_special=*/false), "<bos>1+2=3<eos><pad><pad>");
  // Out-of-range ids are visible, never silently dropped.
  EXPECT_EQ(tok.Decode({3, 17, -1}, true), "0<unk:17><unk:-1>");
}

TEST(CharTokenizerTest, UnknownCharacters) {
  CharTokenizer tok;
  // Encode skips what it cannot map ...
  EXPECT_THAT(tok.Encode("1 + x2"), ElementsAre(4, 13, 5));
  // ... EncodeChecked names the character and its offset.
  absl::StatusOr<std::vector<int32_t>> bad = tok.EncodeChecked("12+3x=");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("'x'"));
  EXPECT_THAT(bad.status().message(), HasSubstr("offset 4"));

  absl::StatusOr<std::vector<int32_t>> nonprint = tok.EncodeChecked(std::string("1\n2"));
  ASSERT_FALSE(nonprint.ok());
  EXPECT_THAT(nonprint.status().message(), HasSubstr("0x0a"));
  EXPECT_THAT(nonprint.status().message(), HasSubstr("offset 1"));

  absl::StatusOr<std::vector<int32_t>> high = tok.EncodeChecked("\xff");
  ASSERT_FALSE(high.ok());
  EXPECT_THAT(high.status().message(), HasSubstr("0xff"));

  absl::StatusOr<std::vector<int32_t>> good = tok.EncodeChecked("12+34=");
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, tok.Encode("12+34="));
}

TEST(CharTokenizerTest, UsableThroughInterface) {
  CharTokenizer concrete;
  const Tokenizer& tok = concrete;
  EXPECT_EQ(tok.Decode(tok.Encode("7*8=56"), true), "7*8=56");
}

}  // namespace
}  // namespace pmdrl
