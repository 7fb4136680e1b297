// `pmdrl compare`: trains the same base policy on the same task with several losses and
// seeds, one `pmdrl local` run after another, keeps each run's config and metrics, and
// writes one table (results.md, results.csv) and one plot with every curve (curves.svg).
#ifndef PMDRL_CLI_COMPARE_H_
#define PMDRL_CLI_COMPARE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cli/compare_plot.h"

namespace pmdrl {

class CsvTable;

// Runs `pmdrl compare`. argv[0] is "compare"; the rest are `--config FILE`, `--help`
// and `--section.key=value` overrides (passed on to every run). Returns 0 when every
// run finished, 2 for a usage or configuration error, 1 when a run failed,
// 128+signal when stopped.
int RunCompare(int argc, char** argv);

// ---- Pieces of RunCompare without side effects, exposed for tests. ----

// One entry of compare.variants: "LOSS" or "LOSS:section.key=value[:...]".
struct CompareVariant {
  std::string label;                   // the entry as written; names the curves and rows
  std::string loss;                    // learner.loss of the runs
  std::vector<std::string> overrides;  // "section.key=value", after learner.loss=LOSS
};
// Errors name the entry: an empty loss, an override without '=', an override of
// run.dir, run.seed or learner.loss (compare sets those per run).
absl::StatusOr<CompareVariant> ParseCompareVariant(absl::string_view entry);

// A run's folder name under compare.output: the label with every character outside
// [A-Za-z0-9._-] replaced by '_', then "-seed<S>".
std::string CompareRunDirName(const CompareVariant& variant, int64_t seed);

// What the table reports about one run, read from its metrics.csv.
struct RunSummary {
  std::string label;
  int64_t seed = 0;
  int64_t updates = 0;                       // the last update in the file
  double base_accuracy = -1;                 // eval at update 0 (-1: none)
  double final_accuracy = -1;                // mean of the last `eval_last` evaluations
  double best_accuracy = -1;                 // best evaluation after update 0
  std::optional<int64_t> updates_to_target;  // first update with eval >= base + gain
  double reward_area = 0;                    // mean reward averaged over updates 1..N
  double mean_abs_delta = 0;                 // mean |Δ| (sequence log-ratio) over updates
  double final_entropy = 0;                  // mean token entropy over the last tenth of updates
  double wall_seconds = 0;                   // elapsed_seconds of the last row
};

// Summarises one run's metrics table (columns found by name). Errors name the column
// that is missing or a field that is not a number.
absl::StatusOr<RunSummary> SummariseRun(const CsvTable& metrics, double target_gain,
                                        int64_t eval_last);

// The curves of one run for the plot.
absl::StatusOr<ComparisonCurve> CurveOfRun(const CsvTable& metrics);

// results.md's tables: every run, then each label's mean ± standard deviation over its
// seeds (updates-to-target as "reached/total, mean of those reached").
std::string RenderCompareMarkdown(const std::vector<RunSummary>& runs, double target_gain);
// results.csv: one row per run, the same fields as RunSummary.
std::string RenderCompareCsv(const std::vector<RunSummary>& runs);

}  // namespace pmdrl

#endif  // PMDRL_CLI_COMPARE_H_
