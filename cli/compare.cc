#include "cli/compare.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/child_process.h"
#include "cli/csv.h"
#include "cli/plot.h"
#include "common/config.h"
#include "common/process.h"

extern char** environ;

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

constexpr char kUsage[] =
    "usage: pmdrl compare --config FILE [--section.key=value ...]\n"
    "\n"
    "Trains the same base policy (model.path) on the same task once per variant and seed\n"
    "(compare.variants x compare.seeds), each as a `pmdrl local` run in\n"
    "<compare.output>/<variant>-seed<S>/ (config.yaml, metrics.csv, local.log, checkpoints),\n"
    "one after another. Then writes <compare.output>/results.md and results.csv (final and\n"
    "best eval accuracy, updates to reach base + compare.target_gain, reward curve area,\n"
    "mean |delta| per update, entropy, wall time; per run and mean +- sd per variant) and\n"
    "curves.svg (every run's eval accuracy and reward). A variant is a loss name\n"
    "(pmd_mean, pmd_part, grpo, gspo) or LOSS:section.key=value[:...] for extra overrides,\n"
    "e.g. pmd_mean:learner.tau=0.1 (values cannot contain ':'). With compare.reuse, a run whose "
    "folder says it finished\n"
    "with the same command, configuration and base model files is not run again.\n"
    "Overrides given here reach every run.\n"
    "\n"
    "Exit status: 0 all runs finished, 1 a run failed, 2 usage or configuration error,\n"
    "130/143 stopped by SIGINT/SIGTERM (the running run is stopped too).\n";

constexpr char kDoneFile[] = "compare_done";

std::string Pct(double a) { return a < 0 ? std::string("-") : absl::StrFormat("%.1f%%", a * 100); }

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double StdDev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = Mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

std::string MeanSd(const std::vector<double>& v, const char* format, double scale = 1) {
  if (v.empty()) return "-";
  return absl::StrCat(absl::StrFormat(format, Mean(v) * scale), " ± ",
                      absl::StrFormat(format, StdDev(v) * scale));
}

// An accuracy of a run that had no evaluation is -1: left out of means.
void PushAccuracy(double a, std::vector<double>* v) {
  if (a >= 0) v->push_back(a);
}

// A column's numbers by row; nullopt for an empty field.
absl::StatusOr<std::vector<std::optional<double>>> Column(const CsvTable& t, const char* name) {
  const int col = t.Column(name);
  if (col < 0) {
    return absl::InvalidArgumentError(absl::StrCat("metrics CSV has no column '", name, "'"));
  }
  std::vector<std::optional<double>> out;
  for (size_t r = 0; r < t.num_rows(); ++r) {
    absl::StatusOr<std::optional<double>> v = t.Number(r, col);
    if (!v.ok()) return v.status();
    out.push_back(*v);
  }
  return out;
}

std::string ReadFileOrEmpty(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs argv with stdout and stderr into log_path; waits, stopping it on SIGINT/SIGTERM.
// Returns the wait status, or -1 if it was stopped.
absl::StatusOr<int> RunChild(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  absl::StatusOr<pid_t> child = Spawn(argv, std::move(env), log_path, "pmdrl compare");
  if (!child.ok()) return child.status();
  const pid_t pid = *child;
  int status = 0;
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::now();
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) {
      const int err = errno;
      kill(pid, SIGTERM);  // `pmdrl local` stops its cluster; nothing is left running
      return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(err)));
    }
    if (StopRequested() && !stopping) {
      stopping = true;  // `pmdrl local` stops its cluster cleanly on SIGTERM
      kill(pid, SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) kill(pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return stopping ? -1 : status;
}

absl::StatusOr<std::string> SelfExe() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot find this pmdrl binary: ", ec.message()));
  return p.string();
}

// What a finished run must match to be kept: the command, the whole effective
// configuration, and the size and time of every file of the base model, so that an
// edited YAML or a new base policy runs again. (A rebuilt pmdrl does not count.)
std::string RunFingerprint(const std::string& command, const Config& config) {
  std::string f = absl::StrCat(command, "\n", ConfigToYaml(config));
  std::error_code ec;
  if (!config.model.path.empty() && fs::is_directory(config.model.path, ec)) {
    std::vector<std::string> files;
    for (const fs::directory_entry& e : fs::directory_iterator(config.model.path, ec)) {
      if (!e.is_regular_file(ec)) continue;
      const auto mtime = e.last_write_time(ec).time_since_epoch().count();
      files.push_back(absl::StrCat(e.path().filename().string(), " ", e.file_size(ec), " ", mtime));
    }
    std::sort(files.begin(), files.end());
    absl::StrAppend(&f, "model files:\n", absl::StrJoin(files, "\n"), "\n");
  }
  return f;
}

}  // namespace

absl::StatusOr<CompareVariant> ParseCompareVariant(absl::string_view entry) {
  std::vector<std::string> parts = absl::StrSplit(entry, ':');
  CompareVariant v;
  v.label = std::string(entry);
  v.loss = parts[0];
  if (v.loss.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("compare.variants entry '", entry, "': no loss name before ':'"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("compare.variants entry '", entry, "': '",
                                                     parts[i], "' is not section.key=value"));
    }
    const std::string key = parts[i].substr(0, eq);
    if (key == "run.dir" || key == "run.seed" || key == "learner.loss") {
      return absl::InvalidArgumentError(
          absl::StrCat("compare.variants entry '", entry, "': ", key, " is set by compare itself"));
    }
    v.overrides.push_back(parts[i]);
  }
  return v;
}

std::string CompareRunDirName(const CompareVariant& variant, int64_t seed) {
  std::string name = variant.label;
  for (char& c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) c = '_';
  }
  return absl::StrCat(name, "-seed", seed);
}

absl::StatusOr<RunSummary> SummariseRun(const CsvTable& metrics, double target_gain,
                                        int64_t eval_last) {
  auto update = Column(metrics, "update");
  auto elapsed = Column(metrics, "elapsed_seconds");
  auto reward = Column(metrics, "mean_reward");
  auto eval = Column(metrics, "eval_accuracy");
  auto delta = Column(metrics, "mean_abs_delta");
  auto entropy = Column(metrics, "entropy");
  for (const auto* c : {&update, &elapsed, &reward, &eval, &delta, &entropy}) {
    if (!c->ok()) return c->status();
  }
  RunSummary s;
  std::vector<std::pair<int64_t, double>> evals;  // after update 0
  std::vector<double> rewards, deltas, entropies;
  for (size_t r = 0; r < update->size(); ++r) {
    if (!(*update)[r]) continue;
    const int64_t u = static_cast<int64_t>(*(*update)[r]);
    s.updates = std::max(s.updates, u);
    if ((*elapsed)[r]) s.wall_seconds = *(*elapsed)[r];
    if ((*eval)[r]) {
      if (u == 0) {
        s.base_accuracy = *(*eval)[r];
      } else {
        evals.emplace_back(u, *(*eval)[r]);
      }
    }
    if (u == 0) continue;
    if ((*reward)[r]) rewards.push_back(*(*reward)[r]);
    if ((*delta)[r]) deltas.push_back(*(*delta)[r]);
    if ((*entropy)[r]) entropies.push_back(*(*entropy)[r]);
  }
  if (!evals.empty()) {
    const size_t n = std::min<size_t>(evals.size(), std::max<int64_t>(eval_last, 1));
    double sum = 0;
    for (size_t i = evals.size() - n; i < evals.size(); ++i) sum += evals[i].second;
    s.final_accuracy = sum / static_cast<double>(n);
    for (const auto& [u, a] : evals) {
      s.best_accuracy = std::max(s.best_accuracy, a);
      if (!s.updates_to_target && s.base_accuracy >= 0 && a >= s.base_accuracy + target_gain) {
        s.updates_to_target = u;
      }
    }
  }
  s.reward_area = Mean(rewards);
  s.mean_abs_delta = Mean(deltas);
  if (!entropies.empty()) {
    const size_t n = std::max<size_t>(1, entropies.size() / 10);
    s.final_entropy = Mean(
        std::vector<double>(entropies.end() - static_cast<std::ptrdiff_t>(n), entropies.end()));
  }
  return s;
}

absl::StatusOr<ComparisonCurve> CurveOfRun(const CsvTable& metrics) {
  absl::StatusOr<std::vector<CurvePoint>> points = CurveFromMetricsTable(metrics);
  if (!points.ok()) return points.status();
  ComparisonCurve curve;
  for (const CurvePoint& p : *points) {
    if (p.eval_accuracy) curve.accuracy.emplace_back(p.update, *p.eval_accuracy);
    if (p.mean_reward && p.update > 0) curve.reward.emplace_back(p.update, *p.mean_reward);
  }
  return curve;
}

std::string RenderCompareMarkdown(const std::vector<RunSummary>& runs, double target_gain) {
  std::vector<std::string> labels;
  std::map<std::string, std::vector<const RunSummary*>> by_label;
  for (const RunSummary& r : runs) {
    if (by_label[r.label].empty()) labels.push_back(r.label);
    by_label[r.label].push_back(&r);
  }
  const std::string target = absl::StrFormat("+%.0f pts", target_gain * 100);
  std::string md =
      absl::StrCat("| variant | runs | base acc | final acc | best acc | updates to ", target,
                   " | reward area | mean abs Δ | entropy | wall s |\n"
                   "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const std::string& label : labels) {
    std::vector<double> base, fin, best, area, delta, ent, wall, reach;
    for (const RunSummary* r : by_label[label]) {
      PushAccuracy(r->base_accuracy, &base);
      PushAccuracy(r->final_accuracy, &fin);
      PushAccuracy(r->best_accuracy, &best);
      area.push_back(r->reward_area);
      delta.push_back(r->mean_abs_delta);
      ent.push_back(r->final_entropy);
      wall.push_back(r->wall_seconds);
      if (r->updates_to_target) reach.push_back(static_cast<double>(*r->updates_to_target));
    }
    const std::string reached = reach.empty()
                                    ? absl::StrFormat("0/%d", by_label[label].size())
                                    : absl::StrFormat("%d/%d, mean %.0f", reach.size(),
                                                      by_label[label].size(), Mean(reach));
    absl::StrAppend(&md, "| ", label, " | ", by_label[label].size(), " | ",
                    base.empty() ? std::string("-") : absl::StrFormat("%.1f%%", Mean(base) * 100),
                    " | ", MeanSd(fin, "%.1f", 100), " | ", MeanSd(best, "%.1f", 100), " | ",
                    reached, " | ", MeanSd(area, "%.3f"), " | ", MeanSd(delta, "%.3f"), " | ",
                    MeanSd(ent, "%.3f"), " | ", absl::StrFormat("%.0f", Mean(wall)), " |\n");
  }
  absl::StrAppend(&md, "\nAccuracies in percent (mean ± sd over seeds).\n\n",
                  "| variant | seed | updates | base acc | final acc | best acc | updates to ",
                  target,
                  " | reward area | mean abs Δ | entropy | wall s |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const RunSummary& r : runs) {
    absl::StrAppend(
        &md, "| ", r.label, " | ", r.seed, " | ", r.updates, " | ", Pct(r.base_accuracy), " | ",
        Pct(r.final_accuracy), " | ", Pct(r.best_accuracy), " | ",
        r.updates_to_target ? absl::StrCat(*r.updates_to_target) : std::string("not reached"),
        " | ", absl::StrFormat("%.3f", r.reward_area), " | ",
        absl::StrFormat("%.3f", r.mean_abs_delta), " | ", absl::StrFormat("%.3f", r.final_entropy),
        " | ", absl::StrFormat("%.0f", r.wall_seconds), " |\n");
  }
  return md;
}

std::string RenderCompareCsv(const std::vector<RunSummary>& runs) {
  std::string csv =
      "variant,seed,updates,base_accuracy,final_accuracy,best_accuracy,updates_to_target,"
      "reward_area,mean_abs_delta,final_entropy,wall_seconds\n";
  for (const RunSummary& r : runs) {
    std::string label = r.label;
    if (label.find_first_of(",\"") != std::string::npos) {
      std::string q = "\"";
      for (char c : label) q += c == '"' ? std::string("\"\"") : std::string(1, c);
      label = q + "\"";
    }
    absl::StrAppend(
        &csv, absl::StrFormat("%s,%d,%d,%.4f,%.4f,%.4f,%s,%.4f,%.4f,%.4f,%.1f\n", label, r.seed,
                              r.updates, r.base_accuracy, r.final_accuracy, r.best_accuracy,
                              r.updates_to_target ? absl::StrCat(*r.updates_to_target) : "",
                              r.reward_area, r.mean_abs_delta, r.final_entropy, r.wall_seconds));
  }
  return csv;
}

int RunCompare(int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "%s\nConfiguration keys (YAML 'section: {key: value}' or --section.key=value):\n%s",
          kUsage, ConfigHelp().c_str());
      return 0;
    }
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "pmdrl compare: unexpected argument '%s'\n\n%s", a.c_str(), kUsage);
      return 2;
    }
    a = a.substr(2);
    std::string value;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "pmdrl compare: --%s needs a value\n\n%s", a.c_str(), kUsage);
      return 2;
    }
    if (a == "config") {
      config_path = value;
    } else {
      overrides.push_back(absl::StrCat(a, "=", value));
    }
  }
  absl::StatusOr<Config> config = LoadConfig(config_path, overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "pmdrl compare: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  const CompareConfig& cc = config->compare;
  // Every run's configuration is built and checked before the first run starts.
  struct Planned {
    CompareVariant variant;
    int64_t seed;
    fs::path dir;
    std::vector<std::string> argv;
    Config config;
  };
  std::vector<Planned> plan;
  absl::StatusOr<std::string> self = SelfExe();
  if (!self.ok()) {
    std::fprintf(stderr, "pmdrl compare: %s\n", std::string(self.status().message()).c_str());
    return 1;
  }
  const std::string exe = *self;
  std::set<std::string> dirs;
  for (const std::string& entry : cc.variants) {
    absl::StatusOr<CompareVariant> v = ParseCompareVariant(entry);
    if (!v.ok()) {
      std::fprintf(stderr, "pmdrl compare: %s\n", std::string(v.status().message()).c_str());
      return 2;
    }
    for (int64_t seed : cc.seeds) {
      Planned p{*v, seed, fs::path(cc.output) / CompareRunDirName(*v, seed), {}, {}};
      if (!dirs.insert(p.dir.string()).second) {
        std::fprintf(stderr, "pmdrl compare: variant '%s' with seed %lld would share %s\n",
                     entry.c_str(), static_cast<long long>(seed), p.dir.c_str());
        return 2;
      }
      // compare.* keys concern this command only; the runs get everything else.
      std::vector<std::string> run_overrides;
      for (const std::string& o : overrides) {
        if (o.rfind("compare.", 0) != 0) run_overrides.push_back(o);
      }
      run_overrides.push_back(absl::StrCat("run.dir=", p.dir.string()));
      run_overrides.push_back(absl::StrCat("run.seed=", seed));
      run_overrides.push_back(absl::StrCat("learner.loss=", v->loss));
      for (const std::string& o : v->overrides) run_overrides.push_back(o);
      absl::StatusOr<Config> rc = LoadConfig(config_path, run_overrides);
      if (!rc.ok()) {
        std::fprintf(stderr, "pmdrl compare: variant '%s', seed %lld: %s\n", entry.c_str(),
                     static_cast<long long>(seed), std::string(rc.status().message()).c_str());
        return 2;
      }
      p.config = *std::move(rc);
      p.argv = {exe, "local"};
      if (!config_path.empty()) {
        p.argv.push_back("--config");
        p.argv.push_back(config_path);
      }
      for (const std::string& o : run_overrides) p.argv.push_back("--" + o);
      plan.push_back(std::move(p));
    }
  }
  InstallStopSignals();
  std::error_code ec;
  fs::create_directories(cc.output, ec);
  if (ec) {
    std::fprintf(stderr, "pmdrl compare: cannot create %s: %s\n", cc.output.c_str(),
                 ec.message().c_str());
    return 1;
  }
  std::printf("pmdrl compare: %zu runs (%zu variants x %zu seeds) into %s\n", plan.size(),
              cc.variants.size(), cc.seeds.size(), cc.output.c_str());
  std::fflush(stdout);

  std::vector<RunSummary> summaries;
  std::vector<ComparisonCurve> curves;
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    const std::string command = absl::StrJoin(p.argv.begin() + 1, p.argv.end(), " ");
    if (StopRequested()) return 128 + StopSignal();
    const fs::path done = p.dir / kDoneFile;
    const std::string fingerprint = RunFingerprint(command, p.config);
    const bool reuse =
        cc.reuse && fs::exists(p.dir / "metrics.csv") && ReadFileOrEmpty(done) == fingerprint;
    if (reuse) {
      std::printf("[%zu/%zu] %s seed %lld: finished before with the same settings, kept\n", i + 1,
                  plan.size(), p.variant.label.c_str(), static_cast<long long>(p.seed));
    } else {
      fs::remove_all(p.dir, ec);
      fs::create_directories(p.dir, ec);
      std::ofstream(p.dir / "config.yaml") << ConfigToYaml(p.config);
      std::ofstream(p.dir / "command.txt") << "pmdrl " << command << "\n";
      std::printf("[%zu/%zu] %s seed %lld: running (log %s)\n", i + 1, plan.size(),
                  p.variant.label.c_str(), static_cast<long long>(p.seed),
                  (p.dir / "local.log").c_str());
      std::fflush(stdout);
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<int> status = RunChild(p.argv, (p.dir / "local.log").string());
      if (!status.ok()) {
        std::fprintf(stderr, "pmdrl compare: %s\n", std::string(status.status().message()).c_str());
        return 1;
      }
      if (*status < 0) {
        std::fprintf(stderr, "pmdrl compare: stopped during %s seed %lld\n",
                     p.variant.label.c_str(), static_cast<long long>(p.seed));
        return 128 + StopSignal();
      }
      if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
        std::fprintf(stderr, "pmdrl compare: the run %s failed (wait status %d); see %s\n",
                     p.dir.c_str(), *status, (p.dir / "local.log").c_str());
        return 1;
      }
      std::ofstream(done) << fingerprint;
      std::printf("[%zu/%zu] %s seed %lld: done in %.0f s\n", i + 1, plan.size(),
                  p.variant.label.c_str(), static_cast<long long>(p.seed),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      std::fflush(stdout);
    }
    absl::StatusOr<CsvTable> metrics = CsvTable::ReadFile((p.dir / "metrics.csv").string());
    absl::StatusOr<RunSummary> s =
        metrics.ok() ? SummariseRun(*metrics, cc.target_gain, p.config.learner.eval_last)
                     : absl::StatusOr<RunSummary>(metrics.status());
    absl::StatusOr<ComparisonCurve> curve =
        metrics.ok() ? CurveOfRun(*metrics) : absl::StatusOr<ComparisonCurve>(metrics.status());
    if (!s.ok() || !curve.ok()) {
      std::fprintf(stderr, "pmdrl compare: %s: %s\n", p.dir.c_str(),
                   std::string((s.ok() ? curve.status() : s.status()).message()).c_str());
      return 1;
    }
    s->label = p.variant.label;
    s->seed = p.seed;
    curve->label = p.variant.label;
    summaries.push_back(*s);
    curves.push_back(*std::move(curve));
  }

  const fs::path out(cc.output);
  const std::string table = RenderCompareMarkdown(summaries, cc.target_gain);
  std::string invocation = "pmdrl compare";
  if (!config_path.empty()) absl::StrAppend(&invocation, " --config ", config_path);
  for (const std::string& o : overrides) absl::StrAppend(&invocation, " --", o);
  std::ofstream(out / "results.md")
      << "# pmdrl compare\n\nProduced by `" << invocation << "` (" << cc.variants.size()
      << " variants x " << cc.seeds.size() << " seeds; each run's folder holds its config.yaml, "
      << "command.txt, metrics.csv and local.log).\n\n"
      << table << "\n![eval accuracy and reward of every run](curves.svg)\n";
  std::ofstream(out / "results.csv") << RenderCompareCsv(summaries);
  std::ofstream(out / "curves.svg")
      << RenderComparisonSvg(curves, absl::StrCat("pmdrl compare: ", cc.variants.size(),
                                                  " variants x ", cc.seeds.size(), " seeds"));
  std::printf("\n%s\nwrote %s, %s, %s\n", table.c_str(), (out / "results.md").c_str(),
              (out / "results.csv").c_str(), (out / "curves.svg").c_str());
  return 0;
}

}  // namespace pmdrl
