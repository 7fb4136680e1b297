#include "learner/weight_publisher.h"

#include "absl/time/time.h"

namespace pmdrl {

uint64_t WeightSnapshot::Bytes() const {
  uint64_t n = 0;
  for (const auto& d : data) n += d.size() * sizeof(float);
  return n;
}

void WeightPublisher::Publish(std::shared_ptr<const WeightSnapshot> snapshot) {
  absl::MutexLock lock(&mu_);
  latest_ = std::move(snapshot);
}

std::shared_ptr<const WeightSnapshot> WeightPublisher::WaitNewer(
    int64_t have_version, std::chrono::milliseconds timeout) const {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || (latest_ && static_cast<int64_t>(latest_->version) > have_version);
  };
  struct Arg {
    decltype(ready)* f;
  } arg{&ready};
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](Arg* a) { return (*a->f)(); }, &arg),
                       absl::FromChrono(timeout));
  if (closed_ || !latest_ || static_cast<int64_t>(latest_->version) <= have_version) {
    return nullptr;
  }
  return latest_;
}

std::shared_ptr<const WeightSnapshot> WeightPublisher::Latest() const {
  absl::MutexLock lock(&mu_);
  return latest_;
}

void WeightPublisher::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool WeightPublisher::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

}  // namespace pmdrl
