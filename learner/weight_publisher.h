// Holds the newest policy weights for streaming to actors (Coordinator.WatchWeights).
// Only the newest version is kept: an actor that was busy skips the versions in
// between, never receives an older one. Thread-safe.
#ifndef PMDRL_LEARNER_WEIGHT_PUBLISHER_H_
#define PMDRL_LEARNER_WEIGHT_PUBLISHER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace pmdrl {

// One version of the weights as float32, in the model's parameter order.
struct WeightSnapshot {
  uint64_t version = 0;
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> data;
  uint64_t Bytes() const;
};

class WeightPublisher {
 public:
  void Publish(std::shared_ptr<const WeightSnapshot> snapshot);
  // The newest snapshot with version > have_version (-1: none held yet, so version 0
  // qualifies), waiting up to `timeout`; nullptr if none arrived or on Close().
  std::shared_ptr<const WeightSnapshot> WaitNewer(int64_t have_version,
                                                  std::chrono::milliseconds timeout) const;
  std::shared_ptr<const WeightSnapshot> Latest() const;
  // Wakes waiters so streams can notice shutdown.
  void Close();
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const WeightSnapshot> latest_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_WEIGHT_PUBLISHER_H_
