// How far apart two weight snapshots are, for the learner's equality tests.
#ifndef PMDRL_TESTS_WEIGHT_DIFF_H_
#define PMDRL_TESTS_WEIGHT_DIFF_H_

#include <algorithm>
#include <cmath>

#include "learner/weight_publisher.h"

namespace pmdrl {

// The largest, over tensors, of ‖a − b‖ / ‖a‖ (float64 sums).
inline double WorstRelativeDifference(const WeightSnapshot& a, const WeightSnapshot& b) {
  double worst = 0;
  for (size_t t = 0; t < a.data.size(); ++t) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a.data[t].size(); ++i) {
      diff += std::pow(double(a.data[t][i]) - b.data[t][i], 2);
      norm += std::pow(double(a.data[t][i]), 2);
    }
    worst = std::max(worst, std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12));
  }
  return worst;
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_WEIGHT_DIFF_H_
