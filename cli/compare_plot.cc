#include "cli/compare_plot.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/plot.h"

namespace pmdrl {
namespace {

constexpr double kWidth = 900;
constexpr double kHeight = 640;
constexpr double kLeft = 80;
constexpr double kRight = 700;  // the legend sits to the right
constexpr double kTop = 50;
constexpr double kPanelHeight = 240;
constexpr double kGap = 60;
constexpr int kRewardWindow = 5;

// Colour-blind-friendly (Okabe–Ito) colours, one per variant in order of appearance.
constexpr const char* kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                   "#E69F00", "#56B4E9", "#000000", "#F0E442"};

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

double Map(double v, double lo, double hi, double a, double b) {
  double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  return a + std::clamp(t, 0.0, 1.0) * (b - a);
}

struct Panel {
  double top, bottom, lo, hi;
  std::vector<double> ticks;
  const char* title;
  bool percent;
};

std::vector<std::pair<double, double>> MovingAverage(
    const std::vector<std::pair<double, double>>& points, int window) {
  std::vector<std::pair<double, double>> out;
  std::deque<double> last;
  double sum = 0;
  for (const auto& [x, y] : points) {
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    last.push_back(y);
    sum += y;
    if (static_cast<int>(last.size()) > window) {
      sum -= last.front();
      last.pop_front();
    }
    out.emplace_back(x, sum / static_cast<double>(last.size()));
  }
  return out;
}

}  // namespace

std::string RenderComparisonSvg(const std::vector<ComparisonCurve>& curves,
                                absl::string_view title) {
  double x_hi = 1;
  for (const ComparisonCurve& c : curves) {
    for (const auto* series : {&c.accuracy, &c.reward}) {
      for (const auto& [x, y] : *series) {
        if (std::isfinite(x)) x_hi = std::max(x_hi, x);
      }
    }
  }
  auto px = [&](double u) { return Map(u, 0, x_hi, kLeft, kRight); };
  const Panel panels[] = {
      {kTop, kTop + kPanelHeight, 0, 1, {0, 0.25, 0.5, 0.75, 1}, "eval accuracy", true},
      {kTop + kPanelHeight + kGap,
       kTop + 2 * kPanelHeight + kGap,
       -1,
       1,
       {-1, -0.5, 0, 0.5, 1},
       "mean reward (5-update avg)",
       false}};
  std::map<std::string, size_t> color_of;
  std::vector<std::string> labels;
  for (const ComparisonCurve& c : curves) {
    if (color_of.emplace(c.label, color_of.size()).second) labels.push_back(c.label);
  }
  auto color = [&](const std::string& label) {
    return kColors[color_of.at(label) % (sizeof(kColors) / sizeof(kColors[0]))];
  };

  std::string svg = SvgOpen(kWidth, kHeight);
  absl::StrAppend(&svg, "<text x=\"", Num((kLeft + kRight) / 2),
                  "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">", EscapeXml(title),
                  "</text>\n");
  const std::vector<double> x_ticks = NiceTicks(0, x_hi, 8);  // + 0.0 below: no "-0"
  for (const Panel& p : panels) {
    auto py = [&](double v) { return Map(v, p.lo, p.hi, p.bottom, p.top); };
    absl::StrAppend(&svg, "<g stroke=\"#e0e0e0\">\n");
    for (double v : p.ticks) {
      absl::StrAppend(&svg, "<line x1=\"", Num(kLeft), "\" y1=\"", Num(py(v)), "\" x2=\"",
                      Num(kRight), "\" y2=\"", Num(py(v)), "\"/>\n");
    }
    for (double u : x_ticks) {
      absl::StrAppend(&svg, "<line x1=\"", Num(px(u)), "\" y1=\"", Num(p.top), "\" x2=\"",
                      Num(px(u)), "\" y2=\"", Num(p.bottom), "\"/>\n");
    }
    absl::StrAppend(&svg, "</g>\n<rect x=\"", Num(kLeft), "\" y=\"", Num(p.top), "\" width=\"",
                    Num(kRight - kLeft), "\" height=\"", Num(p.bottom - p.top),
                    "\" fill=\"none\" stroke=\"black\"/>\n");
    for (double v : p.ticks) {
      absl::StrAppend(
          &svg, "<text x=\"", Num(kLeft - 8), "\" y=\"", Num(py(v) + 4), "\" text-anchor=\"end\">",
          p.percent ? absl::StrFormat("%g%%", v * 100) : absl::StrFormat("%g", v), "</text>\n");
    }
    for (double u : x_ticks) {
      absl::StrAppend(&svg, "<text x=\"", Num(px(u)), "\" y=\"", Num(p.bottom + 16),
                      "\" text-anchor=\"middle\">", absl::StrFormat("%g", u + 0.0), "</text>\n");
    }
    const double mid = (p.top + p.bottom) / 2;
    absl::StrAppend(&svg, "<text x=\"22\" y=\"", Num(mid), "\" text-anchor=\"middle\" ",
                    "transform=\"rotate(-90 22 ", Num(mid), ")\">", p.title, "</text>\n");
  }
  absl::StrAppend(&svg, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"",
                  Num(panels[1].bottom + 36), "\" text-anchor=\"middle\">update</text>\n");

  for (const ComparisonCurve& c : curves) {
    const std::vector<std::pair<double, double>>* series[] = {&c.accuracy, nullptr};
    const std::vector<std::pair<double, double>> smoothed = MovingAverage(c.reward, kRewardWindow);
    series[1] = &smoothed;
    const char* cls[] = {"accuracy", "reward"};
    for (int i = 0; i < 2; ++i) {
      const Panel& p = panels[i];
      std::string points;
      for (const auto& [x, y] : *series[i]) {
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        absl::StrAppend(&points, points.empty() ? "" : " ", Num(px(x)), ",",
                        Num(Map(y, p.lo, p.hi, p.bottom, p.top)));
      }
      absl::StrAppend(&svg, "<polyline class=\"", cls[i], "\" data-label=\"", EscapeXml(c.label),
                      "\" fill=\"none\" stroke=\"", color(c.label),
                      "\" stroke-width=\"1.5\" stroke-opacity=\"0.8\" points=\"", points, "\"/>\n");
    }
  }

  double ly = kTop + 10;
  absl::StrAppend(&svg, "<g id=\"legend\">\n");
  for (const std::string& label : labels) {
    absl::StrAppend(&svg, "<line x1=\"", Num(kRight + 20), "\" y1=\"", Num(ly), "\" x2=\"",
                    Num(kRight + 44), "\" y2=\"", Num(ly), "\" stroke=\"", color(label),
                    "\" stroke-width=\"3\"/>\n<text x=\"", Num(kRight + 50), "\" y=\"", Num(ly + 4),
                    "\">", EscapeXml(label), "</text>\n");
    ly += 20;
  }
  absl::StrAppend(&svg, "</g>\n");
  if (curves.empty()) {
    absl::StrAppend(&svg, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"",
                    Num(kTop + kPanelHeight / 2), "\" text-anchor=\"middle\" fill=\"#808080\">",
                    "no data</text>\n");
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace pmdrl
