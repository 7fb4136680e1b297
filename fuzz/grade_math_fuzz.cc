// The math grader (verifier/grader.h, GradeMath: extraction, LaTeX normalisation,
// numeric and symbolic comparison with GiNaC) on hostile text. Input: the reference,
// a 0x01 byte, then the response (no 0x01: the whole input is the response against
// the reference "42"). Checks: no crash, exception or hang (libFuzzer's -timeout; the
// grader's own deadline is 2 s); a kCorrect verdict has an extracted answer and both
// normalised sides; an answer that normalises to the reference's text is kCorrect.
// GradeArith runs on the same pair (a kCorrect there has a reference).
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "verifier/grader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t sep = input.find('\x01');
  const std::string_view reference = sep == std::string_view::npos ? "42" : input.substr(0, sep);
  const std::string_view response = sep == std::string_view::npos ? input : input.substr(sep + 1);
  const pmdrl::Deadline deadline(std::chrono::milliseconds(2000));

  const pmdrl::GradeResult r = pmdrl::GradeMath(response, reference, deadline);
  if (r.verdict == pmdrl::Verdict::kCorrect) {
    FUZZ_CHECK(!r.extracted.empty());
    FUZZ_CHECK(!r.normalized_answer.empty() && !r.normalized_reference.empty());
  }
  // Answers that normalise to the same text are equal (the comparison's first step).
  if (r.verdict != pmdrl::Verdict::kTimeout && !r.normalized_answer.empty() &&
      r.normalized_answer == r.normalized_reference) {
    FUZZ_CHECK(r.verdict == pmdrl::Verdict::kCorrect);
  }

  const pmdrl::GradeResult a = pmdrl::GradeArith(response, reference, deadline);
  if (a.verdict == pmdrl::Verdict::kCorrect) FUZZ_CHECK(!a.normalized_reference.empty());
  return 0;
}
