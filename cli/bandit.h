// `pmdrl bandit`: the PMD-mean update of one prompt with a few discrete responses,
// solved exactly (Lambert W), next to exact PMD and a gradient-descent check; or, with
// --binary, a sweep of the binary-reward update over success mass p and τ
// (docs/design.md "Theory (testable)").
#ifndef PMDRL_CLI_BANDIT_H_
#define PMDRL_CLI_BANDIT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// The parsed command line. Lists are comma-separated numbers.
struct BanditFlags {
  bool help = false;
  bool json = false;
  bool binary = false;
  std::vector<double> pi_old;   // one bandit; defaults to uniform over the rewards
  std::vector<double> rewards;  // one bandit; required without --binary
  std::vector<double> taus;     // one value for one bandit (default 1); a list for --binary
  std::vector<double> ps;       // --binary: success masses (default 0.05,0.1,0.2,0.5,0.8)
  double reward_correct = 1;    // --binary
  double reward_incorrect = -1;
  int descent_iterations = 100000;
};

// Parses argv (argv[0] is "bandit"); "--flag value" and "--flag=value" both work. Fills
// the defaults of the chosen mode. Errors name the flag: unknown or value-less flags,
// numbers that do not parse, --pi-old and --rewards of different lengths (both lengths
// given), more than one --tau without --binary, one mode's flags used in the other.
absl::StatusOr<BanditFlags> ParseBanditFlags(int argc, const char* const* argv);

// The report for parsed flags: a table (default) or JSON (--json). One bandit's JSON is
// an object with at least pmd_mean, exact_pmd, gradient_descent (arrays over responses),
// lambda, kl, chi2_coef; --binary's is an array with one object per (p, τ). Errors: the
// problem is invalid (ValidateBandit's message).
absl::StatusOr<std::string> RenderBandit(const BanditFlags& flags);

// The sub-command: argv starts at "bandit". Exit 0 on success (and --help), 2 on a usage
// error or an invalid problem.
int RunBandit(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_BANDIT_H_
