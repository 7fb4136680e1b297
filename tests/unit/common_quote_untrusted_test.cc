// QuoteUntrusted (common/log.h): how log lines quote text that came from a peer.
#include <string>

#include "common/log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;

TEST(QuoteUntrustedTest, PlainTextIsQuotedAsIs) {
  EXPECT_EQ(QuoteUntrusted("actor-3"), "\"actor-3\"");
  EXPECT_EQ(QuoteUntrusted(""), "\"\"");
  EXPECT_EQ(QuoteUntrusted("x = 1/2 ✓ π"), "\"x = 1/2 ✓ π\"");
}

TEST(QuoteUntrustedTest, ControlCharactersQuotesAndBackslashesAreEscaped) {
  EXPECT_EQ(QuoteUntrusted("a\nb\r\tc"), R"("a\nb\r\tc")");
  // A forged log line or a terminal escape sequence stays on one inert line.
  EXPECT_EQ(QuoteUntrusted("ok\n[error] fake\x1b[2J"), R"("ok\n[error] fake\x1b[2J")");
  EXPECT_EQ(QuoteUntrusted(std::string("nul\0byte\x7f", 9)), R"("nul\x00byte\x7f")");
  EXPECT_EQ(QuoteUntrusted("say \"hi\" \\o/"), R"("say \"hi\" \\o/")");
}

TEST(QuoteUntrustedTest, InvalidUtf8AndC1ControlsAreEscaped) {
  EXPECT_EQ(QuoteUntrusted("a\xff\xc3z"), R"("a\xff\xc3z")");
  // U+009B (CSI as a C1 control) encoded in UTF-8.
  EXPECT_EQ(QuoteUntrusted("a\xc2\x9b"
                           "31m"),
            R"("a\xc2\x9b31m")");
}

TEST(QuoteUntrustedTest, LongTextIsCutAndTheTotalLengthShown) {
  const std::string long_text(1000, 'x');
  const std::string q = QuoteUntrusted(long_text);
  EXPECT_EQ(q, "\"" + std::string(200, 'x') + "\"... (1000 bytes)");
  // Exactly at the limit: whole, no marker.
  EXPECT_EQ(QuoteUntrusted(std::string(200, 'y')), "\"" + std::string(200, 'y') + "\"");
  EXPECT_EQ(QuoteUntrusted("abcdef", 3), "\"abc\"... (6 bytes)");
}

TEST(QuoteUntrustedTest, CutNeverSplitsAUtf8Sequence) {
  std::string accents;
  for (int i = 0; i < 150; ++i) accents += "é";  // 2 bytes each
  const std::string q = QuoteUntrusted(accents, 201);
  std::string kept;
  for (int i = 0; i < 100; ++i) kept += "é";
  EXPECT_EQ(q, "\"" + kept + "\"... (300 bytes)");
}

TEST(QuoteUntrustedTest, EscapesDoNotLetOutputGrowWithoutBound) {
  const std::string q = QuoteUntrusted(std::string(100000, '\n'));
  EXPECT_THAT(q, StartsWith("\"\\n\\n"));
  EXPECT_THAT(q, EndsWith("\"... (100000 bytes)"));
  EXPECT_LE(q.size(), 2 * 200 + 32u);
}

}  // namespace
}  // namespace pmdrl
