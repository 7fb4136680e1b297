// The PMD-mean bandit theory (docs/design.md "Theory (testable)"): the Lambert-W solution
// against an independent gradient-descent minimiser and an independent solve of the
// KL–χ² regularised objective's KKT conditions, λ = KL(π_old‖π*), the binary small-τ
// asymptotics, and the solver at τ down to 1e-3.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "theory/bandit.h"

namespace pmdrl {
namespace {

// Uniform in [0, 1) from the raw 64-bit engine output, so the draws do not depend on
// the standard library's distribution implementations.
double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// A Dirichlet(1)-like π_old mixed with the uniform so its smallest entry is >= 1e-3.
std::vector<double> RandomPiOld(std::mt19937_64& rng, int n) {
  std::vector<double> g(n);
  double sum = 0;
  for (double& x : g) {
    x = -std::log(1 - Uniform(rng));
    sum += x;
  }
  const double floor = 1e-3;
  for (double& x : g) x = floor + (1 - n * floor) * x / sum;
  return g;
}

std::vector<double> RandomRewards(std::mt19937_64& rng, int n, bool binary) {
  std::vector<double> r(n);
  for (double& x : r) x = binary ? (Uniform(rng) < 0.5 ? 1.0 : -1.0) : 2 * Uniform(rng) - 1;
  // Binary draws could all be equal; force one of each so the problem is not degenerate.
  if (binary && n >= 2) {
    r[0] = 1;
    r[1] = -1;
  }
  return r;
}

struct Case {
  BanditProblem problem;
  std::string name;
};

std::vector<Case> RandomCases(const std::vector<double>& taus, uint64_t seed) {
  std::vector<Case> cases;
  std::mt19937_64 rng(seed);
  for (int n : {2, 3, 5, 10, 30}) {
    for (double tau : taus) {
      for (bool binary : {false, true}) {
        Case c;
        c.problem.pi_old = RandomPiOld(rng, n);
        c.problem.rewards = RandomRewards(rng, n, binary);
        c.problem.tau = tau;
        c.name = absl::StrFormat("n=%d tau=%g %s", n, tau, binary ? "binary" : "uniform");
        cases.push_back(c);
      }
    }
  }
  return cases;
}

double MaxAbsDiff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

// The maximiser of E_π[r] − τ·KL(π‖π_old) − (c/2)·χ²(π‖π_old), solved from its KKT
// conditions with no Lambert W: for a multiplier ν, each u_y = log(π_y/π_old(y)) solves
// τ·u + c·e^u = r_y − ν (increasing in u: bisection), and ν is bisected until
// Σ π_old·e^u = 1 (decreasing in ν). Returns log π.
double SolveKktU(double tau, double c, double rhs) {
  // f(u) = τu + c·e^u − rhs. f(min(0, (rhs − c)/τ)) <= 0 and f(rhs/τ) = c·e^{rhs/τ} > 0
  // (or, when rhs/τ is huge, f(log(rhs/c)) >= 0 for rhs > c).
  double lo = std::min(0.0, (rhs - c) / tau);
  double hi = rhs / tau;
  if (rhs > c) hi = std::min(hi, std::max(0.0, std::log(rhs / c)));
  if (hi < lo) hi = lo;
  auto f = [&](double u) { return tau * u + c * std::exp(std::min(u, 700.0)) - rhs; };
  while (f(hi) < 0) hi = hi + 1 + std::abs(hi);
  for (int i = 0; i < 400; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    (f(mid) < 0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

std::vector<double> SolveKlChi2Log(const BanditProblem& problem, double c) {
  const size_t n = problem.pi_old.size();
  const double rmin = *std::min_element(problem.rewards.begin(), problem.rewards.end());
  const double rmax = *std::max_element(problem.rewards.begin(), problem.rewards.end());
  std::vector<double> u(n);
  // log Σ π_old·e^{u(ν)}, by log-sum-exp since u spans thousands at small τ.
  auto log_mass = [&](double nu) {
    double m = -std::numeric_limits<double>::infinity();
    for (size_t y = 0; y < n; ++y) {
      u[y] = SolveKktU(problem.tau, c, problem.rewards[y] - nu);
      m = std::max(m, std::log(problem.pi_old[y]) + u[y]);
    }
    double s = 0;
    for (size_t y = 0; y < n; ++y) s += std::exp(std::log(problem.pi_old[y]) + u[y] - m);
    return m + std::log(s);
  };
  double lo = rmin - c - 1, hi = rmax + 1;  // mass >= 1 at lo, < 1 at hi
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    (log_mass(mid) > 0 ? lo : hi) = mid;
  }
  const double g = log_mass(0.5 * (lo + hi));
  std::vector<double> log_pi(n);
  for (size_t y = 0; y < n; ++y) log_pi[y] = std::log(problem.pi_old[y]) + u[y] - g;
  return log_pi;
}

std::vector<double> Exp(const std::vector<double>& v) {
  std::vector<double> out;
  for (double x : v) out.push_back(std::exp(x));
  return out;
}

// max_y |a_y/τ − u_y − λ·e^{u_y}| / (1 + |a_y/τ|): the Lambert-W stationarity condition.
double StationarityResidual(const BanditProblem& problem, const PmdMeanSolution& s) {
  double mean = 0;
  for (size_t y = 0; y < problem.rewards.size(); ++y) {
    mean += problem.pi_old[y] * problem.rewards[y];
  }
  double worst = 0;
  for (size_t y = 0; y < problem.rewards.size(); ++y) {
    const double t = (problem.rewards[y] - mean) / problem.tau;
    const double u = s.log_pi[y] - std::log(problem.pi_old[y]);
    worst = std::max(worst, std::abs(t - u - s.lambda * std::exp(u)) / (1 + std::abs(t)));
  }
  return worst;
}

// max_y |τ·u_y + c·e^{u_y} − r_y − ν| over y with ν fitted as the π_old-mean: the KKT
// residual of the KL–χ² form at π*, relative to the reward scale.
double KlChi2Residual(const BanditProblem& problem, const PmdMeanSolution& s) {
  const size_t n = problem.rewards.size();
  std::vector<double> k(n);
  double nu = 0;
  for (size_t y = 0; y < n; ++y) {
    const double u = s.log_pi[y] - std::log(problem.pi_old[y]);
    k[y] = problem.rewards[y] - problem.tau * u - s.chi2_coef * std::exp(u);
    nu += problem.pi_old[y] * k[y];
  }
  double worst = 0;
  for (size_t y = 0; y < n; ++y) worst = std::max(worst, std::abs(k[y] - nu));
  return worst;
}

const std::vector<double> kTaus = {0.01, 0.03, 0.1, 0.3, 1, 3, 10};

TEST(BanditTest, LambertWDescentAndKlChi2FormAgree) {
  for (const Case& c : RandomCases(kTaus, 42)) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<PmdMeanSolution> s = SolvePmdMean(c.problem);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_NEAR(Sum(s->pi), 1, 1e-12);
    EXPECT_LT(std::abs(s->sum_error), 1e-12);
    EXPECT_LT(StationarityResidual(c.problem, *s), 1e-12);
    EXPECT_GT(s->lambda, 0);

    absl::StatusOr<DescentResult> d = SolvePmdMeanByDescent(c.problem, 200000);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->converged) << "grad norm " << d->grad_norm << " after " << d->iterations;
    EXPECT_LT(MaxAbsDiff(s->pi, d->pi), 1e-6);

    std::vector<double> kkt = Exp(SolveKlChi2Log(c.problem, s->chi2_coef));
    EXPECT_LT(MaxAbsDiff(s->pi, kkt), 1e-6);
    EXPECT_LT(KlChi2Residual(c.problem, *s), 1e-9);
  }
}

TEST(BanditTest, LambdaEqualsKl) {
  for (const Case& c : RandomCases(kTaus, 42)) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<PmdMeanSolution> s = SolvePmdMean(c.problem);
    ASSERT_TRUE(s.ok()) << s.status();
    // KL recomputed here from the returned probabilities, not the solver's own field.
    double kl = 0;
    for (size_t y = 0; y < s->pi.size(); ++y) {
      kl += c.problem.pi_old[y] * (std::log(c.problem.pi_old[y]) - s->log_pi[y]);
    }
    EXPECT_NEAR(s->lambda, kl, 1e-9 * kl + 1e-15);
    EXPECT_NEAR(s->kl, kl, 1e-12 * kl + 1e-15);
    EXPECT_DOUBLE_EQ(s->chi2_coef, c.problem.tau * s->kl);
  }
}

TEST(BanditTest, AllRewardsEqualLeavesPolicyUnchanged) {
  BanditProblem p{{0.2, 0.3, 0.5}, {0.7, 0.7, 0.7}, 0.1};
  absl::StatusOr<PmdMeanSolution> s = SolvePmdMean(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->lambda, 0);
  EXPECT_EQ(s->chi2_coef, 0);
  EXPECT_LT(MaxAbsDiff(s->pi, p.pi_old), 1e-15);
}

TEST(BanditTest, BinarySmallTauAsymptotics) {
  const double delta = 2;  // rewards ±1
  for (double p : {0.05, 0.2, 0.5, 0.9}) {
    for (double divisor : {40.0, 100.0}) {
      const double tau = delta * p / divisor;
      SCOPED_TRACE(absl::StrFormat("p=%g tau=%g", p, tau));
      absl::StatusOr<BinaryUpdate> b = BinaryBandit(p, tau, 1, -1);
      ASSERT_TRUE(b.ok()) << b.status();
      // PMD-mean: 1 − p' ≈ (1 − p)·e^{−Δp/τ}, exact PMD at temperature τ/p.
      const double mean_asym = std::log(1 - p) - delta * p / tau;
      EXPECT_LT(std::abs(b->log_fail_pmd_mean - mean_asym), 1e-3);
      // Exact PMD: 1 − p' ≈ ((1 − p)/p)·e^{−Δ/τ}.
      const double exact_asym = std::log((1 - p) / p) - delta / tau;
      EXPECT_LT(std::abs(b->log_fail_exact - exact_asym), 1e-3);
      EXPECT_TRUE(std::isfinite(b->log_fail_pmd_mean));
      EXPECT_TRUE(std::isfinite(b->log_fail_exact));
      // The two are different laws: PMD-mean keeps e^{Δ(1−p)/τ}/p times more failure
      // mass, astronomically more when p is small.
      EXPECT_GT(b->log_fail_pmd_mean - b->log_fail_exact, delta * (1 - p) / tau + std::log(p) - 1);
      if (p <= 0.2) {
        EXPECT_GT(b->log_fail_pmd_mean - b->log_fail_exact, 50);
      }
      EXPECT_LE(b->p_new_pmd_mean, 1);
      EXPECT_GT(b->p_new_pmd_mean, p);
    }
  }
}

TEST(BanditTest, BinaryMatchesGeneralSolver) {
  absl::StatusOr<BinaryUpdate> b = BinaryBandit(0.3, 0.5, 1, -1);
  ASSERT_TRUE(b.ok()) << b.status();
  absl::StatusOr<PmdMeanSolution> s = SolvePmdMean({{0.3, 0.7}, {1, -1}, 0.5});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(b->p_new_pmd_mean, s->pi[0]);
  EXPECT_NEAR(std::exp(b->log_fail_pmd_mean), 1 - b->p_new_pmd_mean, 1e-15);
  // Exact PMD closed form: p' = p·e^{2/τ}/(p·e^{2/τ} + 1 − p).
  const double e = std::exp(2 / 0.5);
  EXPECT_NEAR(b->p_new_exact, 0.3 * e / (0.3 * e + 0.7), 1e-15);
  EXPECT_FALSE(BinaryBandit(0, 1, 1, -1).ok());
  EXPECT_FALSE(BinaryBandit(1, 1, 1, -1).ok());
  EXPECT_FALSE(BinaryBandit(0.5, 0, 1, -1).ok());
  EXPECT_FALSE(BinaryBandit(0.5, 1, -1, 1).ok());  // the "correct" reward must be the higher
  EXPECT_FALSE(BinaryBandit(0.5, 1, 1, 1).ok());
}

TEST(BanditTest, FiniteAndAccurateAtTinyTau) {
  for (const Case& c : RandomCases({0.001, 0.002, 0.005}, 7)) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<PmdMeanSolution> s = SolvePmdMean(c.problem);
    ASSERT_TRUE(s.ok()) << s.status();
    for (double lp : s->log_pi) EXPECT_TRUE(std::isfinite(lp)) << lp;
    EXPECT_NEAR(Sum(s->pi), 1, 1e-12);
    EXPECT_NEAR(s->lambda, s->kl, 1e-9 * s->kl);
    EXPECT_LT(StationarityResidual(c.problem, *s), 1e-12);
    EXPECT_LT(KlChi2Residual(c.problem, *s), 1e-9);
    std::vector<double> kkt = Exp(SolveKlChi2Log(c.problem, s->chi2_coef));
    EXPECT_LT(MaxAbsDiff(s->pi, kkt), 1e-6);
    absl::StatusOr<DescentResult> d = SolvePmdMeanByDescent(c.problem, 200000);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_LT(MaxAbsDiff(s->pi, d->pi), 1e-6);
    absl::StatusOr<std::vector<double>> exact = SolveExactPmdLog(c.problem);
    ASSERT_TRUE(exact.ok()) << exact.status();
    for (double lp : *exact) EXPECT_FALSE(std::isnan(lp));
  }
}

TEST(BanditTest, LogLambertWExp) {
  // W(x)·e^{W(x)} = x, i.e. v + e^v = s for v = log W(e^s). The residual divided by
  // h'(v) = 1 + e^v is the error in v itself: a few ulps of max(1, |v|).
  for (double s = -700; s <= 3000; s += 0.37) {
    const double v = LogLambertWExp(s);
    ASSERT_TRUE(std::isfinite(v)) << s;
    const double w = std::exp(v);
    EXPECT_LE(std::abs(v + w - s) / (1 + w), 1e-15 * std::max(1.0, std::abs(v))) << s;
    if (s <= 700) {
      // In linear form where e^s is representable: W·e^W / x − 1.
      EXPECT_NEAR(w * std::exp(w) / std::exp(s), 1, 1e-14 * std::max(1.0, w)) << s;
    }
  }
  EXPECT_NEAR(std::exp(LogLambertWExp(0)), 0.5671432904097838, 1e-16);           // W(1)
  EXPECT_NEAR(LogLambertWExp(1), 0, 1e-16);                                      // W(e) = 1
  EXPECT_NEAR(std::exp(LogLambertWExp(std::log(2 * std::exp(2.0)))), 2, 1e-15);  // W(2e²) = 2
  EXPECT_NEAR(LogLambertWExp(-700), -700, 1e-12);  // W(x) ≈ x for tiny x
}

TEST(BanditTest, ValidationNamesTheProblem) {
  auto message = [](const BanditProblem& p) { return std::string(ValidateBandit(p).message()); };
  EXPECT_TRUE(ValidateBandit({{0.5, 0.5}, {1, 0}, 1}).ok());
  EXPECT_TRUE(ValidateBandit({{0.5, 0.5 + 1e-9}, {1, 0}, 1}).ok());  // renormalised
  EXPECT_NE(message({{0.5, 0.4}, {1, 0}, 1}).find("sums to"), std::string::npos);
  EXPECT_NE(message({{1.5, -0.5}, {1, 0}, 1}).find("pi_old[1]"), std::string::npos);
  EXPECT_NE(message({{0.5, 0.5}, {1, 0, 2}, 1}).find("rewards has 3"), std::string::npos);
  EXPECT_NE(message({{0.5, 0.5}, {1, 0}, 0}).find("tau"), std::string::npos);
  EXPECT_NE(message({{0.5, 0.5}, {1, 0}, -1}).find("tau"), std::string::npos);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_NE(message({{0.5, 0.5}, {1, nan}, 1}).find("rewards[1]"), std::string::npos);
  EXPECT_NE(message({{nan, 0.5}, {1, 0}, 1}).find("pi_old[0]"), std::string::npos);
  EXPECT_NE(message({{0.5, 0.5}, {1, 0}, inf}).find("tau"), std::string::npos);
  EXPECT_NE(message({{}, {}, 1}).find("empty"), std::string::npos);
  EXPECT_FALSE(SolvePmdMean({{0.5, 0.4}, {1, 0}, 1}).ok());
  EXPECT_FALSE(SolveExactPmdLog({{0.5, 0.5}, {1}, 1}).ok());
  EXPECT_FALSE(SolvePmdMeanByDescent({{0.5, 0.5}, {1, 0}, 1}, -1).ok());
}

}  // namespace
}  // namespace pmdrl
