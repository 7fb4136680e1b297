#include "theory/bandit.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"

namespace pmdrl {
namespace {

// The problem in the form every solver uses: π_old renormalised, its logs, and the
// centred, scaled advantages t = (r − r̄)/τ.
struct Prepared {
  std::vector<double> pi_old;
  std::vector<double> log_pi_old;
  std::vector<double> t;
  double tau = 1;
  bool all_rewards_equal = false;
};

Prepared Prepare(const BanditProblem& problem) {
  Prepared p;
  const size_t n = problem.pi_old.size();
  double sum = 0;
  for (double x : problem.pi_old) sum += x;
  const double log_sum = std::log(sum);
  p.pi_old.resize(n);
  p.log_pi_old.resize(n);
  for (size_t y = 0; y < n; ++y) {
    p.pi_old[y] = problem.pi_old[y] / sum;
    p.log_pi_old[y] = std::log(problem.pi_old[y]) - log_sum;
  }
  // Two passes so that Σ π_old·t is zero to rounding of the residual, not of r̄: the
  // Lambert-W form relies on E_{π_old}[a] = 0, and at τ = 1e-3 an error in r̄ is
  // magnified a thousand times.
  double mean = 0;
  for (size_t y = 0; y < n; ++y) mean += p.pi_old[y] * problem.rewards[y];
  double residual = 0;
  for (size_t y = 0; y < n; ++y) residual += p.pi_old[y] * (problem.rewards[y] - mean);
  mean += residual;
  p.tau = problem.tau;
  p.t.resize(n);
  p.all_rewards_equal = true;
  for (size_t y = 0; y < n; ++y) {
    p.t[y] = (problem.rewards[y] - mean) / problem.tau;
    if (problem.rewards[y] != problem.rewards[0]) p.all_rewards_equal = false;
  }
  return p;
}

// The u with u + e^{ell + u} = t, i.e. u = log(W(e^{ell + t})) − ell, without forming
// ell + t (which would round away a tiny t next to a large |ell|). h(u) = u + e^{ell+u}
// − t is increasing and convex, so Newton started where h ≥ 0 decreases monotonically
// onto the root: u0 = t gives h = e^{ell+t} > 0, and when ell + t > 1, u0 = log(ell + t)
// − ell gives h = log(ell + t) > 0 and a start within log log of the root.
double SolveShifted(double t, double ell) {
  const double s = ell + t;
  double u = s <= 1 ? t : std::log(s) - ell;
  for (int i = 0; i < 100; ++i) {
    const double w = std::exp(ell + u);
    const double h = (u - t) + w;
    if (h <= 0) break;  // at the root, to rounding
    const double du = h / (1 + w);
    u -= du;
    if (du <= 1e-15 * std::max(1.0, std::abs(u))) break;
  }
  return u;
}

double LogSumExp(const std::vector<double>& x) {
  double m = -std::numeric_limits<double>::infinity();
  for (double v : x) m = std::max(m, v);
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}

// g(ell) = log Σ_y π_old(y)·e^{u_y(ell)} (the log of the unnormalised mass of π*, zero
// at the root) and g'(ell) = −Σ_y q_y·w_y/(1 + w_y) with q ∝ π_old·e^u, w = e^{ell+u}.
struct GValue {
  double g = 0;
  double dg = 0;
};

GValue EvalG(const Prepared& p, double ell, std::vector<double>* u) {
  const size_t n = p.t.size();
  u->resize(n);
  double umin = std::numeric_limits<double>::infinity();
  double umax = -umin;
  for (size_t y = 0; y < n; ++y) {
    (*u)[y] = SolveShifted(p.t[y], ell);
    umin = std::min(umin, (*u)[y]);
    umax = std::max(umax, (*u)[y]);
  }
  GValue v;
  if (umax <= 1 && umin >= -1) {
    // Small u (large τ): log1p/expm1 keep the digits that log Σ exp would cancel.
    double s = 0;
    for (size_t y = 0; y < n; ++y) s += p.pi_old[y] * std::expm1((*u)[y]);
    v.g = std::log1p(s);
  } else {
    std::vector<double> x(n);
    for (size_t y = 0; y < n; ++y) x[y] = p.log_pi_old[y] + (*u)[y];
    v.g = LogSumExp(x);
  }
  for (size_t y = 0; y < n; ++y) {
    const double q = std::exp(p.log_pi_old[y] + (*u)[y] - v.g);
    const double w = std::exp(ell + (*u)[y]);
    v.dg -= q * w / (1 + w);
  }
  return v;
}

absl::Status CheckFinite(double x, const char* name) {
  if (!std::isfinite(x)) return absl::InvalidArgumentError(absl::StrFormat("%s is %g", name, x));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateBandit(const BanditProblem& problem) {
  const size_t n = problem.pi_old.size();
  if (n == 0) return absl::InvalidArgumentError("bandit: pi_old is empty");
  if (problem.rewards.size() != n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bandit: pi_old has %d entries but rewards has %d", n, problem.rewards.size()));
  }
  if (!std::isfinite(problem.tau) || problem.tau <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bandit: tau must be finite and > 0, got %g", problem.tau));
  }
  double sum = 0;
  for (size_t y = 0; y < n; ++y) {
    const double x = problem.pi_old[y];
    if (!std::isfinite(x) || x <= 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "bandit: pi_old[%d] = %g; every probability must be finite and > 0", y, x));
    }
    if (!std::isfinite(problem.rewards[y])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "bandit: rewards[%d] = %g; every reward must be finite", y, problem.rewards[y]));
    }
    sum += x;
  }
  if (std::abs(sum - 1) > 1e-6) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bandit: pi_old sums to %.17g, not 1 (tolerance 1e-6)", sum));
  }
  return absl::OkStatus();
}

double LogLambertWExp(double s) { return SolveShifted(s, 0.0); }

double KlDivergence(const std::vector<double>& log_p, const std::vector<double>& log_q) {
  double kl = 0;
  for (size_t y = 0; y < log_p.size() && y < log_q.size(); ++y) {
    if (log_p[y] == -std::numeric_limits<double>::infinity()) continue;
    kl += std::exp(log_p[y]) * (log_p[y] - log_q[y]);
  }
  return kl;
}

absl::StatusOr<PmdMeanSolution> SolvePmdMean(const BanditProblem& problem) {
  if (absl::Status s = ValidateBandit(problem); !s.ok()) return s;
  const Prepared p = Prepare(problem);
  const size_t n = p.t.size();
  PmdMeanSolution sol;
  auto degenerate = [&] {
    sol.log_pi = p.log_pi_old;
    sol.pi = p.pi_old;
    sol.lambda = sol.kl = sol.chi2_coef = 0;
    return sol;
  };
  if (p.all_rewards_equal) return degenerate();

  // Start from the small-advantage value λ ≈ Var(t)/2 and expand a bracket [lo, hi]
  // with g(lo) > 0 > g(hi) in doubling steps; g is strictly decreasing, so the root is
  // unique. When even λ = e^-1e4 leaves g ≤ 0, the advantages are below rounding and
  // π* = π_old to double precision.
  double var = 0;
  for (size_t y = 0; y < n; ++y) var += p.pi_old[y] * p.t[y] * p.t[y];
  double x = std::clamp(std::log(std::max(0.5 * var, 1e-300)), -690.0, 690.0);
  std::vector<double> u;
  GValue gx = EvalG(p, x, &u);
  int evaluations = 1;
  double lo = x, hi = x;
  constexpr double kLimit = 1e4;
  if (gx.g > 0) {
    for (double step = 1;; step *= 2) {
      hi = lo + step;
      ++evaluations;
      if (EvalG(p, hi, &u).g <= 0) break;
      lo = hi;
      if (hi > kLimit) {
        return absl::InternalError(absl::StrFormat(
            "bandit: no upper bracket for log(lambda) up to %g (tau %g)", hi, p.tau));
      }
    }
  } else if (gx.g < 0) {
    for (double step = 1;; step *= 2) {
      lo = hi - step;
      ++evaluations;
      if (EvalG(p, lo, &u).g > 0) break;
      hi = lo;
      if (lo < -kLimit) return degenerate();
    }
  } else {
    lo = hi = x;
  }

  // Safeguarded Newton: the Newton step when it lands strictly inside the bracket,
  // bisection otherwise; every evaluation shrinks the bracket.
  int iterations = 0;
  if (lo != hi) {
    x = 0.5 * (lo + hi);
    for (iterations = 1; iterations <= 200; ++iterations) {
      gx = EvalG(p, x, &u);
      if (gx.g == 0) break;
      if (gx.g > 0) {
        lo = x;
      } else {
        hi = x;
      }
      double next = gx.dg < 0 ? x - gx.g / gx.dg : lo - 1;
      if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
      const double tol = 1e-15 * std::max(1.0, std::abs(x));
      const bool done = std::abs(next - x) <= tol || hi - lo <= tol;
      x = next;
      if (done) break;
    }
  }
  gx = EvalG(p, x, &u);
  sol.iterations = iterations + evaluations;
  sol.lambda = std::exp(x);
  sol.sum_error = std::expm1(gx.g);
  sol.log_pi.resize(n);
  sol.pi.resize(n);
  for (size_t y = 0; y < n; ++y) {
    sol.log_pi[y] = p.log_pi_old[y] + u[y] - gx.g;
    sol.pi[y] = std::exp(sol.log_pi[y]);
  }
  sol.kl = KlDivergence(p.log_pi_old, sol.log_pi);
  sol.chi2_coef = p.tau * sol.kl;
  return sol;
}

absl::StatusOr<std::vector<double>> SolveExactPmdLog(const BanditProblem& problem) {
  if (absl::Status s = ValidateBandit(problem); !s.ok()) return s;
  const Prepared p = Prepare(problem);
  // Centred advantages give the same softmax as r/τ with smaller exponents.
  std::vector<double> x(p.t.size());
  for (size_t y = 0; y < x.size(); ++y) x[y] = p.log_pi_old[y] + p.t[y];
  const double lse = LogSumExp(x);
  for (double& v : x) v -= lse;
  return x;
}

absl::StatusOr<DescentResult> SolvePmdMeanByDescent(const BanditProblem& problem,
                                                    int max_iterations) {
  if (absl::Status s = ValidateBandit(problem); !s.ok()) return s;
  if (max_iterations < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bandit: max_iterations must be >= 0, got %d", max_iterations));
  }
  const Prepared p = Prepare(problem);
  const size_t n = p.t.size();
  // z is kept normalised (z = log π), so u = z − log π_old directly.
  std::vector<double> z = p.log_pi_old;
  std::vector<double> pi(n), e(n), grad(n), d(n), step(n), de(n);
  DescentResult r;
  auto evaluate = [&] {
    double m = 0;
    for (size_t y = 0; y < n; ++y) {
      pi[y] = std::exp(z[y]);
      e[y] = p.t[y] - (z[y] - p.log_pi_old[y]);
      m += p.pi_old[y] * e[y];
    }
    double norm2 = 0;
    for (size_t y = 0; y < n; ++y) {
      grad[y] = -2 * (p.pi_old[y] * e[y] - pi[y] * m);
      norm2 += grad[y] * grad[y];
    }
    r.grad_norm = std::sqrt(norm2);
    return m;
  };
  double m = evaluate();
  for (r.iterations = 0; r.iterations < max_iterations; ++r.iterations) {
    if (r.grad_norm < 1e-13) {
      r.converged = true;
      break;
    }
    // The Hessian of F in z is about 2·diag(π_old + m·π) (m plays λ's part); scaling by
    // its inverse keeps the step size near 1 for every τ.
    const double mm = std::max(m, 0.0);
    double slope = 0;
    for (size_t y = 0; y < n; ++y) {
      d[y] = -grad[y] / (2 * (p.pi_old[y] + mm * pi[y]));
      slope += grad[y] * d[y];
    }
    bool accepted = false;
    double shift = 0;
    for (double alpha = 1; alpha > 1e-20; alpha *= 0.5) {
      // The change of F is formed from the change of e, not as F(z') − F(z): that
      // difference is lost to rounding long before the minimiser is reached when F is
      // large (small τ).
      double dmax = 0;
      for (size_t y = 0; y < n; ++y) {
        step[y] = alpha * d[y];
        dmax = std::max(dmax, std::abs(step[y]));
      }
      if (dmax <= 1) {
        double s = 0;
        for (size_t y = 0; y < n; ++y) s += pi[y] * std::expm1(step[y]);
        shift = std::log1p(s);
      } else {
        std::vector<double> zz(n);
        for (size_t y = 0; y < n; ++y) zz[y] = z[y] + step[y];
        shift = LogSumExp(zz);
      }
      double df = 0;
      for (size_t y = 0; y < n; ++y) {
        de[y] = shift - step[y];
        df += p.pi_old[y] * de[y] * (2 * e[y] + de[y]);
      }
      if (df <= 1e-4 * alpha * slope) {
        accepted = true;
        break;
      }
    }
    if (!accepted) {
      r.converged = true;  // no step decreases F: the rounding floor
      break;
    }
    for (size_t y = 0; y < n; ++y) z[y] += step[y] - shift;
    m = evaluate();
  }
  if (r.grad_norm < 1e-13) r.converged = true;
  r.log_pi = z;
  r.pi.resize(n);
  for (size_t y = 0; y < n; ++y) r.pi[y] = std::exp(z[y]);
  return r;
}

absl::StatusOr<BinaryUpdate> BinaryBandit(double p, double tau, double r_correct,
                                          double r_incorrect) {
  if (absl::Status s = CheckFinite(p, "bandit: p"); !s.ok()) return s;
  if (!(p > 0 && p < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bandit: the success mass p must be in (0, 1), got %g", p));
  }
  if (absl::Status s = CheckFinite(r_correct, "bandit: r_correct"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(r_incorrect, "bandit: r_incorrect"); !s.ok()) return s;
  if (!(r_correct > r_incorrect)) {  // else "correct" and "success mass" mean the opposite
    return absl::InvalidArgumentError(absl::StrFormat(
        "bandit: r_correct (%g) must be above r_incorrect (%g)", r_correct, r_incorrect));
  }
  BanditProblem problem{{p, 1 - p}, {r_correct, r_incorrect}, tau};
  absl::StatusOr<PmdMeanSolution> mean = SolvePmdMean(problem);
  if (!mean.ok()) return mean.status();
  absl::StatusOr<std::vector<double>> exact = SolveExactPmdLog(problem);
  if (!exact.ok()) return exact.status();
  BinaryUpdate b;
  b.p_new_pmd_mean = mean->pi[0];
  b.log_fail_pmd_mean = mean->log_pi[1];
  b.p_new_exact = std::exp((*exact)[0]);
  b.log_fail_exact = (*exact)[1];
  b.lambda = mean->lambda;
  return b;
}

}  // namespace pmdrl
