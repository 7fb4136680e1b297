// `pmdrl compare`'s pieces: variant parsing, run folder names, the summary of a
// metrics.csv, the tables and the plot.
#include <string>

#include "cli/compare.h"
#include "cli/csv.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

// A run's metrics.csv, reduced to the columns compare reads (plus one it ignores):
// base 20%, evaluations every 2 updates, reaching +25 points at update 4.
constexpr char kMetrics[] =
    "update,elapsed_seconds,mean_reward,eval_accuracy,mean_abs_delta,entropy,loss\n"
    "0,1.0,,0.20,,,\n"
    "1,2.0,-0.5,,0.10,1.0,0.3\n"
    "2,3.0,-0.3,0.30,0.20,0.9,0.3\n"
    "3,4.0,-0.1,,0.30,0.8,0.3\n"
    "4,5.0,0.1,0.46,0.40,0.7,0.3\n"
    "5,6.0,0.3,,0.50,0.6,0.3\n"
    "6,7.5,0.5,0.40,0.60,0.5,0.3\n";

TEST(CompareVariantTest, LossAloneOrWithOverrides) {
  absl::StatusOr<CompareVariant> plain = ParseCompareVariant("grpo");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->loss, "grpo");
  EXPECT_TRUE(plain->overrides.empty());

  absl::StatusOr<CompareVariant> v =
      ParseCompareVariant("pmd_mean:learner.tau=0.1:learner.baseline=loo");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->loss, "pmd_mean");
  EXPECT_EQ(v->label, "pmd_mean:learner.tau=0.1:learner.baseline=loo");
  ASSERT_EQ(v->overrides.size(), 2u);
  EXPECT_EQ(v->overrides[0], "learner.tau=0.1");
  EXPECT_EQ(v->overrides[1], "learner.baseline=loo");
  EXPECT_EQ(CompareRunDirName(*v, 3), "pmd_mean_learner.tau_0.1_learner.baseline_loo-seed3");

  absl::Status empty = ParseCompareVariant(":learner.tau=1").status();
  EXPECT_FALSE(empty.ok());
  EXPECT_NE(empty.message().find("no loss name"), absl::string_view::npos) << empty;
  absl::Status seed = ParseCompareVariant("grpo:run.seed=4").status();
  EXPECT_NE(seed.message().find("run.seed is set by compare itself"), absl::string_view::npos)
      << seed;
  absl::Status no_eq = ParseCompareVariant("pmd_mean:tau").status();
  EXPECT_FALSE(no_eq.ok());
  EXPECT_NE(no_eq.message().find("'tau' is not section.key=value"), absl::string_view::npos)
      << no_eq;
}

TEST(CompareSummaryTest, ReadsEveryFigureFromTheMetrics) {
  absl::StatusOr<CsvTable> t = CsvTable::Parse(kMetrics);
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<RunSummary> s = SummariseRun(*t, /*target_gain=*/0.25, /*eval_last=*/2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->updates, 6);
  EXPECT_DOUBLE_EQ(s->base_accuracy, 0.20);
  EXPECT_DOUBLE_EQ(s->final_accuracy, (0.46 + 0.40) / 2);  // the last 2 evaluations
  EXPECT_DOUBLE_EQ(s->best_accuracy, 0.46);
  ASSERT_TRUE(s->updates_to_target.has_value());
  EXPECT_EQ(*s->updates_to_target, 4);      // 0.30 < 0.45 <= 0.46
  EXPECT_NEAR(s->reward_area, 0.0, 1e-12);  // mean of -0.5..0.5
  EXPECT_NEAR(s->mean_abs_delta, 0.35, 1e-12);
  EXPECT_DOUBLE_EQ(s->final_entropy, 0.5);  // the last tenth: one update
  EXPECT_DOUBLE_EQ(s->wall_seconds, 7.5);

  absl::StatusOr<RunSummary> far = SummariseRun(*t, 0.5, 2);
  ASSERT_TRUE(far.ok());
  EXPECT_FALSE(far->updates_to_target.has_value());
}

TEST(CompareSummaryTest, MissingColumnIsNamed) {
  absl::StatusOr<CsvTable> t = CsvTable::Parse("update,mean_reward\n0,\n1,0.5\n");
  ASSERT_TRUE(t.ok());
  absl::Status s = SummariseRun(*t, 0.25, 3).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no column 'elapsed_seconds'"), absl::string_view::npos) << s;
}

TEST(CompareTablesTest, MeanAndSpreadPerVariant) {
  RunSummary a{.label = "pmd_mean",
               .seed = 1,
               .updates = 10,
               .base_accuracy = 0.2,
               .final_accuracy = 0.5,
               .best_accuracy = 0.6,
               .updates_to_target = 8};
  RunSummary b = a;
  b.seed = 2;
  b.final_accuracy = 0.7;
  b.updates_to_target.reset();
  RunSummary c = a;
  c.label = "grpo";
  std::string md = RenderCompareMarkdown({a, b, c}, 0.25);
  // pmd_mean: final 60.0 ± 14.1 (sd of 50 and 70), one of two runs reached the target.
  EXPECT_NE(md.find("| pmd_mean | 2 | 20.0% | 60.0 ± 14.1 | 60.0 ± 0.0 | 1/2, mean 8 |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| grpo | 1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| pmd_mean | 2 | 10 | 20.0% | 70.0% | 60.0% | not reached |"),
            std::string::npos)
      << md;
  std::string csv = RenderCompareCsv({a, b});
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "variant,seed,updates,base_accuracy,final_accuracy,best_accuracy,updates_to_target,"
            "reward_area,mean_abs_delta,final_entropy,wall_seconds");
  EXPECT_NE(csv.find("\npmd_mean,2,10,0.2000,0.7000,0.6000,,"), std::string::npos) << csv;
}

TEST(ComparePlotTest, OneColourPerVariantAndEveryRunDrawn) {
  absl::StatusOr<CsvTable> t = CsvTable::Parse(kMetrics);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<ComparisonCurve> curve = CurveOfRun(*t);
  ASSERT_TRUE(curve.ok()) << curve.status();
  EXPECT_EQ(curve->accuracy.size(), 4u);  // updates 0, 2, 4, 6
  EXPECT_EQ(curve->reward.size(), 6u);    // updates 1..6
  ComparisonCurve x = *curve, y = *curve, z = *curve;
  x.label = y.label = "pmd_mean";
  z.label = "grpo<&>";
  std::string svg = RenderComparisonSvg({x, y, z}, "t");
  size_t runs = 0;
  for (size_t p = svg.find("class=\"accuracy\""); p != std::string::npos;
       p = svg.find("class=\"accuracy\"", p + 1)) {
    ++runs;
  }
  EXPECT_EQ(runs, 3u);
  EXPECT_NE(svg.find("data-label=\"grpo&lt;&amp;&gt;\""), std::string::npos);
  // Two legend entries: the seeds of a variant share one.
  size_t legend = svg.find("<g id=\"legend\">");
  ASSERT_NE(legend, std::string::npos);
  std::string tail = svg.substr(legend);
  size_t entries = 0;
  for (size_t p = tail.find("<text"); p != std::string::npos; p = tail.find("<text", p + 1)) {
    ++entries;
  }
  EXPECT_EQ(entries, 2u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find(">-0<"), std::string::npos);  // the first x tick reads 0
}

}  // namespace
}  // namespace pmdrl
