// The training curve of a run as a self-contained SVG (no scripts, no external
// fonts or styles): mean reward per update on the left axis in [-1, 1] and held-out
// evaluation accuracy on the right axis in [0, 1], with ticks, labels and a legend.
#ifndef PMDRL_CLI_PLOT_H_
#define PMDRL_CLI_PLOT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pmdrl {

class CsvTable;

// One row of metrics.csv, reduced to what the curve shows. A value is absent when its
// field was empty (no evaluation at this update; no rollout batch at update 0).
struct CurvePoint {
  double update = 0;
  std::optional<double> mean_reward;
  std::optional<double> eval_accuracy;
};

// Reads the learner's metrics CSV text (columns found by name: update, mean_reward,
// eval_accuracy; others ignored). Errors name the missing column or the bad field.
absl::StatusOr<std::vector<CurvePoint>> CurveFromMetricsCsv(absl::string_view csv_text);
// The same from a parsed table.
absl::StatusOr<std::vector<CurvePoint>> CurveFromMetricsTable(const CsvTable& metrics);

// Up to about `max_ticks` "nice" tick values (1, 2 or 5 times a power of ten apart)
// covering [lo, hi], all inside it. lo == hi yields {lo}.
std::vector<double> NiceTicks(double lo, double hi, int max_ticks);

// `s` with XML's five special characters escaped, for SVG text and attributes.
std::string EscapeXml(absl::string_view s);

// The start of a self-contained SVG document of the given size on a white background
// (the caller appends the content and "</svg>\n").
std::string SvgOpen(double width, double height);

// Renders the curve. Values outside an axis range are clamped to its edge; non-finite
// values are skipped. With no points the SVG still renders axes and says "no data".
// The reward line is the <polyline id="reward">, the accuracy line
// <polyline id="eval_accuracy">; each point is "x,y" in SVG user units.
std::string RenderCurveSvg(const std::vector<CurvePoint>& points, absl::string_view title);

// Reads `metrics_csv_path` and writes the SVG to `svg_path`.
absl::Status WriteCurveSvg(const std::string& metrics_csv_path, const std::string& svg_path,
                           absl::string_view title);

}  // namespace pmdrl

#endif  // PMDRL_CLI_PLOT_H_
