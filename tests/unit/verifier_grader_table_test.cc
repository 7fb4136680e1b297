// The grader against a table of (response, reference, expected verdict) cases in
// tests/data/grader_cases.tsv (its header documents the format), once on one thread and
// once from several threads at the same time (the verifier grades concurrently).
#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "verifier/grader.h"
#include "verifier/grader_process_pool.h"

namespace pmdrl {
namespace {

struct Case {
  int line = 0;
  std::string raw;  // the line as written, for failure messages
  std::string task;
  std::vector<std::string> allowed;  // verdict names
  std::string response;
  std::string reference;
};

// Expands <NL>, <TAB> and <REPEAT n>text</REPEAT>.
std::string Expand(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, 4, "<NL>") == 0) {
      out.push_back('\n');
      i += 4;
    } else if (s.compare(i, 5, "<TAB>") == 0) {
      out.push_back('\t');
      i += 5;
    } else if (s.compare(i, 8, "<REPEAT ") == 0) {
      size_t close = s.find('>', i);
      size_t end = s.find("</REPEAT>", i);
      int n = std::stoi(s.substr(i + 8, close - i - 8));
      std::string body = s.substr(close + 1, end - close - 1);
      for (int k = 0; k < n; ++k) out += body;
      i = end + 9;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

std::vector<Case> LoadCases() {
  const std::string path = std::string(PMDRL_SOURCE_DIR) + "/tests/data/grader_cases.tsv";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<Case> cases;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> fields = absl::StrSplit(line, '\t');
    EXPECT_EQ(fields.size(), 4u) << "line " << number << ": " << line;
    if (fields.size() != 4) continue;
    Case c;
    c.line = number;
    c.raw = line;
    c.task = fields[0];
    c.allowed = absl::StrSplit(fields[1], '|');
    c.response = Expand(fields[2]);
    c.reference = Expand(fields[3]);
    cases.push_back(std::move(c));
  }
  return cases;
}

GradeResult Grade(const Case& c) {
  absl::StatusOr<Grader> grader = GraderForTask(c.task);
  EXPECT_TRUE(grader.ok()) << grader.status();
  if (!grader.ok()) return {};
  // Generous: only the pathological rows (which accept "timeout") may come near it.
  return (*grader)(c.response, c.reference, Deadline(std::chrono::seconds(20)));
}

bool Allowed(const Case& c, Verdict v) {
  for (const std::string& name : c.allowed) {
    if (name == VerdictName(v)) return true;
  }
  return false;
}

TEST(GraderTableTest, EveryCase) {
  std::vector<Case> cases = LoadCases();
  EXPECT_GE(cases.size(), 150u);
  int passed = 0;
  for (const Case& c : cases) {
    GradeResult r = Grade(c);
    if (Allowed(c, r.verdict)) {
      ++passed;
      continue;
    }
    ADD_FAILURE() << "grader_cases.tsv:" << c.line << ": got " << VerdictName(r.verdict)
                  << "\n  line: " << c.raw.substr(0, 200)
                  << "\n  extracted: " << r.extracted.substr(0, 120)
                  << "\n  normalized: " << r.normalized_answer.substr(0, 120) << " | "
                  << r.normalized_reference.substr(0, 120);
  }
  std::printf("grader table: %d of %zu cases passed\n", passed, cases.size());
}

// GiNaC and CLN keep shared global state, so the verifier grades in worker processes.
// Several threads grading the whole table at once through them must agree with one
// thread in this process, case by case.
TEST(GraderTableTest, ConcurrentGradingThroughWorkersMatchesSingleThread) {
  std::vector<Case> all = LoadCases();
  std::vector<Case> cases;
  for (Case& c : all) {
    if (c.allowed.size() == 1) cases.push_back(std::move(c));  // deterministic verdicts only
  }
  std::vector<GradeResult> expected;
  for (const Case& c : cases) expected.push_back(Grade(c));

  // GiNaC is not thread-safe: concurrent checks run in the verifier's grader processes
  // (verifier/grader_process_pool.h), one at a time in each.
  GraderProcessPool::Options options;
  options.executable = PMDRL_BINARY_DIR "/verifier/pmdrl-verifier";
  options.argv = {"pmdrl-verifier", "--grader-worker"};
  options.processes = 3;
  absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool = GraderProcessPool::Start(options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  constexpr int kThreads = 6;
  constexpr int kRounds = 2;
  std::vector<std::vector<std::string>> mismatches(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (size_t k = 0; k < cases.size(); ++k) {
          // Each thread walks the table from a different start, so different cases
          // (symbolic and not) overlap in time.
          size_t i = (k + static_cast<size_t>(t) * 37) % cases.size();
          GraderProcessPool::Ending ending;
          GradeResult r =
              (*pool)->Wait((*pool)->Submit(cases[i].task, cases[i].response, cases[i].reference,
                                            std::chrono::seconds(20)),
                            &ending);
          if (r.verdict != expected[i].verdict ||
              r.normalized_answer != expected[i].normalized_answer ||
              r.normalized_reference != expected[i].normalized_reference) {
            std::ostringstream msg;
            msg << "thread " << t << " line " << cases[i].line << ": " << VerdictName(r.verdict)
                << " vs " << VerdictName(expected[i].verdict);
            mismatches[t].push_back(msg.str());
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    for (const std::string& m : mismatches[t]) ADD_FAILURE() << m;
  }
}

}  // namespace
}  // namespace pmdrl
