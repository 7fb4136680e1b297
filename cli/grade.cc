#include "cli/grade.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "verifier/grader.h"
#include "verifier/symbolic_equal.h"

namespace pmdrl {
namespace {

constexpr char kUsage[] =
    "usage: pmdrl grade --answer TEXT --reference TEXT [--task math|arith] [--timeout-ms N]\n"
    "\n"
    "Grades one answer (a whole model response: the last \\boxed{...}, an 'Answer:' line,\n"
    "'the answer is ...' or GSM8K's '#### N' is extracted) against one reference with the\n"
    "verifier's grader, and prints each stage as 'key: value' lines: task, extracted,\n"
    "normalized_answer, normalized_reference, ginac_answer, ginac_reference (math only;\n"
    "the expression handed to GiNaC, or why it is not), verdict.\n"
    "\n"
    "  --answer TEXT       the response to grade\n"
    "  --reference TEXT    the reference answer (or a solution with \\boxed{} / '#### N')\n"
    "  --task NAME         math (default) or arith (the response must be exactly an integer)\n"
    "  --timeout-ms N      the grading deadline in milliseconds (default 5000)\n"
    "\n"
    "Exit status: 0 correct, 1 incorrect / parse_error / timeout, 2 usage error.\n";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "pmdrl grade: %s\n\n%s", message.c_str(), kUsage);
  return 2;
}

// Newlines would break the one-line-per-key format.
std::string OneLine(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void PrintGinac(const char* key, const std::string& normalized) {
  if (normalized.empty()) return;
  absl::StatusOr<std::string> ginac = LatexToGinac(normalized);
  std::printf("%s: %s\n", key,
              OneLine(ginac.ok() ? *ginac : "(none: " + std::string(ginac.status().message()) + ")")
                  .c_str());
}

}  // namespace

int RunGrade(int argc, char** argv) {
  std::optional<std::string> answer, reference;
  std::string task = "math";
  long timeout_ms = 5000;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    // Both "--key value" and "--key=value".
    std::string_view key = arg;
    std::optional<std::string> value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      key = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    }
    if (key != "--answer" && key != "--reference" && key != "--task" && key != "--timeout-ms") {
      return UsageError("unknown argument '" + std::string(arg) + "'");
    }
    if (!value) {
      if (i + 1 >= argc) return UsageError(std::string(key) + " needs a value");
      value = argv[++i];
    }
    if (key == "--answer") {
      answer = *value;
    } else if (key == "--reference") {
      reference = *value;
    } else if (key == "--task") {
      task = *value;
    } else {
      char* end = nullptr;
      timeout_ms = std::strtol(value->c_str(), &end, 10);
      if (value->empty() || *end != '\0' || timeout_ms <= 0) {
        return UsageError("--timeout-ms needs a positive integer, not '" + *value + "'");
      }
    }
  }
  if (!answer) return UsageError("--answer is required");
  if (!reference) return UsageError("--reference is required");
  absl::StatusOr<Grader> grader = GraderForTask(task);
  if (!grader.ok()) return UsageError(std::string(grader.status().message()));

  GradeResult r = (*grader)(*answer, *reference, Deadline(std::chrono::milliseconds(timeout_ms)));
  std::printf("task: %s\n", task.c_str());
  std::printf("extracted: %s\n", OneLine(r.extracted).c_str());
  std::printf("normalized_answer: %s\n", OneLine(r.normalized_answer).c_str());
  std::printf("normalized_reference: %s\n", OneLine(r.normalized_reference).c_str());
  if (task == "math") {
    PrintGinac("ginac_answer", r.normalized_answer);
    PrintGinac("ginac_reference", r.normalized_reference);
  }
  std::printf("verdict: %s\n", std::string(VerdictName(r.verdict)).c_str());
  return r.verdict == Verdict::kCorrect ? 0 : 1;
}

}  // namespace pmdrl
