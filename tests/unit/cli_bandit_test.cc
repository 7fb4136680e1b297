// `pmdrl bandit`: flag parsing, the JSON report, and the issue's example.
#include <cmath>
#include <string>
#include <vector>

#include "cli/bandit.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

absl::StatusOr<BanditFlags> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "bandit");
  return ParseBanditFlags(static_cast<int>(args.size()), args.data());
}

std::string ErrorOf(std::vector<const char*> args) {
  absl::StatusOr<BanditFlags> f = Parse(std::move(args));
  EXPECT_FALSE(f.ok());
  return f.ok() ? "" : std::string(f.status().message());
}

TEST(BanditFlagsTest, BothFlagForms) {
  absl::StatusOr<BanditFlags> a =
      Parse({"--pi-old", "0.5,0.3,0.2", "--rewards", "0,1,0.5", "--tau", "0.3", "--json"});
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<BanditFlags> b =
      Parse({"--pi-old=0.5,0.3,0.2", "--rewards=0, 1, 0.5", "--tau=0.3", "--json"});
  ASSERT_TRUE(b.ok()) << b.status();
  for (const BanditFlags* f : {&*a, &*b}) {
    EXPECT_EQ(f->pi_old, (std::vector<double>{0.5, 0.3, 0.2}));
    EXPECT_EQ(f->rewards, (std::vector<double>{0, 1, 0.5}));
    EXPECT_EQ(f->taus, (std::vector<double>{0.3}));
    EXPECT_TRUE(f->json);
    EXPECT_FALSE(f->binary);
  }
}

TEST(BanditFlagsTest, Defaults) {
  absl::StatusOr<BanditFlags> one = Parse({"--rewards", "1,0,0,0"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->pi_old, (std::vector<double>(4, 0.25)));
  EXPECT_EQ(one->taus, (std::vector<double>{1.0}));
  absl::StatusOr<BanditFlags> bin = Parse({"--binary"});
  ASSERT_TRUE(bin.ok()) << bin.status();
  EXPECT_EQ(bin->ps, (std::vector<double>{0.05, 0.1, 0.2, 0.5, 0.8}));
  EXPECT_EQ(bin->taus, (std::vector<double>{0.01, 0.1, 1}));
  EXPECT_EQ(bin->reward_correct, 1);
  EXPECT_EQ(bin->reward_incorrect, -1);
  absl::StatusOr<BanditFlags> help = Parse({"--rewards", "1,0", "--help"});
  ASSERT_TRUE(help.ok()) << help.status();
  EXPECT_TRUE(help->help);
}

TEST(BanditFlagsTest, ErrorsNameTheFlag) {
  EXPECT_NE(ErrorOf({"--pi-old", "0.5,0.5", "--rewards", "1,0,0"})
                .find("--pi-old has 2 values but --rewards has 3"),
            std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,x"}).find("--rewards"), std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,0", "--tau"}).find("--tau needs a value"), std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,0", "--tau", "0.1,1"}).find("--tau takes one value"),
            std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,0", "--tau", "0"}).find("--tau"), std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,0", "--bogus"}).find("'--bogus'"), std::string::npos);
  EXPECT_NE(ErrorOf({"--pi-old", "0.5,0.5"}).find("--rewards is required"), std::string::npos);
  EXPECT_NE(ErrorOf({"--rewards", "1,0", "--p", "0.5"}).find("--p needs --binary"),
            std::string::npos);
  EXPECT_NE(ErrorOf({"--binary", "--rewards", "1,0"}).find("--rewards"), std::string::npos);
  EXPECT_NE(ErrorOf({"--binary", "--p", "0,0.5"}).find("--p"), std::string::npos);
  EXPECT_NE(ErrorOf({"--json=yes", "--rewards", "1,0"}).find("--json takes no value"),
            std::string::npos);
  EXPECT_NE(ErrorOf({"--binary", "--reward-correct", "inf"}).find("--reward-correct"),
            std::string::npos);
}

TEST(BanditRenderTest, InvalidProblemIsAnError) {
  absl::StatusOr<BanditFlags> f = Parse({"--pi-old", "0.5,0.4", "--rewards", "1,0"});
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::string> out = RenderBandit(*f);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(std::string(out.status().message()).find("pi_old sums to"), std::string::npos);
}

TEST(BanditRenderTest, IssueExampleJson) {
  absl::StatusOr<BanditFlags> f =
      Parse({"--pi-old", "0.5,0.3,0.2", "--rewards", "0,1,0.5", "--tau", "0.3", "--json"});
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::string> out = RenderBandit(*f);
  ASSERT_TRUE(out.ok()) << out.status();
  nlohmann::json j = nlohmann::json::parse(*out);
  ASSERT_TRUE(j.is_object());
  for (const char* key :
       {"pmd_mean", "exact_pmd", "lambda", "kl", "chi2_coef", "gradient_descent"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  const std::vector<double> pi = j["pmd_mean"];
  const std::vector<double> gd = j["gradient_descent"];
  const std::vector<double> exact = j["exact_pmd"];
  ASSERT_EQ(pi.size(), 3u);
  ASSERT_EQ(gd.size(), 3u);
  ASSERT_EQ(exact.size(), 3u);
  double sum = 0, sum_exact = 0;
  for (size_t y = 0; y < 3; ++y) {
    sum += pi[y];
    sum_exact += exact[y];
    EXPECT_NEAR(pi[y], gd[y], 1e-9) << y;
  }
  EXPECT_NEAR(sum, 1, 1e-12);
  EXPECT_NEAR(sum_exact, 1, 1e-12);
  // The best response (reward 1) gains mass; the worst (reward 0) loses it.
  EXPECT_GT(pi[1], 0.3);
  EXPECT_LT(pi[0], 0.5);
  // λ = KL and c = τ·KL, read back at full precision.
  const double lambda = j["lambda"], kl = j["kl"], c = j["chi2_coef"];
  EXPECT_GT(lambda, 0);
  EXPECT_NEAR(lambda, kl, 1e-12);
  EXPECT_DOUBLE_EQ(c, 0.3 * kl);
  // Exact PMD in closed form: π ∝ π_old·e^{r/τ}.
  const double w0 = 0.5, w1 = 0.3 * std::exp(1 / 0.3), w2 = 0.2 * std::exp(0.5 / 0.3);
  EXPECT_NEAR(exact[1], w1 / (w0 + w1 + w2), 1e-14);
}

TEST(BanditRenderTest, IssueExampleTable) {
  absl::StatusOr<BanditFlags> f = Parse({"--pi-old=0.5,0.3,0.2", "--rewards=0,1,0.5", "--tau=0.3"});
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::string> out = RenderBandit(*f);
  ASSERT_TRUE(out.ok()) << out.status();
  for (const char* s :
       {"pmd_mean", "exact_pmd", "descent", "lambda:", "kl(pi_old||pi*):", "chi2_coef",
        "max |lambert_w - descent|", "descent_iterations:", "converged"}) {
    EXPECT_NE(out->find(s), std::string::npos) << s << "\n" << *out;
  }
  EXPECT_EQ(out->find("NOT converged"), std::string::npos) << *out;
}

TEST(BanditRenderTest, BinarySweepJson) {
  absl::StatusOr<BanditFlags> f =
      Parse({"--binary", "--p", "0.05,0.5", "--tau=0.001,0.1,1", "--json"});
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::string> out = RenderBandit(*f);
  ASSERT_TRUE(out.ok()) << out.status();
  nlohmann::json rows = nlohmann::json::parse(*out);
  ASSERT_TRUE(rows.is_array());
  ASSERT_EQ(rows.size(), 6u);
  for (const nlohmann::json& row : rows) {
    const double p = row["p"], tau = row["tau"];
    EXPECT_DOUBLE_EQ(double(row["tau_over_p"]), tau / p);
    const double pm = row["p_new_pmd_mean"], pe = row["p_new_exact"];
    EXPECT_GT(pm, p);
    EXPECT_GE(pe, pm);  // exact PMD is the more aggressive update for ±1 rewards
    const double log_fail = row["log_fail_pmd_mean"];
    EXPECT_TRUE(std::isfinite(log_fail));
    EXPECT_LT(log_fail, std::log(1 - p));
  }
  // p = 0.05, τ = 0.001: 1 − p' ≈ 0.95·e^{−2·0.05/0.001} = 0.95·e^{−100} (PMD-mean).
  EXPECT_NEAR(double(rows[0]["log_fail_pmd_mean"]), std::log(0.95) - 100, 1e-6);
}

TEST(BanditRunTest, ExitCodes) {
  const char* help[] = {"bandit", "--help"};
  EXPECT_EQ(RunBandit(2, const_cast<char**>(help)), 0);
  const char* bad[] = {"bandit", "--nope"};
  EXPECT_EQ(RunBandit(2, const_cast<char**>(bad)), 2);
  const char* invalid[] = {"bandit", "--pi-old", "0.9,0.9", "--rewards", "1,0"};
  EXPECT_EQ(RunBandit(5, const_cast<char**>(invalid)), 2);
  const char* ok[] = {"bandit", "--rewards", "1,0", "--tau", "0.5"};
  EXPECT_EQ(RunBandit(5, const_cast<char**>(ok)), 0);
}

}  // namespace
}  // namespace pmdrl
