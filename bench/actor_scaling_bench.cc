// Rollout throughput against the number of actors: runs `pmdrl local` on the demo
// config with 1, 2, ... actors for S seconds each (a random-init model unless
// --model.path is passed through) and prints, per actor count, the generation
// tokens/s the learner received (metrics.csv sampled_tokens_per_second, averaged over
// the run's updates), the actors' own generated tokens over the training time
// (pmdrl_actor_generated_tokens_total), and the learner's idle fraction: seconds it
// waited for rollout data (pmdrl_learner_wait_seconds_total) over its training time,
// and the actors' share of their time waiting for room in the send window
// (pmdrl_actor_send_wait_seconds_total) next to their share generating
// (pmdrl_actor_generate_seconds_total). Each line carries the ratio to the 1-actor figure. On a machine with fewer cores
// than processes the actors compete with the learner for CPU: more actors then
// lower the learner's idle fraction more than they raise tokens/s.
//
//   build/bench/actor_scaling_bench [--config examples/arith.yaml] [--seconds S]
//       [--max-actors N] [--verifiers V] [--pmdrl build/cli/pmdrl] [--section.key=value ...]
//
// The pmdrl binary is --pmdrl, else $PMDRL_BIN_DIR/pmdrl or $PMDRL_BIN_DIR/cli/pmdrl,
// else <this executable's dir>/../cli/pmdrl (the build tree).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sum of the samples of `name` (any labels) in Prometheus text.
double MetricSum(const std::string& text, const std::string& name) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    size_t end = line.find_first_of("{ ");
    if (end == absl::string_view::npos || line.substr(0, end) != name) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
  }
  return sum;
}

// metrics.csv as rows of column -> cell.
std::vector<std::map<std::string, std::string>> ReadCsv(const fs::path& p) {
  std::vector<std::map<std::string, std::string>> rows;
  std::ifstream in(p);
  std::string line;
  if (!std::getline(in, line)) return rows;
  std::vector<std::string> header = absl::StrSplit(line, ',');
  while (std::getline(in, line)) {
    std::vector<std::string> cells = absl::StrSplit(line, ',');
    if (cells.size() != header.size() || cells[0] == header[0]) continue;
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size(); ++i) row[header[i]] = cells[i];
    rows.push_back(std::move(row));
  }
  return rows;
}

double Cell(const std::map<std::string, std::string>& row, const std::string& key) {
  auto it = row.find(key);
  double v = -1;
  if (it == row.end() || !absl::SimpleAtod(it->second, &v)) return -1;
  return v;
}

// Runs argv with output to `log`; its exit code, or -1.
int Run(const std::vector<std::string>& argv, const fs::path& log) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string FindPmdrl(const std::string& flag) {
  std::vector<std::string> candidates;
  if (!flag.empty()) candidates.push_back(flag);
  if (const char* d = std::getenv("PMDRL_BIN_DIR")) {
    candidates.push_back(absl::StrCat(d, "/pmdrl"));
    candidates.push_back(absl::StrCat(d, "/cli/pmdrl"));
  }
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back((exe.parent_path() / ".." / "cli" / "pmdrl").lexically_normal());
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

struct Result {
  int actors = 0;
  int rc = -1;
  int updates = 0;
  double sampled_tps = 0;  // learner's view, mean over updates
  double actor_tps = 0;    // actors' generated tokens / training seconds
  double idle = 0;         // learner wait / training seconds
  double send_wait = 0;    // actors' time waiting for room in the send window / their time
  double generating = 0;   // actors' time in engine steps / their time
};

}  // namespace

int main(int argc, char** argv) {
  std::string config = "examples/arith.yaml", pmdrl_flag;
  int seconds = 30, max_actors = 3, verifiers = 2;
  std::vector<std::string> extra;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      size_t eq = a.find('=');
      if (eq != std::string::npos) return a.substr(eq + 1);
      return i + 1 < argc ? argv[++i] : "";
    };
    auto is = [&](const char* flag) {
      return a == flag || a.rfind(std::string(flag) + "=", 0) == 0;
    };
    if (is("--config")) {
      config = value();
    } else if (is("--seconds")) {
      seconds = std::atoi(value().c_str());
    } else if (is("--max-actors")) {
      max_actors = std::atoi(value().c_str());
    } else if (is("--verifiers")) {
      verifiers = std::atoi(value().c_str());
    } else if (is("--pmdrl")) {
      pmdrl_flag = value();
    } else if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      extra.push_back(a);
    } else {
      std::fprintf(stderr, "unexpected argument '%s'\n", a.c_str());
      return 2;
    }
  }
  const std::string pmdrl = FindPmdrl(pmdrl_flag);
  if (pmdrl.empty()) {
    std::fprintf(stderr, "cannot find the pmdrl binary: pass --pmdrl or set PMDRL_BIN_DIR\n");
    return 2;
  }
  if (!fs::exists(config)) {
    std::fprintf(stderr, "no config %s (run from the source tree or pass --config)\n",
                 config.c_str());
    return 2;
  }
  const fs::path base =
      fs::temp_directory_path() / ("pmdrl_actor_scaling_" + std::to_string(getpid()));
  std::printf("actor scaling: %s, %d s per run, %d verifiers, pmdrl %s\n", config.c_str(), seconds,
              verifiers, pmdrl.c_str());
  std::fflush(stdout);

  std::vector<Result> results;
  for (int a = 1; a <= max_actors; ++a) {
    const fs::path dir = base / ("actors-" + std::to_string(a));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::vector<std::string> args = {pmdrl,
                                     "local",
                                     "--config",
                                     fs::absolute(config).string(),
                                     "--run.dir=" + dir.string(),
                                     "--model.path=",
                                     absl::StrCat("--local.actors=", a),
                                     absl::StrCat("--local.verifiers=", verifiers),
                                     "--learner.updates=100000000",
                                     absl::StrCat("--learner.max_seconds=", seconds),
                                     "--learner.checkpoint_every=0",
                                     "--learner.eval_every=100000000"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r;
    r.actors = a;
    r.rc = Run(args, dir / "local.log");
    auto rows = ReadCsv(dir / "metrics.csv");
    // Row 0 is the base evaluation; training time runs from it to the last update.
    double tps_sum = 0;
    int tps_rows = 0;
    for (const auto& row : rows) {
      if (Cell(row, "update") < 1) continue;
      ++r.updates;
      double tps = Cell(row, "sampled_tokens_per_second");
      if (tps >= 0) {
        tps_sum += tps;
        ++tps_rows;
      }
    }
    r.sampled_tps = tps_rows > 0 ? tps_sum / tps_rows : 0;
    double train_seconds = 0;
    if (rows.size() >= 2) {
      train_seconds = Cell(rows.back(), "elapsed_seconds") - Cell(rows.front(), "elapsed_seconds");
    }
    const std::string learner_prom = ReadAll(dir / "metrics" / "learner.prom");
    double generated = 0, send_wait = 0, generating = 0;
    for (int i = 0; i < a; ++i) {
      const std::string actor_prom = ReadAll(dir / "metrics" / absl::StrCat("actor-", i, ".prom"));
      generated += MetricSum(actor_prom, "pmdrl_actor_generated_tokens_total");
      send_wait += MetricSum(actor_prom, "pmdrl_actor_send_wait_seconds_total");
      generating += MetricSum(actor_prom, "pmdrl_actor_generate_seconds_total");
    }
    if (train_seconds > 0) {
      r.actor_tps = generated / train_seconds;
      r.send_wait = send_wait / (train_seconds * a);
      r.generating = generating / (train_seconds * a);
      r.idle = MetricSum(learner_prom, "pmdrl_learner_wait_seconds_total") / train_seconds;
    }
    results.push_back(r);
    const Result& one = results.front();
    auto ratio = [](double x, double ref) { return ref > 0 ? x / ref : 0.0; };
    std::printf(
        "actors %d: sampled tokens/s %8.1f (%.2fx)  actor tokens/s %8.1f (%.2fx)  learner idle "
        "%5.1f%% (1 actor: %5.1f%%)  actors waiting to send %4.1f%% (generating %4.1f%%)  "
        "updates %d  exit %d\n",
        a, r.sampled_tps, ratio(r.sampled_tps, one.sampled_tps), r.actor_tps,
        ratio(r.actor_tps, one.actor_tps), 100 * r.idle, 100 * one.idle, 100 * r.send_wait,
        100 * r.generating, r.updates, r.rc);
    std::fflush(stdout);
    if (r.rc != 0) {
      std::fprintf(stderr, "pmdrl local exited %d; see %s\n", r.rc, (dir / "local.log").c_str());
    }
  }
  bool all_ok = true;
  for (const Result& r : results) all_ok = all_ok && r.rc == 0;
  if (all_ok) fs::remove_all(base);  // else its logs tell why
  return all_ok ? 0 : 1;
}
