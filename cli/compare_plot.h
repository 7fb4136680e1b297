// The plot of `pmdrl compare`: every run's curves in one self-contained SVG, held-out
// evaluation accuracy in the top panel and mean sampled reward in the bottom panel,
// one colour per variant (its seeds share it).
#ifndef PMDRL_CLI_COMPARE_PLOT_H_
#define PMDRL_CLI_COMPARE_PLOT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace pmdrl {

// One run's curves; points are (update, value).
struct ComparisonCurve {
  std::string label;  // the variant: runs with the same label share a colour
  std::vector<std::pair<double, double>> accuracy;  // eval accuracy in [0, 1]
  std::vector<std::pair<double, double>> reward;    // mean reward in [-1, 1]
};

// Renders every curve. The reward panel shows a trailing 5-update moving average (one
// update's mean reward is noisy); values outside an axis are clamped to its edge and
// non-finite ones skipped. Each run is a <polyline class="accuracy"|"reward"> with
// data-label set to its label.
std::string RenderComparisonSvg(const std::vector<ComparisonCurve>& curves,
                                absl::string_view title);

}  // namespace pmdrl

#endif  // PMDRL_CLI_COMPARE_PLOT_H_
