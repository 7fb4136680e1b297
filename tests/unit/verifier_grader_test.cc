#include <chrono>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "verifier/answer_extract.h"
#include "verifier/grader.h"
#include "verifier/latex_normalize.h"
#include "verifier/symbolic_equal.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

struct Case {
  const char* task;
  std::string response;
  std::string reference;
  Verdict want;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.task << ": \"" << c.response.substr(0, 80) << "\" vs \"" << c.reference << "\"";
}

std::vector<Case> Cases() {
  return {
      // arith: exactly an integer, compared as integers.
      {"arith", "357", "357", Verdict::kCorrect},
      {"arith", "-12", "-12", Verdict::kCorrect},
      {"arith", "0357", "357", Verdict::kCorrect},  // leading zeros: same integer
      {"arith", "-0", "0", Verdict::kCorrect},
      {"arith", "358", "357", Verdict::kIncorrect},
      {"arith", "12", "-12", Verdict::kIncorrect},
      {"arith", "", "357", Verdict::kParseError},
      {"arith", "-", "357", Verdict::kParseError},
      {"arith", "35+7", "357", Verdict::kParseError},
      {"arith", " 357", "357", Verdict::kParseError},
      {"arith", "+357", "357", Verdict::kParseError},
      {"arith", "3.0", "3", Verdict::kParseError},
      {"arith", std::string(3000, '9'), std::string(3000, '9'), Verdict::kCorrect},
      {"arith", std::string(3000, '9') + "8", std::string(3000, '9') + "9", Verdict::kIncorrect},
      // math: equivalent forms of one half.
      {"math", "so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", Verdict::kCorrect},
      {"math", "\\boxed{0.5}", "\\frac{1}{2}", Verdict::kCorrect},
      {"math", "\\boxed{1/2}", "\\frac{1}{2}", Verdict::kCorrect},
      {"math", "\\boxed{\\dfrac12}", "\\frac{1}{2}", Verdict::kCorrect},
      {"math", "\\boxed{\\tfrac{1}2}", "0.5", Verdict::kCorrect},
      {"math", "\\boxed{.5}", "1/2", Verdict::kCorrect},
      {"math", "\\boxed{5e-1}", "\\frac12", Verdict::kCorrect},
      {"math", "\\boxed{5\\times10^{-1}}", "0.5", Verdict::kCorrect},
      {"math", "\\boxed{0.333}", "\\frac{1}{3}", Verdict::kIncorrect},  // close, not equal
      {"math", "\\boxed{0.3333333333}", "\\frac{1}{3}", Verdict::kCorrect},
      {"math", "\\boxed{1000001}", "1000000", Verdict::kIncorrect},  // integers: exact
      // extraction
      {"math", "first \\boxed{3}, then \\boxed{4}", "4", Verdict::kCorrect},
      {"math", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", Verdict::kCorrect},
      {"math", "\\boxed{{{7}}}", "{{7}}", Verdict::kCorrect},
      {"math", "\\boxed {42} and \\boxed{unbalanced", "42", Verdict::kCorrect},
      {"math", "\\fbox{9}", "9", Verdict::kCorrect},
      {"math", "Work...\nAnswer: 42\n", "42", Verdict::kCorrect},
      {"math", "**Final Answer:** $x = 7$.", "7", Verdict::kCorrect},
      {"math", "answer: 1\nANSWER: 2", "2", Verdict::kCorrect},
      {"math", "Answer:\n\n  -3", "-3", Verdict::kCorrect},
      {"math", "Answer: 42 \\boxed{41}", "42", Verdict::kIncorrect},  // boxed wins
      {"math", "The answer is 42.", "42", Verdict::kCorrect},
      {"math", "The answer is 42. Because 6*7.", "42", Verdict::kCorrect},
      {"math", "I think so.", "42", Verdict::kParseError},
      {"math", "\\boxed{}", "42", Verdict::kParseError},
      {"math", "", "42", Verdict::kParseError},
      // normalisation
      {"math", "\\boxed{1,000}", "1000", Verdict::kCorrect},
      {"math", "\\boxed{1{,}234{,}567.5}", "1234567.5", Verdict::kCorrect},
      {"math", "\\boxed{1\\,000}", "1000", Verdict::kCorrect},
      {"math", "\\boxed{1,2}", "12", Verdict::kIncorrect},  // a pair, not a thousand
      {"math", "\\boxed{50\\%}", "50", Verdict::kCorrect},
      {"math", "\\boxed{50\\%}", "50\\%", Verdict::kCorrect},
      {"math", "\\boxed{30^\\circ}", "30", Verdict::kCorrect},
      {"math", "\\boxed{30^{\\circ}}", "30^\\circ", Verdict::kCorrect},
      {"math", "\\boxed{10\\text{ cm}}", "10", Verdict::kCorrect},
      {"math", "\\boxed{\\text{(B)}}", "(B)", Verdict::kCorrect},
      {"math", "\\boxed{\\left( 3, -\\frac{1}{2} \\right)}", "(3,-0.5)", Verdict::kCorrect},
      {"math", "\\boxed{[1, 2)}", "(1,2)", Verdict::kIncorrect},  // intervals differ
      {"math", "\\boxed{(1,2)}", "(2,1)", Verdict::kIncorrect},
      {"math", "\\boxed{\\$5.}", "5", Verdict::kCorrect},
      {"math", "\\boxed{-\\frac{3}{4}}", "-0.75", Verdict::kCorrect},
      {"math", "\\boxed{\\frac{-3}{4}}", "-\\dfrac34", Verdict::kCorrect},
      {"math", "\\boxed{-7}", "7", Verdict::kIncorrect},
      {"math", "\\boxed{-1,000}", "-1000", Verdict::kCorrect},
      {"math", "\\boxed{2\\!\\cdot\\!10^{3}}", "2000", Verdict::kCorrect},
      {"math", "\\boxed{1.5E3}", "1500", Verdict::kCorrect},
      {"math", "\\boxed{\\frac{2}{0}}", "1", Verdict::kIncorrect},
      {"math", "\\boxed{\\pi}", "\\pi", Verdict::kCorrect},
      {"math", "\\boxed{3.1416}", "\\pi", Verdict::kIncorrect},  // 2e-6 relative: too far
      {"math", "\\boxed{3.14159265}", "\\pi", Verdict::kCorrect},
      {"math", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", Verdict::kCorrect},
      // a reference that is a whole solution
      {"math", "\\boxed{6}", "so the total is $\\boxed{6}$.", Verdict::kCorrect},
  };
}

TEST(GraderTest, Table) {
  for (const Case& c : Cases()) {
    absl::StatusOr<Grader> grader = GraderForTask(c.task);
    ASSERT_TRUE(grader.ok());
    GradeResult r = (*grader)(c.response, c.reference, Deadline::Infinite());
    EXPECT_EQ(VerdictName(r.verdict), VerdictName(c.want))
        << ::testing::PrintToString(c) << "\n  extracted: " << r.extracted.substr(0, 80)
        << "\n  normalized: " << r.normalized_answer.substr(0, 80) << " | "
        << r.normalized_reference.substr(0, 80);
  }
}

TEST(GraderTest, ResultFields) {
  GradeResult r = GradeMath("we get \\boxed{\\dfrac12}.", "0.5", Deadline::Infinite());
  EXPECT_EQ(r.verdict, Verdict::kCorrect);
  EXPECT_EQ(r.extracted, "\\dfrac12");
  EXPECT_EQ(r.normalized_answer, "\\frac{1}{2}");
  EXPECT_EQ(r.normalized_reference, "0.5");

  GradeResult nested = GradeMath("\\boxed{\\frac{\\frac12}{3}}", "x", Deadline::Infinite());
  EXPECT_EQ(nested.normalized_answer, "\\frac{\\frac{1}{2}}{3}");

  GradeResult a = GradeArith("-0012", "-12", Deadline::Infinite());
  EXPECT_EQ(a.verdict, Verdict::kCorrect);
  EXPECT_EQ(a.extracted, "-0012");
  EXPECT_EQ(a.normalized_answer, "-12");
  EXPECT_EQ(a.normalized_reference, "-12");

  GradeResult bad_ref = GradeArith("12", "twelve", Deadline::Infinite());
  EXPECT_EQ(bad_ref.verdict, Verdict::kParseError);
  EXPECT_EQ(bad_ref.normalized_reference, "");
}

TEST(GraderTest, Names) {
  EXPECT_EQ(VerdictName(Verdict::kCorrect), "correct");
  EXPECT_EQ(VerdictName(Verdict::kIncorrect), "incorrect");
  EXPECT_EQ(VerdictName(Verdict::kParseError), "parse_error");
  EXPECT_EQ(VerdictName(Verdict::kTimeout), "timeout");
  absl::StatusOr<Grader> unknown = GraderForTask("chess");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("chess"));
}

TEST(GraderTest, HugeInputIsParseError) {
  std::string huge(1 << 20, '1');  // 1 MB
  EXPECT_EQ(GradeArith(huge, "1", Deadline::Infinite()).verdict, Verdict::kParseError);
  EXPECT_EQ(GradeMath("\\boxed{" + huge + "}", "1", Deadline::Infinite()).verdict,
            Verdict::kParseError);
  EXPECT_EQ(GradeMath("\\boxed{1}", huge, Deadline::Infinite()).verdict, Verdict::kParseError);
  // Just under the cap is graded normally.
  std::string big(kMaxGradeInputBytes - 2, ' ');
  EXPECT_EQ(GradeMath(big + "\\boxed{1}", "1", Deadline::Infinite()).verdict,
            Verdict::kParseError);  // over the cap by the boxed part
  EXPECT_EQ(GradeMath(std::string(60000, ' ') + "\\boxed{1}", "1", Deadline::Infinite()).verdict,
            Verdict::kCorrect);
}

TEST(GraderTest, DeeplyNestedBracesFailCleanly) {
  const int depth = 10000;
  std::string nested = std::string(depth, '{') + "1" + std::string(depth, '}');
  GradeResult r = GradeMath("\\boxed{" + nested + "}", "1", Deadline::Infinite());
  EXPECT_EQ(r.verdict, Verdict::kIncorrect);
  EXPECT_EQ(r.extracted.size(), nested.size());
  // Unbalanced: no boxed answer at all.
  GradeResult open =
      GradeMath("\\boxed{" + std::string(depth, '{') + "1", "1", Deadline::Infinite());
  EXPECT_EQ(open.verdict, Verdict::kParseError);
  // Nested \frac and \text, 4000 deep (60 KB, just under the cap).
  std::string fracs;
  for (int i = 0; i < 4000; ++i) fracs += "\\frac{\\text{";
  fracs += "1";
  for (int i = 0; i < 4000; ++i) fracs += "}}2";
  GradeResult f = GradeMath("\\boxed{" + fracs + "}", "1", Deadline::Infinite());
  EXPECT_EQ(f.verdict, Verdict::kIncorrect);
  // Many \boxed openings: still linear (this would be quadratic with re-scanning).
  std::string many;
  for (int i = 0; i < 8000; ++i) many += "\\boxed{";
  EXPECT_EQ(GradeMath(many, "1", Deadline::Infinite()).verdict, Verdict::kParseError);
}

TEST(GraderTest, ThousandsOfDigitsFailCleanly) {
  std::string digits(5000, '7');
  EXPECT_EQ(GradeMath("\\boxed{" + digits + "}", digits, Deadline::Infinite()).verdict,
            Verdict::kCorrect);
  EXPECT_EQ(GradeMath("\\boxed{" + digits + "}", digits + "7", Deadline::Infinite()).verdict,
            Verdict::kIncorrect);
  // Out of long double range: no value, so no numeric match, and no crash.
  EXPECT_EQ(GradeMath("\\boxed{" + digits + ".5}", digits + ".25", Deadline::Infinite()).verdict,
            Verdict::kIncorrect);
  EXPECT_EQ(GradeMath("\\boxed{1e999999999999999999999}", "1", Deadline::Infinite()).verdict,
            Verdict::kIncorrect);
  EXPECT_EQ(
      GradeMath("\\boxed{0." + std::string(5000, '0') + "1}", "1", Deadline::Infinite()).verdict,
      Verdict::kIncorrect);
  EXPECT_EQ(GradeMath("\\boxed{\\frac{" + digits + "}{" + digits + "}}", "1", Deadline::Infinite())
                .verdict,
            Verdict::kIncorrect);  // both sides overflow: no value
  EXPECT_EQ(
      GradeMath("\\boxed{\\frac{" + digits.substr(0, 100) + "}{" + digits.substr(0, 100) + "}}",
                "1", Deadline::Infinite())
          .verdict,
      Verdict::kCorrect);
  std::string sixty_k(60000, '3');
  EXPECT_EQ(GradeArith(sixty_k, sixty_k, Deadline::Infinite()).verdict, Verdict::kCorrect);
  EXPECT_EQ(GradeMath("\\boxed{" + sixty_k + "}", "3", Deadline::Infinite()).verdict,
            Verdict::kIncorrect);
}

TEST(GraderTest, ExpiredDeadlineIsTimeout) {
  Deadline expired(std::chrono::milliseconds(0));
  EXPECT_TRUE(expired.Expired());
  EXPECT_EQ(GradeArith("357", "357", expired).verdict, Verdict::kTimeout);
  EXPECT_EQ(GradeMath("\\boxed{1}", "1", expired).verdict, Verdict::kTimeout);
  Deadline negative(std::chrono::milliseconds(-5));
  EXPECT_EQ(GradeMath(std::string(1 << 20, 'x'), "1", negative).verdict, Verdict::kTimeout);
  EXPECT_FALSE(Deadline::Infinite().Expired());
  EXPECT_FALSE(Deadline(std::chrono::hours(1)).Expired());
  // A generous deadline does not change the result.
  EXPECT_EQ(GradeMath("\\boxed{1}", "1", Deadline(std::chrono::hours(1))).verdict,
            Verdict::kCorrect);
}

TEST(AnswerExtractTest, Forms) {
  Deadline forever = Deadline::Infinite();
  DeadlinePoll poll(forever);
  EXPECT_EQ(ExtractAnswer("a \\boxed{x^{2}} b", poll), "x^{2}");
  EXPECT_EQ(ExtractAnswer("so \\boxed 12 done", poll), "12");
  EXPECT_EQ(ExtractAnswer("blah\n#### 1,234\n", poll), "1,234");
  EXPECT_EQ(ExtractAnswer("#### 5\nThe answer is 6.", poll), "6");  // the later one
  EXPECT_EQ(ExtractAnswer("Answer: 5\n#### 6", poll), "6");
  EXPECT_EQ(ExtractAnswer("nothing here", poll), std::nullopt);
  EXPECT_EQ(ReduceReference("step\n#### 72", poll), "72");
  EXPECT_EQ(ReduceReference("\\frac{1}{2}", poll), "\\frac{1}{2}");
}

TEST(LatexNormalizeTest, Forms) {
  Deadline forever = Deadline::Infinite();
  DeadlinePoll poll(forever);
  EXPECT_EQ(NormalizeLatex("\\left( \\dfrac12, \\sqrt2 \\right)", poll).text,
            "(\\frac{1}{2},\\sqrt{2})");
  EXPECT_EQ(NormalizeLatex("\\$1,234.50", poll).text, "1234.50");
  EXPECT_EQ(NormalizeLatex("12 \\text{ cm}^2", poll).text, "12");
  EXPECT_EQ(NormalizeLatex("5 dollars", poll).text, "5");
  EXPECT_EQ(NormalizeLatex("2x", poll).text, "2x");  // a variable is no unit
  EXPECT_EQ(NormalizeLatex("\\pi r^2", poll).text, "\\pi r^2");
  EXPECT_EQ(NormalizeLatex("1 \\text{ and } 2", poll).text, "1,2");
  EXPECT_EQ(NormalizeLatex("y = 2x + 1", poll).text, "2x+1");
  EXPECT_EQ(NormalizeLatex("x + y = 1", poll).text, "x+y=1");  // no single variable
  NormalizedAnswer pct = NormalizeLatex("50\\%", poll);
  EXPECT_EQ(pct.text, "50");
  EXPECT_TRUE(pct.percent);
  EXPECT_FALSE(NormalizeLatex("50", poll).percent);
}

TEST(SymbolicTest, Translation) {
  EXPECT_EQ(*LatexToGinac("\\frac{1}{2}"), "(((1))/((2)))");
  EXPECT_EQ(*LatexToGinac("2\\sqrt{3}"), "(2)*(sqrt((3)))");
  EXPECT_EQ(*LatexToGinac("0.25"), "(25/100)");
  EXPECT_EQ(*LatexToGinac("007"), "7");
  EXPECT_EQ(*LatexToGinac("x_1"), "s_x_1");
  EXPECT_EQ(*LatexToGinac("\\pi"), "Pi");
  for (const char* bad : {"\\infty", "yes", "2^{10^{10}}", "10^{999999}", "100000!",
                          "(x+1)^{100000}", "\\frac{1}", "1+", "x^", "\\unknown{2}"}) {
    absl::StatusOr<std::string> r = LatexToGinac(bad);
    EXPECT_FALSE(r.ok()) << bad << " -> " << *r;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
  std::string deep = std::string(100, '(') + "1" + std::string(100, ')');
  EXPECT_FALSE(LatexToGinac(deep).ok());
  std::string ok_depth = std::string(20, '(') + "1" + std::string(20, ')');
  EXPECT_TRUE(LatexToGinac(ok_depth).ok());
  EXPECT_FALSE(LatexToGinac(std::string(kMaxSymbolicBytes + 1, '1')).ok());
}

TEST(SymbolicTest, Verdicts) {
  Deadline forever = Deadline::Infinite();
  EXPECT_EQ(SymbolicEqual("\\sqrt{8}", "2\\sqrt{2}", forever), SymbolicVerdict::kEqual);
  EXPECT_EQ(SymbolicEqual("(x+1)^2", "x^2+2x+1", forever), SymbolicVerdict::kEqual);
  EXPECT_EQ(SymbolicEqual("(x+1)^2", "x^2+1", forever), SymbolicVerdict::kNotEqual);
  EXPECT_EQ(SymbolicEqual("\\frac{1}{0}", "1", forever), SymbolicVerdict::kUnsupported);
  EXPECT_EQ(SymbolicEqual("\\infty", "\\infty", forever), SymbolicVerdict::kUnsupported);
  // Too large to expand: decided numerically instead, still correct.
  std::string big = "(a+b+c+d)^{40}";
  EXPECT_EQ(SymbolicEqual(big, big + "+0", forever), SymbolicVerdict::kEqual);
  EXPECT_EQ(SymbolicEqual(big, "2" + big, forever), SymbolicVerdict::kNotEqual);
  EXPECT_EQ(SymbolicEqual("x", "x", Deadline(std::chrono::milliseconds(0))),
            SymbolicVerdict::kTimeout);
}

}  // namespace
}  // namespace pmdrl
