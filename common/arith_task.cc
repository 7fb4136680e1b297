#include "common/arith_task.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pmdrl {
namespace {

constexpr int64_t kMaxDigits = 9;  // a*b < 10^18 fits in int64_t

// splitmix64 finaliser: a bijective, well-mixed hash of a 64-bit word. Fully specified
// integer arithmetic, so results are identical on every platform and compiler.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Domain tags keep the train and held-out streams independent even for equal seeds.
constexpr uint64_t kTrainDomain = 0x7472616e5f617269ULL;
constexpr uint64_t kEvalDomain = 0x6576616c5f617269ULL;

// A splitmix64 stream started from a key.
class Rng {
 public:
  explicit Rng(uint64_t key) : state_(key) {}
  uint64_t Next() { return Mix(state_++ * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL); }
  // Uniform in [0, n), n > 0 (Lemire's multiply-shift; bias < n / 2^64, negligible).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

 private:
  uint64_t state_;
};

uint64_t Key(uint64_t domain, uint64_t seed, uint64_t index, uint64_t attempt) {
  return Mix(Mix(Mix(domain ^ seed) ^ index) + attempt);
}

uint64_t Pow10(int64_t k) {
  uint64_t p = 1;
  for (int64_t i = 0; i < k; ++i) p *= 10;
  return p;
}

ArithProblem Make(const ArithOptions& o, char op, uint64_t a, uint64_t b) {
  int64_t sa = static_cast<int64_t>(a), sb = static_cast<int64_t>(b);
  int64_t result = op == '+' ? sa + sb : op == '-' ? sa - sb : sa * sb;
  int width = static_cast<int>(o.digits);
  ArithProblem p;
  p.prompt = absl::StrFormat("%0*d%c%0*d=", width, sa, op, width, sb);
  p.answer = absl::StrCat(result);
  return p;
}

ArithProblem Draw(const ArithOptions& o, uint64_t key) {
  Rng rng(key);
  const uint64_t n = Pow10(o.digits);
  char op = o.ops[rng.Below(o.ops.size())];
  uint64_t a = rng.Below(n);
  uint64_t b = rng.Below(n);
  return Make(o, op, a, b);
}

// The problem with ordinal `k` in a fixed enumeration of the space (op-major).
ArithProblem Nth(const ArithOptions& o, uint64_t k) {
  const uint64_t n = Pow10(o.digits);
  const uint64_t per_op = n * n;
  char op = o.ops[(k / per_op) % o.ops.size()];
  uint64_t r = k % per_op;
  return Make(o, op, r / n, r % n);
}

}  // namespace

absl::Status ArithTask::Validate(const ArithOptions& options) {
  if (options.digits < 1 || options.digits > kMaxDigits) {
    return absl::InvalidArgumentError(
        absl::StrCat("arith task: digits must be in [1, ", kMaxDigits, "], got ", options.digits));
  }
  if (options.ops.empty()) {
    return absl::InvalidArgumentError("arith task: ops is empty; use any of \"+-*\"");
  }
  for (size_t i = 0; i < options.ops.size(); ++i) {
    char c = options.ops[i];
    if (c != '+' && c != '-' && c != '*') {
      return absl::InvalidArgumentError(absl::StrCat("arith task: ops \"", options.ops, "\" has '",
                                                     std::string(1, c), "' at offset ", i,
                                                     "; allowed are '+', '-', '*'"));
    }
    if (options.ops.find(c) != i) {
      return absl::InvalidArgumentError(
          absl::StrCat("arith task: ops \"", options.ops, "\" repeats '", std::string(1, c), "'"));
    }
  }
  return absl::OkStatus();
}

ArithTask::ArithTask(ArithOptions options, uint64_t eval_seed, int64_t eval_size)
    : options_(std::move(options)) {
  if (absl::Status s = Validate(options_); !s.ok()) {
    // A programming error: configs are validated before a task is built.
    absl::FPrintF(stderr, "ArithTask: %s\n", s.ToString());
    std::abort();
  }
  const uint64_t space = ProblemSpace();
  const uint64_t want =
      eval_size <= 0 ? 0 : std::min<uint64_t>(static_cast<uint64_t>(eval_size), space / 2);
  held_out_.reserve(want);
  held_out_prompts_.reserve(want);
  // Rejection of duplicates terminates quickly: at most half the space is taken.
  for (uint64_t i = 0; held_out_.size() < want; ++i) {
    ArithProblem p = Draw(options_, Key(kEvalDomain, eval_seed, i, 0));
    if (held_out_prompts_.insert(p.prompt).second) held_out_.push_back(std::move(p));
  }
}

ArithProblem ArithTask::Train(uint64_t seed, uint64_t index) const {
  // At least half of the space is outside the held-out split, so a redraw succeeds with
  // probability >= 1/2 each time; the bound only guards against pathological cases.
  constexpr uint64_t kMaxAttempts = 64;
  uint64_t key = 0;
  for (uint64_t attempt = 0; attempt < kMaxAttempts; ++attempt) {
    key = Key(kTrainDomain, seed, index, attempt);
    ArithProblem p = Draw(options_, key);
    if (!IsHeldOut(p.prompt)) return p;
  }
  // Deterministic fallback: walk the enumeration from a hashed start.
  const uint64_t space = ProblemSpace();
  for (uint64_t k = Mix(key) % space, step = 0; step < space; ++step, k = (k + 1) % space) {
    ArithProblem p = Nth(options_, k);
    if (!IsHeldOut(p.prompt)) return p;
  }
  return Nth(options_, 0);  // unreachable: the split is at most half the space
}

bool ArithTask::IsHeldOut(std::string_view prompt) const {
  return held_out_prompts_.contains(absl::string_view(prompt.data(), prompt.size()));
}

uint64_t ArithTask::ProblemSpace() const {
  const uint64_t n = Pow10(options_.digits);
  return options_.ops.size() * n * n;
}

int64_t ArithTask::MaxAnswerChars() const {
  int64_t longest = 0;
  for (char op : options_.ops) {
    int64_t len = op == '*' ? 2 * options_.digits   // (10^d-1)^2 < 10^(2d)
                            : options_.digits + 1;  // 2*(10^d-1) or -(10^d-1)
    longest = std::max(longest, len);
  }
  return longest;
}

std::vector<int32_t> ArithPromptTokens(const Tokenizer& tokenizer, const ArithProblem& problem) {
  std::vector<int32_t> ids = {tokenizer.BosId()};
  std::vector<int32_t> body = tokenizer.Encode(problem.prompt);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::vector<int32_t> ArithTargetTokens(const Tokenizer& tokenizer, const ArithProblem& problem) {
  std::vector<int32_t> ids = tokenizer.Encode(problem.answer);
  ids.push_back(tokenizer.EosId());
  return ids;
}

}  // namespace pmdrl
