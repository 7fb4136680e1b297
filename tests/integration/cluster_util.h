// Helpers of the integration tests: start the real binaries as child processes, read
// the files a run leaves behind (metrics.csv, groups.csv, *.prom, cluster.json), and
// stop children by pid.
#ifndef PMDRL_TESTS_INTEGRATION_CLUSTER_UTIL_H_
#define PMDRL_TESTS_INTEGRATION_CLUSTER_UTIL_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace pmdrl::testing_util {

namespace fs = std::filesystem;

inline std::string Bin(const std::string& rel) { return std::string(PMDRL_BINARY_DIR) + "/" + rel; }
inline std::string Src(const std::string& rel) { return std::string(PMDRL_SOURCE_DIR) + "/" + rel; }

inline std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A one-line file (checkpoints/latest) without its trailing newline or blanks.
inline std::string ReadLine(const fs::path& p) {
  std::string s = ReadAll(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A child process with its output in a file. Killed (SIGKILL, by pid) if still running
// when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log_path,
        const std::map<std::string, std::string>& env = {}) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      setenv("OPENBLAS_NUM_THREADS", "1", 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (running()) {
      kill(pid_, SIGKILL);
      Wait(std::chrono::seconds(30));
    }
  }
  pid_t pid() const { return pid_; }
  bool running() {
    if (exited_) return false;
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = status;
      return false;
    }
    return true;
  }
  // Exit code (128 + signal for a signal), or nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (WIFEXITED(status_)) return WEXITSTATUS(status_);
    return 128 + WTERMSIG(status_);
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// Runs a command to completion; returns exit code and combined output.
inline std::pair<int, std::string> RunCommand(
    const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
    std::chrono::seconds timeout = std::chrono::seconds(60)) {
  std::string log = fs::temp_directory_path() / ("pmdrl_cmd_" + std::to_string(getpid()) + ".log");
  Child c(argv, log, env);
  std::optional<int> rc = c.Wait(timeout);
  return {rc.value_or(-1), ReadAll(log)};
}

// Prometheus text: sum of the samples of `name` whose labels contain every `labels` pair.
inline double MetricValue(const std::string& text, const std::string& name,
                          const std::map<std::string, std::string>& labels = {}) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t end = line.find_first_of("{ ");
    if (end == std::string::npos || line.substr(0, end) != name) continue;
    std::string label_part = line[end] == '{' ? line.substr(end, line.find('}') - end + 1) : "";
    bool match = true;
    for (const auto& [k, v] : labels) {
      if (label_part.find(k + "=\"" + v + "\"") == std::string::npos) match = false;
    }
    if (!match) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// A CSV file as rows of column -> value.
inline std::vector<std::map<std::string, std::string>> ReadCsv(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
      if (c == ',') {
        out.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    out.push_back(cur);
    return out;
  };
  if (!std::getline(in, line)) return rows;
  header = split(line);
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto cells = split(line);
    if (cells.size() == header.size() && cells[0] == header[0]) continue;  // repeated header
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size() && i < cells.size(); ++i) row[header[i]] = cells[i];
    rows.push_back(std::move(row));
  }
  return rows;
}

// Polls `pred` every `every` (100 ms) until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F pred, std::chrono::seconds timeout,
             std::chrono::milliseconds every = std::chrono::milliseconds(100)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(every);
  }
  return pred();
}

using Place = std::pair<int64_t, int64_t>;  // (epoch, index) in the data stream

// Reads `run_dir`/ledger.csv into `trained` and checks it: every place once, and
// `per_update` places in each of `updates` updates. Call it under
// ASSERT_NO_FATAL_FAILURE.
inline void CheckLedger(const fs::path& run_dir, int updates, int per_update,
                        std::set<Place>* trained) {
  std::map<int64_t, int> count;
  for (const auto& row : ReadCsv(run_dir / "ledger.csv")) {
    const Place place{std::stoll(row.at("epoch")), std::stoll(row.at("index"))};
    EXPECT_TRUE(trained->insert(place).second)
        << "place (" << place.first << ", " << place.second << ") trained twice";
    ++count[std::stoll(row.at("update"))];
  }
  ASSERT_EQ(count.size(), static_cast<size_t>(updates));
  for (const auto& [update, n] : count) EXPECT_EQ(n, per_update) << "update " << update;
}

// A small, fast cluster config: random-init model, short updates.
inline std::string TestConfig(const fs::path& run_dir, const std::string& extra = "") {
  std::ostringstream y;
  y << "run:\n  dir: " << run_dir.string() << "\n  seed: 3\n"
    << "model:\n  hidden_size: 32\n  intermediate_size: 64\n  num_layers: 1\n  num_heads: 2\n"
       "  num_kv_heads: 2\n  max_position: 32\n"
    << "task:\n  digits: 1\n  eval_size: 20\n"
    << "actor:\n  prompts_per_batch: 4\n  max_new_tokens: 4\n"
    << "learner:\n  group_size: 4\n  prompts_per_update: 8\n  mini_batches: 2\n"
       "  updates: 4\n  eval_every: 2\n  checkpoint_every: 1\n  lr: 0.001\n  warmup_steps: 0\n"
    << "local:\n  actors: 2\n  verifiers: 2\n"
    << extra;
  return y.str();
}

// Removes the FreshDir directories of a test that passed, when it ends (its children,
// owned by the test or its fixture, are stopped by then); a failed test's stay, to be read.
// PMDRL_KEEP_TEST_DIRS=1 keeps every one.
class FreshDirRemover : public ::testing::EmptyTestEventListener {
 public:
  // The directories of the running test; the remover is registered on first use.
  static std::vector<fs::path>& DirsOfThisTest() {
    static FreshDirRemover* remover = [] {
      auto* r = new FreshDirRemover;
      ::testing::UnitTest::GetInstance()->listeners().Append(r);  // takes ownership
      return r;
    }();
    return remover->dirs_;
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result() != nullptr && info.result()->Passed() &&
        std::getenv("PMDRL_KEEP_TEST_DIRS") == nullptr) {
      for (const fs::path& d : dirs_) {
        std::error_code ignored;
        fs::remove_all(d, ignored);
      }
    }
    dirs_.clear();
  }

 private:
  std::vector<fs::path> dirs_;
};

// A new empty directory for one test, named after it and this process; removed when the
// test passes (FreshDirRemover).
inline fs::path FreshDir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("pmdrl_it_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  FreshDirRemover::DirsOfThisTest().push_back(d);
  return d;
}

}  // namespace pmdrl::testing_util

#endif  // PMDRL_TESTS_INTEGRATION_CLUSTER_UTIL_H_
