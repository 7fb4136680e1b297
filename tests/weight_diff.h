// How far apart two weight versions are, for the learner's equality tests.
#ifndef PMDRL_TESTS_WEIGHT_DIFF_H_
#define PMDRL_TESTS_WEIGHT_DIFF_H_

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/weight_stream.h"

namespace pmdrl {

// The largest, over tensors, of ‖a − b‖ / ‖a‖ (float64 sums). Float32 versions.
inline double WorstRelativeDifference(const WeightVersion& a, const WeightVersion& b) {
  double worst = 0;
  for (size_t t = 0; t < a.tensors.size(); ++t) {
    const float* x = a.Floats(t);
    const float* y = b.Floats(t);
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < a.tensors[t].elements(); ++i) {
      diff += std::pow(double(x[i]) - y[i], 2);
      norm += std::pow(double(x[i]), 2);
    }
    worst = std::max(worst, std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12));
  }
  return worst;
}

// The largest absolute difference of any weight. Float32 versions.
inline double LargestChange(const WeightVersion& a, const WeightVersion& b) {
  double moved = 0;
  for (size_t t = 0; t < a.tensors.size(); ++t) {
    const float* x = a.Floats(t);
    const float* y = b.Floats(t);
    for (int64_t i = 0; i < a.tensors[t].elements(); ++i) {
      moved = std::max(moved, std::abs(double(x[i]) - y[i]));
    }
  }
  return moved;
}

// Whether the two versions hold the same bits.
inline bool BitIdentical(const WeightVersion& a, const WeightVersion& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t t = 0; t < a.tensors.size(); ++t) {
    if (a.tensors[t].size != b.tensors[t].size ||
        std::memcmp(a.tensors[t].bytes.get(), b.tensors[t].bytes.get(), a.tensors[t].size) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_WEIGHT_DIFF_H_
