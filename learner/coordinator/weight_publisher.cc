#include "learner/coordinator/weight_publisher.h"

#include <utility>

#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

WeightPublisher::WeightPublisher(Options options) : options_(options) {
  if (options_.metrics != nullptr) {
    constexpr char kBytes[] = "pmdrl_learner_weight_version_bytes";
    constexpr char kHelp[] = "bytes of the newest weight version on the wire, whole or as a delta";
    full_bytes_ = &options_.metrics->Gauge(kBytes, kHelp, {{"encoding", "full"}});
    delta_bytes_ = &options_.metrics->Gauge(kBytes, kHelp, {{"encoding", "delta"}});
    encode_seconds_ = &options_.metrics->Gauge("pmdrl_learner_weight_delta_encode_seconds",
                                               "time to encode the newest delta");
  }
}

void WeightPublisher::Publish(std::shared_ptr<const WeightVersion> next) {
  std::shared_ptr<const WeightDelta> delta;
  std::shared_ptr<const WeightVersion> previous = Latest().full;
  if (options_.delta && previous != nullptr && previous->version < next->version) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<WeightDelta> d = EncodeDelta(*previous, *next);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!d.ok()) {
      spdlog::warn("weights version {} goes whole: {}", next->version,
                   std::string(d.status().message()));
    } else if (d->Bytes() >= next->Bytes()) {
      spdlog::info("weights version {} goes whole: its delta ({:.1f} MB) is not smaller",
                   next->version, d->Bytes() / 1e6);
    } else {
      delta = std::make_shared<const WeightDelta>(*std::move(d));
    }
    if (encode_seconds_ != nullptr) encode_seconds_->Set(seconds);
  }
  previous.reset();
  if (full_bytes_ != nullptr) {
    full_bytes_->Set(static_cast<double>(next->Bytes()));
    delta_bytes_->Set(delta != nullptr ? static_cast<double>(delta->Bytes()) : 0.0);
  }
  absl::MutexLock lock(&mu_);
  latest_ = {std::move(next), std::move(delta)};
}

void WeightPublisher::Retire() {
  absl::MutexLock lock(&mu_);
  if (!options_.delta) latest_ = {};
}

PublishedWeights WeightPublisher::WaitNewer(int64_t have_version,
                                            std::chrono::milliseconds timeout) const {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || (latest_.full && static_cast<int64_t>(latest_.full->version) > have_version);
  };
  struct Arg {
    decltype(ready)* f;
  } arg{&ready};
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](Arg* a) { return (*a->f)(); }, &arg),
                       absl::FromChrono(timeout));
  if (closed_ || !latest_.full || static_cast<int64_t>(latest_.full->version) <= have_version) {
    return {};
  }
  return latest_;
}

PublishedWeights WeightPublisher::Latest() const {
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
