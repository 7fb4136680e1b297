// Holds the newest policy weights for the WeightFeed stream
// (learner/coordinator/weight_feed_service.h). Only the newest version is kept: an actor that was
// busy skips the versions in between, never receives an older one. With deltas on, the publisher
// also keeps the delta from the version before, encoded once here for every actor. Thread-safe.
#ifndef PMDRL_LEARNER_WEIGHT_PUBLISHER_H_
#define PMDRL_LEARNER_WEIGHT_PUBLISHER_H_

#include <chrono>
#include <cstdint>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "common/weight_stream.h"

namespace pmdrl {

// The newest version, and the delta that leads to it from the version before (null when
// deltas are off, for the first version, or when the delta was not smaller).
struct PublishedWeights {
  std::shared_ptr<const WeightVersion> full;
  std::shared_ptr<const WeightDelta> delta;
};

class WeightPublisher {
 public:
  struct Options {
    bool delta = false;                  // learner.weight_delta
    MetricsRegistry* metrics = nullptr;  // not owned; may be null
  };
  WeightPublisher() : WeightPublisher(Options()) {}
  explicit WeightPublisher(Options options);

  // Makes `next` the newest version. With deltas on, first encodes it against the
  // version it replaces; so while this runs both are held, and after it one version and
  // one delta. Sets the pmdrl_learner_weight_version_bytes gauges.
  void Publish(std::shared_ptr<const WeightVersion> next);
  // Lets go of the newest version before the next one is built, so that the learner
  // does not hold two at once (deltas off only: a delta needs the old one). Streams that
  // are sending it keep it until they are done; a new stream waits for the next Publish.
  void Retire();
  // The newest version with version > have_version (-1: none held yet, so version 0
  // qualifies), waiting up to `timeout`; an empty `full` if none arrived or on Close().
  PublishedWeights WaitNewer(int64_t have_version, std::chrono::milliseconds timeout) const;
  PublishedWeights Latest() const;
  bool delta() const { return options_.delta; }
  // Wakes waiters so streams can notice shutdown.
  void Close();
  bool closed() const;

 private:
  const Options options_;
  prometheus::Gauge* full_bytes_ = nullptr;
  prometheus::Gauge* delta_bytes_ = nullptr;
  prometheus::Gauge* encode_seconds_ = nullptr;
  mutable absl::Mutex mu_;
  PublishedWeights latest_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_WEIGHT_PUBLISHER_H_
