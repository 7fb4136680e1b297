// `pmdrl compare` end to end: two losses x two seeds, each a real `pmdrl local` run,
// then the table, the CSV and the plot; a second call keeps the finished runs.
#include <gtest/gtest.h>

#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

TEST(Compare, RunsEveryVariantAndSeedAndWritesOneTable) {
  fs::path dir = FreshDir("compare");
  fs::path config = dir / "config.yaml";
  std::ofstream(config) << TestConfig(dir / "unused",
                                      "compare:\n  variants: [grpo, 'pmd_part:learner.tau=0.5']\n"
                                      "  seeds: [1, 2]\n  output: " +
                                          (dir / "out").string() + "\n");
  const std::vector<std::string> argv = {Bin("cli/pmdrl"), "compare", "--config", config.string(),
                                         "--learner.updates=2"};
  auto [rc, out] = RunCommand(argv, {}, std::chrono::seconds(480));
  ASSERT_EQ(rc, 0) << out;
  fs::path results = dir / "out";
  EXPECT_NE(out.find("4 runs (2 variants x 2 seeds)"), std::string::npos) << out;

  // Each run kept its configuration (with the variant's loss and overrides) and metrics.
  for (const char* run : {"grpo-seed1", "grpo-seed2", "pmd_part_learner.tau_0.5-seed1",
                          "pmd_part_learner.tau_0.5-seed2"}) {
    const std::string yaml = ReadAll(results / run / "config.yaml");
    const bool grpo = std::string(run).rfind("grpo", 0) == 0;
    EXPECT_NE(yaml.find(grpo ? "loss: grpo" : "loss: pmd_part"), std::string::npos) << run;
    if (!grpo) {
      EXPECT_NE(yaml.find("tau: 0.5"), std::string::npos) << run;
    }
    EXPECT_NE(yaml.find(std::string("seed: ") + run[std::string(run).size() - 1]),
              std::string::npos)
        << run;
    auto rows = ReadCsv(results / run / "metrics.csv");
    ASSERT_FALSE(rows.empty()) << run;
    EXPECT_EQ(rows.back().at("update"), "2") << run;
  }
  const std::string md = ReadAll(results / "results.md");
  EXPECT_NE(md.find("| grpo | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| pmd_part:learner.tau=0.5 | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("pmdrl compare --config"), std::string::npos) << md;
  auto csv = ReadCsv(results / "results.csv");
  ASSERT_EQ(csv.size(), 4u);
  for (const auto& row : csv) EXPECT_EQ(row.at("updates"), "2");
  const std::string svg = ReadAll(results / "curves.svg");
  EXPECT_EQ(Count(svg, "class=\"accuracy\""), 4u);
  EXPECT_EQ(Count(svg, "class=\"reward\""), 4u);

  // The same command again keeps every finished run.
  auto [rc2, out2] = RunCommand(argv, {}, std::chrono::seconds(120));
  ASSERT_EQ(rc2, 0) << out2;
  EXPECT_EQ(Count(out2, "finished before with the same settings, kept"), 4u) << out2;

  // A bad variant is refused before anything runs.
  auto [rc3, out3] = RunCommand(
      {Bin("cli/pmdrl"), "compare", "--config", config.string(), "--compare.variants=ppo"}, {},
      std::chrono::seconds(60));
  EXPECT_EQ(rc3, 2) << out3;
  EXPECT_NE(out3.find("learner.loss"), std::string::npos) << out3;
}

}  // namespace
}  // namespace pmdrl
