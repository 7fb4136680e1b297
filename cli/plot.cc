#include "cli/plot.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/csv.h"

namespace pmdrl {
namespace {

// Canvas and plot-area geometry in SVG user units.
constexpr double kWidth = 800;
constexpr double kHeight = 460;
constexpr double kLeft = 80;
constexpr double kRight = 720;
constexpr double kTop = 60;
constexpr double kBottom = 390;

// Fixed axes; the ticks of both fall on the same heights, so they share grid lines.
constexpr double kRewardTicks[] = {-1.0, -0.5, 0.0, 0.5, 1.0};
constexpr double kAccuracyTicks[] = {0.0, 0.25, 0.5, 0.75, 1.0};

constexpr const char* kRewardColor = "#1f77b4";
constexpr const char* kAccuracyColor = "#d62728";

// Tick label without trailing zeros ("0.5", "-1", "100").
std::string Label(double v) {
  if (std::fabs(v) < 1e-12) v = 0;  // no "-0"
  return absl::StrFormat("%g", v);
}

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

// Maps a value in [lo, hi] linearly onto [a, b], clamping outside values.
double Map(double v, double lo, double hi, double a, double b) {
  double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  t = std::clamp(t, 0.0, 1.0);
  return a + t * (b - a);
}

}  // namespace

std::string EscapeXml(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string SvgOpen(double width, double height) {
  return absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
      "viewBox=\"0 0 %g %g\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect x=\"0\" y=\"0\" width=\"%g\" height=\"%g\" fill=\"white\"/>\n",
      width, height, width, height, width, height);
}

absl::StatusOr<std::vector<CurvePoint>> CurveFromMetricsCsv(absl::string_view csv_text) {
  absl::StatusOr<CsvTable> table = CsvTable::Parse(csv_text);
  if (!table.ok()) return table.status();
  return CurveFromMetricsTable(*table);
}

absl::StatusOr<std::vector<CurvePoint>> CurveFromMetricsTable(const CsvTable& metrics) {
  int update_col = metrics.Column("update");
  int reward_col = metrics.Column("mean_reward");
  int eval_col = metrics.Column("eval_accuracy");
  for (auto [col, name] : {std::pair{update_col, "update"},
                           {reward_col, "mean_reward"},
                           {eval_col, "eval_accuracy"}}) {
    if (col < 0) {
      return absl::InvalidArgumentError(absl::StrCat("metrics CSV has no column '", name, "'"));
    }
  }
  std::vector<CurvePoint> points;
  for (size_t r = 0; r < metrics.num_rows(); ++r) {
    absl::StatusOr<std::optional<double>> update = metrics.Number(r, update_col);
    if (!update.ok()) return update.status();
    if (!update->has_value()) continue;  // a row without an update number is not a point
    absl::StatusOr<std::optional<double>> reward = metrics.Number(r, reward_col);
    if (!reward.ok()) return reward.status();
    absl::StatusOr<std::optional<double>> accuracy = metrics.Number(r, eval_col);
    if (!accuracy.ok()) return accuracy.status();
    CurvePoint p;
    p.update = **update;
    p.mean_reward = *reward;
    p.eval_accuracy = *accuracy;
    points.push_back(p);
  }
  return points;
}

std::vector<double> NiceTicks(double lo, double hi, int max_ticks) {
  if (!(hi > lo) || max_ticks < 2) return {lo};
  double raw = (hi - lo) / (max_ticks - 1);
  double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  // Integer multiples of the step avoid accumulating rounding error.
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1) {
    ticks.push_back(k * step);
  }
  return ticks;
}

std::string RenderCurveSvg(const std::vector<CurvePoint>& points, absl::string_view title) {
  // X domain: the updates present; a single update still gets a non-empty range.
  double x_lo = 0, x_hi = 1;
  bool any = false;
  for (const CurvePoint& p : points) {
    if (!std::isfinite(p.update)) continue;
    if (!any) {
      x_lo = x_hi = p.update;
      any = true;
    }
    x_lo = std::min(x_lo, p.update);
    x_hi = std::max(x_hi, p.update);
  }
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  auto px = [&](double u) { return Map(u, x_lo, x_hi, kLeft, kRight); };
  auto py_reward = [](double r) { return Map(r, -1.0, 1.0, kBottom, kTop); };
  auto py_accuracy = [](double a) { return Map(a, 0.0, 1.0, kBottom, kTop); };

  std::string svg = SvgOpen(kWidth, kHeight);
  absl::StrAppend(&svg, "<text x=\"", Num(kWidth / 2), "\" y=\"28\" text-anchor=\"middle\" ",
                  "font-size=\"16\">", EscapeXml(title), "</text>\n");

  // Grid and ticks. Horizontal grid lines follow the reward axis; the accuracy axis
  // shares them (reward -1..1 and accuracy 0..1 align at every quarter).
  absl::StrAppend(&svg, "<g id=\"grid\" stroke=\"#e0e0e0\" stroke-width=\"1\">\n");
  for (double r : kRewardTicks) {
    absl::StrAppend(&svg, "<line x1=\"", Num(kLeft), "\" y1=\"", Num(py_reward(r)), "\" x2=\"",
                    Num(kRight), "\" y2=\"", Num(py_reward(r)), "\"/>\n");
  }
  std::vector<double> x_ticks = NiceTicks(x_lo, x_hi, 8);
  for (double u : x_ticks) {
    absl::StrAppend(&svg, "<line x1=\"", Num(px(u)), "\" y1=\"", Num(kTop), "\" x2=\"", Num(px(u)),
                    "\" y2=\"", Num(kBottom), "\"/>\n");
  }
  absl::StrAppend(&svg, "</g>\n");

  // Axes.
  absl::StrAppend(&svg, "<g id=\"axes\" stroke=\"black\" stroke-width=\"1\" fill=\"none\">\n",
                  "<rect x=\"", Num(kLeft), "\" y=\"", Num(kTop), "\" width=\"",
                  Num(kRight - kLeft), "\" height=\"", Num(kBottom - kTop), "\"/>\n");
  for (double u : x_ticks) {
    absl::StrAppend(&svg, "<line x1=\"", Num(px(u)), "\" y1=\"", Num(kBottom), "\" x2=\"",
                    Num(px(u)), "\" y2=\"", Num(kBottom + 5), "\"/>\n");
  }
  for (double r : kRewardTicks) {
    absl::StrAppend(&svg, "<line x1=\"", Num(kLeft - 5), "\" y1=\"", Num(py_reward(r)), "\" x2=\"",
                    Num(kLeft), "\" y2=\"", Num(py_reward(r)), "\"/>\n");
  }
  for (double a : kAccuracyTicks) {
    absl::StrAppend(&svg, "<line x1=\"", Num(kRight), "\" y1=\"", Num(py_accuracy(a)), "\" x2=\"",
                    Num(kRight + 5), "\" y2=\"", Num(py_accuracy(a)), "\"/>\n");
  }
  absl::StrAppend(&svg, "</g>\n");

  // Tick labels and axis titles.
  absl::StrAppend(&svg, "<g id=\"labels\" fill=\"black\">\n");
  for (double u : x_ticks) {
    absl::StrAppend(&svg, "<text x=\"", Num(px(u)), "\" y=\"", Num(kBottom + 20),
                    "\" text-anchor=\"middle\">", Label(u), "</text>\n");
  }
  for (double r : kRewardTicks) {
    absl::StrAppend(&svg, "<text x=\"", Num(kLeft - 8), "\" y=\"", Num(py_reward(r) + 4),
                    "\" text-anchor=\"end\" fill=\"", kRewardColor, "\">", Label(r), "</text>\n");
  }
  for (double a : kAccuracyTicks) {
    absl::StrAppend(&svg, "<text x=\"", Num(kRight + 8), "\" y=\"", Num(py_accuracy(a) + 4),
                    "\" text-anchor=\"start\" fill=\"", kAccuracyColor, "\">", Label(a * 100),
                    "%</text>\n");
  }
  double mid_y = (kTop + kBottom) / 2;
  absl::StrAppend(&svg, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"", Num(kBottom + 45),
                  "\" text-anchor=\"middle\">update</text>\n", "<text x=\"25\" y=\"", Num(mid_y),
                  "\" text-anchor=\"middle\" fill=\"", kRewardColor,
                  "\" transform=\"rotate(-90 25 ", Num(mid_y), ")\">mean reward</text>\n",
                  "<text x=\"", Num(kWidth - 20), "\" y=\"", Num(mid_y),
                  "\" text-anchor=\"middle\" fill=\"", kAccuracyColor, "\" transform=\"rotate(90 ",
                  Num(kWidth - 20), " ", Num(mid_y), ")\">eval accuracy</text>\n");
  absl::StrAppend(&svg, "</g>\n");

  // Data.
  std::string reward_points, accuracy_points, accuracy_markers;
  int reward_count = 0;
  for (const CurvePoint& p : points) {
    if (!std::isfinite(p.update)) continue;
    if (p.mean_reward && std::isfinite(*p.mean_reward)) {
      absl::StrAppend(&reward_points, reward_count++ ? " " : "", Num(px(p.update)), ",",
                      Num(py_reward(*p.mean_reward)));
    }
    if (p.eval_accuracy && std::isfinite(*p.eval_accuracy)) {
      double x = px(p.update), y = py_accuracy(*p.eval_accuracy);
      absl::StrAppend(&accuracy_points, accuracy_points.empty() ? "" : " ", Num(x), ",", Num(y));
      absl::StrAppend(&accuracy_markers, "<circle cx=\"", Num(x), "\" cy=\"", Num(y),
                      "\" r=\"3\"/>\n");
    }
  }
  absl::StrAppend(&svg, "<polyline id=\"reward\" fill=\"none\" stroke=\"", kRewardColor,
                  "\" stroke-width=\"2\" points=\"", reward_points, "\"/>\n");
  if (reward_count == 1) {  // a one-point polyline draws nothing
    size_t comma = reward_points.find(',');
    absl::StrAppend(&svg, "<circle cx=\"", reward_points.substr(0, comma), "\" cy=\"",
                    reward_points.substr(comma + 1), "\" r=\"3\" fill=\"", kRewardColor, "\"/>\n");
  }
  absl::StrAppend(&svg, "<polyline id=\"eval_accuracy\" fill=\"none\" stroke=\"", kAccuracyColor,
                  "\" stroke-width=\"2\" points=\"", accuracy_points, "\"/>\n", "<g fill=\"",
                  kAccuracyColor, "\">\n", accuracy_markers, "</g>\n");
  if (!any) {
    absl::StrAppend(&svg, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"", Num(mid_y),
                    "\" text-anchor=\"middle\" fill=\"#808080\">no data</text>\n");
  }

  // Legend, inside the plot area's top-left corner.
  double lx = kLeft + 12, ly = kTop + 12;
  absl::StrAppend(&svg, "<g id=\"legend\">\n", "<rect x=\"", Num(lx - 6), "\" y=\"", Num(ly - 6),
                  "\" width=\"150\" height=\"46\" fill=\"white\" ",
                  "fill-opacity=\"0.85\" stroke=\"#a0a0a0\"/>\n");
  absl::StrAppend(&svg, "<line x1=\"", Num(lx), "\" y1=\"", Num(ly + 6), "\" x2=\"", Num(lx + 24),
                  "\" y2=\"", Num(ly + 6), "\" stroke=\"", kRewardColor,
                  "\" stroke-width=\"2\"/>\n", "<text x=\"", Num(lx + 30), "\" y=\"", Num(ly + 10),
                  "\">mean reward</text>\n");
  absl::StrAppend(&svg, "<line x1=\"", Num(lx), "\" y1=\"", Num(ly + 26), "\" x2=\"", Num(lx + 24),
                  "\" y2=\"", Num(ly + 26), "\" stroke=\"", kAccuracyColor,
                  "\" stroke-width=\"2\"/>\n", "<circle cx=\"", Num(lx + 12), "\" cy=\"",
                  Num(ly + 26), "\" r=\"3\" fill=\"", kAccuracyColor, "\"/>\n", "<text x=\"",
                  Num(lx + 30), "\" y=\"", Num(ly + 30), "\">eval accuracy</text>\n", "</g>\n");
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

absl::Status WriteCurveSvg(const std::string& metrics_csv_path, const std::string& svg_path,
                           absl::string_view title) {
  std::ifstream in(metrics_csv_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", metrics_csv_path));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<std::vector<CurvePoint>> points = CurveFromMetricsCsv(text);
  if (!points.ok()) {
    return absl::Status(points.status().code(),
                        absl::StrCat(metrics_csv_path, ": ", points.status().message()));
  }
  std::ofstream out(svg_path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", svg_path));
  out << RenderCurveSvg(*points, title);
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing ", svg_path));
  return absl::OkStatus();
}

}  // namespace pmdrl
