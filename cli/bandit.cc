#include "cli/bandit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "theory/bandit.h"

namespace pmdrl {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kUsage[] =
    "usage: pmdrl bandit --rewards LIST [--pi-old LIST] [--tau X] [--json]\n"
    "       pmdrl bandit --binary [--p LIST] [--tau LIST] [--reward-correct X]\n"
    "                    [--reward-incorrect X] [--json]\n"
    "\n"
    "The PMD-mean update of one prompt with discrete responses, solved exactly: the\n"
    "minimiser of E_pi_old[(r - mean r - tau*log(pi/pi_old))^2] over the simplex is\n"
    "pi*(y) = pi_old(y)*W(lambda*e^{a_y/tau})/lambda (Lambert W), lambda = KL(pi_old||pi*).\n"
    "Shown next to exact PMD (pi ~ pi_old*e^{r/tau}) and an independent gradient-descent\n"
    "minimiser of the same loss, with lambda, KL and the chi^2 weight c = tau*KL of the\n"
    "equivalent KL-chi^2 regularised objective.\n"
    "\n"
    "One bandit:\n"
    "  --rewards LIST          rewards of the responses, e.g. 0,1,0.5 (required)\n"
    "  --pi-old LIST           old policy, positive, summing to 1 (default uniform)\n"
    "  --tau X                 temperature, > 0 (default 1)\n"
    "  --descent-iterations N  cap on gradient-descent iterations (default 100000)\n"
    "\n"
    "Binary sweep (--binary): one correct response with success mass p and one incorrect;\n"
    "prints p' and 1 - p' (computed in log space) for PMD-mean and exact PMD over p x tau,\n"
    "and tau/p, the temperature at which exact PMD behaves like PMD-mean for small tau.\n"
    "  --p LIST                success masses in (0, 1) (default 0.05,0.1,0.2,0.5,0.8)\n"
    "  --tau LIST              temperatures (default 0.01,0.1,1)\n"
    "  --reward-correct X      reward of the correct response (default 1)\n"
    "  --reward-incorrect X    reward of the incorrect response (default -1)\n"
    "\n"
    "  --json                  one JSON object (an array of rows with --binary)\n"
    "\n"
    "Exit status: 0 success, 2 usage error or invalid problem.\n";

absl::StatusOr<double> ParseNumber(std::string_view flag, std::string_view text) {
  double v = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())),
                        &v) ||
      !std::isfinite(v)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s needs a finite number, not '%s'", flag, std::string(text)));
  }
  return v;
}

absl::StatusOr<std::vector<double>> ParseList(std::string_view flag, const std::string& text) {
  std::vector<double> out;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    absl::StatusOr<double> v = ParseNumber(flag, std::string_view(item.data(), item.size()));
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s needs comma-separated finite numbers; entry %d of '%s' is '%s'", flag,
                          out.size() + 1, text, std::string(item)));
    }
    out.push_back(*v);
  }
  return out;
}

std::string Number(double x) { return absl::StrFormat("%.10g", x); }

absl::StatusOr<std::string> RenderOne(const BanditFlags& flags) {
  BanditProblem problem{flags.pi_old, flags.rewards, flags.taus.at(0)};
  absl::StatusOr<PmdMeanSolution> mean = SolvePmdMean(problem);
  if (!mean.ok()) return mean.status();
  absl::StatusOr<std::vector<double>> exact_log = SolveExactPmdLog(problem);
  if (!exact_log.ok()) return exact_log.status();
  absl::StatusOr<DescentResult> descent = SolvePmdMeanByDescent(problem, flags.descent_iterations);
  if (!descent.ok()) return descent.status();
  const size_t n = problem.rewards.size();
  std::vector<double> exact(n);
  double max_diff = 0, mean_reward = 0;
  for (size_t y = 0; y < n; ++y) {
    exact[y] = std::exp((*exact_log)[y]);
    max_diff = std::max(max_diff, std::abs(mean->pi[y] - descent->pi[y]));
    mean_reward += problem.pi_old[y] * problem.rewards[y];
  }

  if (flags.json) {
    Json j;
    j["tau"] = problem.tau;
    j["pi_old"] = problem.pi_old;
    j["rewards"] = problem.rewards;
    j["pmd_mean"] = mean->pi;
    j["exact_pmd"] = exact;
    j["gradient_descent"] = descent->pi;
    j["lambda"] = mean->lambda;
    j["kl"] = mean->kl;
    j["chi2_coef"] = mean->chi2_coef;
    j["log_pmd_mean"] = mean->log_pi;
    j["log_exact_pmd"] = *exact_log;
    j["max_abs_diff_descent"] = max_diff;
    j["descent_iterations"] = descent->iterations;
    j["descent_grad_norm"] = descent->grad_norm;
    j["descent_converged"] = descent->converged;
    return j.dump() + "\n";
  }

  std::string out = absl::StrFormat("PMD-mean bandit: %d responses, tau = %s, E_pi_old[r] = %s\n\n",
                                    n, Number(problem.tau), Number(mean_reward));
  absl::StrAppendFormat(&out, "%4s %16s %16s %16s %16s %16s\n", "y", "pi_old", "reward", "pmd_mean",
                        "exact_pmd", "descent");
  for (size_t y = 0; y < n; ++y) {
    absl::StrAppendFormat(&out, "%4d %16s %16s %16s %16s %16s\n", y, Number(problem.pi_old[y]),
                          Number(problem.rewards[y]), Number(mean->pi[y]), Number(exact[y]),
                          Number(descent->pi[y]));
  }
  absl::StrAppendFormat(&out, "\nlambda:                     %.17g\n", mean->lambda);
  absl::StrAppendFormat(&out, "kl(pi_old||pi*):            %.17g\n", mean->kl);
  absl::StrAppendFormat(&out, "chi2_coef (tau*kl):         %.17g\n", mean->chi2_coef);
  absl::StrAppendFormat(&out, "max |lambert_w - descent|:  %.3g\n", max_diff);
  absl::StrAppendFormat(&out, "descent_iterations:         %d (grad norm %.3g, %s)\n",
                        descent->iterations, descent->grad_norm,
                        descent->converged ? "converged" : "NOT converged");
  return out;
}

absl::StatusOr<std::string> RenderBinary(const BanditFlags& flags) {
  Json rows = Json::array();
  std::string out = absl::StrFormat(
      "Binary bandit: reward_correct = %s, reward_incorrect = %s (gap %s); 1-p' from log "
      "space\n\n",
      Number(flags.reward_correct), Number(flags.reward_incorrect),
      Number(flags.reward_correct - flags.reward_incorrect));
  absl::StrAppendFormat(&out, "%8s %8s %10s | %13s %13s %15s | %13s %13s %15s\n", "p", "tau",
                        "tau/p", "p'_pmd_mean", "1-p'_mean", "log(1-p')_mean", "p'_exact",
                        "1-p'_exact", "log(1-p')_exact");
  for (double p : flags.ps) {
    for (double tau : flags.taus) {
      absl::StatusOr<BinaryUpdate> b =
          BinaryBandit(p, tau, flags.reward_correct, flags.reward_incorrect);
      if (!b.ok()) return b.status();
      const double fail_mean = std::exp(b->log_fail_pmd_mean);
      const double fail_exact = std::exp(b->log_fail_exact);
      Json row;
      row["p"] = p;
      row["tau"] = tau;
      row["tau_over_p"] = tau / p;
      row["p_new_pmd_mean"] = b->p_new_pmd_mean;
      row["fail_pmd_mean"] = fail_mean;
      row["log_fail_pmd_mean"] = b->log_fail_pmd_mean;
      row["p_new_exact"] = b->p_new_exact;
      row["fail_exact"] = fail_exact;
      row["log_fail_exact"] = b->log_fail_exact;
      row["lambda"] = b->lambda;
      rows.push_back(row);
      absl::StrAppendFormat(&out,
                            "%8.4g %8.4g %10.4g | %13.8f %13.4e %15.6g | %13.8f %13.4e %15.6g\n", p,
                            tau, tau / p, b->p_new_pmd_mean, fail_mean, b->log_fail_pmd_mean,
                            b->p_new_exact, fail_exact, b->log_fail_exact);
    }
  }
  if (flags.json) return rows.dump() + "\n";
  return out;
}

}  // namespace

absl::StatusOr<BanditFlags> ParseBanditFlags(int argc, const char* const* argv) {
  BanditFlags f;
  // Which flags were given, to reject one mode's flags in the other.
  bool have_pi_old = false, have_rewards = false, have_p = false, have_rc = false, have_ri = false,
       have_iterations = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      f.help = true;
      return f;
    }
    std::string_view key = arg;
    std::optional<std::string> value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      key = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    }
    if (key == "--json" || key == "--binary") {
      if (value) return absl::InvalidArgumentError(std::string(key) + " takes no value");
      (key == "--json" ? f.json : f.binary) = true;
      continue;
    }
    if (key != "--pi-old" && key != "--rewards" && key != "--tau" && key != "--p" &&
        key != "--reward-correct" && key != "--reward-incorrect" && key != "--descent-iterations") {
      return absl::InvalidArgumentError("unknown argument '" + std::string(arg) + "'");
    }
    if (!value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(std::string(key) + " needs a value");
      value = argv[++i];
    }
    if (key == "--descent-iterations") {
      int n = 0;
      if (!absl::SimpleAtoi(*value, &n) || n < 0) {
        return absl::InvalidArgumentError("--descent-iterations needs an integer >= 0, not '" +
                                          *value + "'");
      }
      f.descent_iterations = n;
      have_iterations = true;
      continue;
    }
    if (key == "--reward-correct" || key == "--reward-incorrect") {
      absl::StatusOr<double> v = ParseNumber(key, *value);
      if (!v.ok()) return v.status();
      (key == "--reward-correct" ? f.reward_correct : f.reward_incorrect) = *v;
      (key == "--reward-correct" ? have_rc : have_ri) = true;
      continue;
    }
    absl::StatusOr<std::vector<double>> list = ParseList(key, *value);
    if (!list.ok()) return list.status();
    if (key == "--pi-old") {
      f.pi_old = *list;
      have_pi_old = true;
    } else if (key == "--rewards") {
      f.rewards = *list;
      have_rewards = true;
    } else if (key == "--tau") {
      f.taus = *list;
    } else {
      f.ps = *list;
      have_p = true;
    }
  }

  if (f.binary) {
    if (have_pi_old) return absl::InvalidArgumentError("--pi-old is not used with --binary");
    if (have_rewards) {
      return absl::InvalidArgumentError(
          "--rewards is not used with --binary (use --reward-correct/--reward-incorrect)");
    }
    if (have_iterations) {
      return absl::InvalidArgumentError("--descent-iterations is not used with --binary");
    }
    if (f.ps.empty()) f.ps = {0.05, 0.1, 0.2, 0.5, 0.8};
    if (f.taus.empty()) f.taus = {0.01, 0.1, 1};
    for (double p : f.ps) {
      if (!(p > 0 && p < 1)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--p values must be in (0, 1), got %g", p));
      }
    }
    for (double tau : f.taus) {
      if (!(tau > 0)) {
        return absl::InvalidArgumentError(absl::StrFormat("--tau values must be > 0, got %g", tau));
      }
    }
    return f;
  }

  if (have_p) return absl::InvalidArgumentError("--p needs --binary");
  if (have_rc) return absl::InvalidArgumentError("--reward-correct needs --binary");
  if (have_ri) return absl::InvalidArgumentError("--reward-incorrect needs --binary");
  if (!have_rewards) return absl::InvalidArgumentError("--rewards is required (or --binary)");
  if (!have_pi_old) f.pi_old.assign(f.rewards.size(), 1.0 / f.rewards.size());
  if (f.pi_old.size() != f.rewards.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--pi-old has %d values but --rewards has %d; they must match",
                        f.pi_old.size(), f.rewards.size()));
  }
  if (f.taus.empty()) f.taus = {1.0};
  if (f.taus.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--tau takes one value without --binary, got %d", f.taus.size()));
  }
  if (!(f.taus[0] > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat("--tau must be > 0, got %g", f.taus[0]));
  }
  return f;
}

absl::StatusOr<std::string> RenderBandit(const BanditFlags& flags) {
  if (flags.taus.empty()) return absl::InvalidArgumentError("bandit: no tau given");
  return flags.binary ? RenderBinary(flags) : RenderOne(flags);
}

int RunBandit(int argc, char** argv) {
  absl::StatusOr<BanditFlags> flags = ParseBanditFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "pmdrl bandit: %s\n\n%s", std::string(flags.status().message()).c_str(),
                 kUsage);
    return 2;
  }
  if (flags->help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  absl::StatusOr<std::string> out = RenderBandit(*flags);
  if (!out.ok()) {
    std::fprintf(stderr, "pmdrl bandit: %s\n", std::string(out.status().message()).c_str());
    return 2;
  }
  std::fputs(out->c_str(), stdout);
  return 0;
}

}  // namespace pmdrl
