#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/csv.h"
#include "cli/plot.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

constexpr char kHeader[] =
    "update,version,elapsed_seconds,mean_reward,eval_accuracy,loss,grad_norm,"
    "mixed_groups_fraction,trained_tokens_per_second,sampled_tokens_per_second,"
    "staleness_mean,logprob_mismatch,groups_accepted,groups_dropped_stale\n";

std::string SampleCsv() {
  return std::string(kHeader) +
         "0,0,1.5,,0.25,,,,,,,,0,0\n"
         "1,1,3.0,-0.5,,0.7,1.2,0.5,100,200,0.5,0.01,64,0\n"
         "2,2,4.5,0.0,0.5,0.6,1.1,0.6,110,210,0.4,0.01,128,1\n"
         "3,3,6.0,1.0,,0.5,1.0,0.7,120,220,0.3,0.01,192,1\n";
}

// The "x,y" pairs of the polyline with the given id.
std::vector<std::pair<double, double>> PolylinePoints(const std::string& svg,
                                                      const std::string& id) {
  std::vector<std::pair<double, double>> out;
  size_t at = svg.find("<polyline id=\"" + id + "\"");
  if (at == std::string::npos) return out;
  size_t p = svg.find("points=\"", at);
  size_t end = svg.find('"', p + 8);
  std::string points = svg.substr(p + 8, end - p - 8);
  for (absl::string_view pair : absl::StrSplit(points, ' ', absl::SkipEmpty())) {
    std::vector<std::string> xy = absl::StrSplit(pair, ',');
    double x = 0, y = 0;
    EXPECT_EQ(xy.size(), 2u);
    EXPECT_TRUE(absl::SimpleAtod(xy[0], &x));
    EXPECT_TRUE(absl::SimpleAtod(xy[1], &y));
    out.push_back({x, y});
  }
  return out;
}

TEST(CsvTest, ParsesHeaderRowsQuotesAndEmptyFields) {
  absl::StatusOr<CsvTable> t = CsvTable::Parse("a,b,c\r\n1,\"x,\"\"y\"\"\",\n\n2,,3.5\n");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->header().size(), 3u);
  EXPECT_EQ(t->Column("c"), 2);
  EXPECT_EQ(t->Column("nope"), -1);
  ASSERT_EQ(t->num_rows(), 2u);
  EXPECT_EQ(t->Field(0, 1), "x,\"y\"");
  EXPECT_EQ(t->Field(0, 2), "");
  EXPECT_EQ(t->Field(5, 0), "");  // out of range reads empty
  absl::StatusOr<std::optional<double>> v = t->Number(1, 2);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(v->has_value());
  EXPECT_DOUBLE_EQ(**v, 3.5);
  v = t->Number(1, 1);
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(v->has_value());
}

TEST(CsvTest, BadNumberNamesLineAndColumn) {
  absl::StatusOr<CsvTable> t = CsvTable::Parse("a,b\n1,2\n3,oops\n");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::optional<double>> v = t->Number(1, 1);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("line 3"), absl::string_view::npos) << v.status();
  EXPECT_NE(v.status().message().find("column b"), absl::string_view::npos) << v.status();
}

TEST(CsvTest, EmptyTextIsAnError) { EXPECT_FALSE(CsvTable::Parse("\n\n").ok()); }

TEST(CurveTest, ReadsMetricsColumnsByName) {
  absl::StatusOr<std::vector<CurvePoint>> points = CurveFromMetricsCsv(SampleCsv());
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 4u);
  EXPECT_EQ((*points)[0].update, 0);
  EXPECT_FALSE((*points)[0].mean_reward.has_value());
  ASSERT_TRUE((*points)[0].eval_accuracy.has_value());
  EXPECT_DOUBLE_EQ(*(*points)[0].eval_accuracy, 0.25);
  EXPECT_DOUBLE_EQ(*(*points)[1].mean_reward, -0.5);
  EXPECT_FALSE((*points)[1].eval_accuracy.has_value());
  EXPECT_DOUBLE_EQ(*(*points)[3].mean_reward, 1.0);
}

TEST(CurveTest, MissingColumnIsNamed) {
  absl::StatusOr<std::vector<CurvePoint>> points = CurveFromMetricsCsv("update,loss\n1,0.5\n");
  ASSERT_FALSE(points.ok());
  EXPECT_NE(points.status().message().find("mean_reward"), absl::string_view::npos);
}

TEST(NiceTicksTest, StepsAreNiceAndInsideRange) {
  std::vector<double> t = NiceTicks(-1, 1, 5);
  ASSERT_EQ(t.size(), 5u);
  EXPECT_DOUBLE_EQ(t.front(), -1);
  EXPECT_DOUBLE_EQ(t[2], 0);
  EXPECT_DOUBLE_EQ(t.back(), 1);

  t = NiceTicks(0, 100, 8);  // raw step 14.3 -> 20
  ASSERT_EQ(t.size(), 6u);
  EXPECT_DOUBLE_EQ(t[1], 20);
  EXPECT_DOUBLE_EQ(t.back(), 100);

  t = NiceTicks(3, 17, 8);  // raw 2 -> 2; first multiple >= 3 is 4
  ASSERT_FALSE(t.empty());
  EXPECT_DOUBLE_EQ(t.front(), 4);
  EXPECT_LE(t.back(), 17);
  for (double v : t) {
    EXPECT_GE(v, 3);
    EXPECT_LE(v, 17);
  }
  EXPECT_EQ(NiceTicks(5, 5, 8), std::vector<double>{5});
}

TEST(RenderTest, MapsValuesOntoAxes) {
  absl::StatusOr<std::vector<CurvePoint>> points = CurveFromMetricsCsv(SampleCsv());
  ASSERT_TRUE(points.ok());
  std::string svg = RenderCurveSvg(*points, "run <a&b>");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_NE(svg.find("run &lt;a&amp;b&gt;"), std::string::npos);  // escaped title
  EXPECT_NE(svg.find(">mean reward<"), std::string::npos);
  EXPECT_NE(svg.find(">eval accuracy<"), std::string::npos);
  EXPECT_NE(svg.find(">update<"), std::string::npos);
  EXPECT_EQ(svg.find("<script"), std::string::npos);

  // Reward: updates 1..3 (update 0 has none) at -0.5, 0, 1.
  std::vector<std::pair<double, double>> reward = PolylinePoints(svg, "reward");
  ASSERT_EQ(reward.size(), 3u);
  EXPECT_LT(reward[0].first, reward[1].first);
  EXPECT_LT(reward[1].first, reward[2].first);
  EXPECT_GT(reward[0].second, reward[1].second);  // SVG y grows downwards
  EXPECT_GT(reward[1].second, reward[2].second);
  // Accuracy: updates 0 and 2 at 0.25 and 0.5.
  std::vector<std::pair<double, double>> accuracy = PolylinePoints(svg, "eval_accuracy");
  ASSERT_EQ(accuracy.size(), 2u);
  EXPECT_LT(accuracy[0].first, reward[0].first);         // update 0 is left of update 1
  EXPECT_DOUBLE_EQ(accuracy[1].first, reward[1].first);  // both at update 2
  // Reward 0 sits mid-height, as does accuracy 0.5; reward 1 at the top, where
  // accuracy 1 would be. Accuracy 0.25 is halfway between bottom and middle.
  double mid = reward[1].second, top = reward[2].second;
  EXPECT_DOUBLE_EQ(accuracy[1].second, mid);
  double bottom = mid + (mid - top);
  EXPECT_NEAR(accuracy[0].second, (bottom + mid) / 2, 0.11);
  // Reward -0.5 is a quarter of the height above the bottom.
  EXPECT_NEAR(reward[0].second, bottom - (bottom - top) / 4, 0.11);
}

TEST(RenderTest, ClampsOutOfRangeAndSkipsNonFinite) {
  std::vector<CurvePoint> points(3);
  points[0].update = 0;
  points[0].mean_reward = 5.0;  // above the axis
  points[1].update = 1;
  points[1].mean_reward = std::nan("");
  points[2].update = 2;
  points[2].mean_reward = 1.0;
  std::string svg = RenderCurveSvg(points, "t");
  std::vector<std::pair<double, double>> reward = PolylinePoints(svg, "reward");
  ASSERT_EQ(reward.size(), 2u);
  EXPECT_DOUBLE_EQ(reward[0].second, reward[1].second);
}

TEST(RenderTest, NoDataStillRenders) {
  std::string svg = RenderCurveSvg({}, "empty");
  EXPECT_NE(svg.find("no data"), std::string::npos);
  EXPECT_TRUE(PolylinePoints(svg, "reward").empty());
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
}

TEST(WriteCurveSvgTest, WritesFileAndReportsMissingInput) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("pmdrl_plot_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string csv = (dir / "metrics.csv").string(), svg = (dir / "curve.svg").string();
  {
    std::ofstream out(csv);
    out << SampleCsv();
  }
  ASSERT_TRUE(WriteCurveSvg(csv, svg, "t").ok());
  std::ifstream in(svg);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(PolylinePoints(text.str(), "reward").size(), 3u);

  absl::Status missing = WriteCurveSvg((dir / "nope.csv").string(), svg, "t");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("nope.csv"), absl::string_view::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pmdrl
