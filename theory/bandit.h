// The PMD-mean update of one prompt with a finite set of responses, solved exactly
// (docs/design.md "The algorithm (normative)", "Theory (testable)"): the population
// minimiser of E_{π_old}[(a − τ·log(π/π_old))²] over the simplex, a = r − E_{π_old}[r],
// in closed form through the Lambert W function, next to exact PMD (π ∝ π_old·e^{r/τ})
// and an independent gradient-descent minimiser of the same loss.
//
// Pure double-precision arithmetic, no Torch, no I/O. Everything is computed in log space,
// so τ down to 1e-3 (a/τ of a few thousand) neither overflows nor loses the small
// probabilities.
#ifndef PMDRL_LEARNER_BANDIT_H_
#define PMDRL_LEARNER_BANDIT_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

// One prompt: the old policy over n responses, their rewards and the temperature τ.
struct BanditProblem {
  std::vector<double> pi_old;
  std::vector<double> rewards;
  double tau = 1.0;
};

// OK when pi_old is non-empty, finite, every entry > 0, and sums to 1 within 1e-6;
// rewards are finite and as many as pi_old; τ is finite and > 0. The error names the
// field and, for an entry, its index. The solvers renormalise pi_old, so a sum that is
// off by rounding (< 1e-6) is accepted.
absl::Status ValidateBandit(const BanditProblem& problem);

// log W(e^s) for every finite s, W the principal branch of Lambert W: the v with
// v + e^v = s. Accurate to a few ulps of max(1, |v|); finite for all finite s
// (≈ s for s ≪ 0, ≈ log s − log log s for s ≫ 1).
double LogLambertWExp(double s);

// π* = π_old·W(λ·e^{a/τ})/λ with λ > 0 the root of Σ_y π_old(y)·W(λ·e^{a_y/τ}) = λ.
struct PmdMeanSolution {
  std::vector<double> pi;      // π*, sums to 1
  std::vector<double> log_pi;  // log π*, finite (normalised in log space)
  double lambda = 0;           // λ; equals KL(π_old‖π*); 0 when all rewards are equal
  double kl = 0;               // KL(π_old‖π*), computed from log_pi
  double chi2_coef = 0;        // c = τ·KL(π_old‖π*): the χ² weight of the KL–χ² form
  int iterations = 0;          // iterations of the root solve for log λ
  double sum_error = 0;        // Σ π_old·W(λe^{a/τ})/λ − 1 before normalisation
};

// Solves the PMD-mean population problem. All rewards equal gives π* = π_old, λ = 0.
// Errors: whatever ValidateBandit reports.
absl::StatusOr<PmdMeanSolution> SolvePmdMean(const BanditProblem& problem);

// log π for exact PMD, π ∝ π_old·e^{r/τ} (a log-space softmax). Errors: ValidateBandit.
absl::StatusOr<std::vector<double>> SolveExactPmdLog(const BanditProblem& problem);

// The PMD-mean population loss scaled by 1/τ², F(z) = Σ_y π_old(y)·(a_y/τ − log π_y +
// log π_old(y))² with π = softmax(z), minimised by gradient descent from z = log π_old.
// The step is the gradient scaled by a positive diagonal (1/(π_old + m·π), m = current
// Σ π_old·(a/τ − u) ≥ 0, which keeps the step well scaled for small τ) with Armijo
// backtracking; no Lambert W is used, so it checks SolvePmdMean independently.
struct DescentResult {
  std::vector<double> pi;
  std::vector<double> log_pi;
  int iterations = 0;
  double grad_norm = 0;    // Euclidean norm of ∇_z F at the returned point
  bool converged = false;  // grad_norm < 1e-13, or no step decreases F any more
};

// Stops when the gradient norm is < 1e-13, when no step along the descent direction
// decreases F (the rounding floor; converged), or after max_iterations (not
// converged). Errors: ValidateBandit, or max_iterations < 0.
absl::StatusOr<DescentResult> SolvePmdMeanByDescent(const BanditProblem& problem,
                                                    int max_iterations);

// KL(p‖q) = Σ p·(log p − log q) from log probabilities of equal length; a term with
// p = 0 (log p = −∞) contributes 0.
double KlDivergence(const std::vector<double>& log_p, const std::vector<double>& log_q);

// Two responses, correct (reward r_correct) with success mass p and incorrect
// (r_incorrect). The new success mass under PMD-mean and under exact PMD, and
// log(1 − p') computed in log space, so it stays exact when p' rounds to 1.
struct BinaryUpdate {
  double p_new_pmd_mean = 0;
  double log_fail_pmd_mean = 0;  // log(1 − p') for PMD-mean
  double p_new_exact = 0;
  double log_fail_exact = 0;  // log(1 − p') for exact PMD
  double lambda = 0;          // PMD-mean's λ
};

// Errors: p not in (0, 1), τ not > 0, r_correct not above r_incorrect, non-finite
// inputs.
absl::StatusOr<BinaryUpdate> BinaryBandit(double p, double tau, double r_correct,
                                          double r_incorrect);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_BANDIT_H_
