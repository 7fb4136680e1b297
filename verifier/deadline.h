// A cooperative time limit for graders, and the poller their inner loops use.
#ifndef PMDRL_VERIFIER_DEADLINE_H_
#define PMDRL_VERIFIER_DEADLINE_H_

#include <chrono>
#include <cstdint>

namespace pmdrl {

// A cooperative deadline on the monotonic clock: long-running checks poll Expired() and
// give up. Works in any thread (no signals, no alarms). Copyable; holds no resources.
class Deadline {
 public:
  // Expires `budget` from now; a budget <= 0 is already expired.
  explicit Deadline(std::chrono::milliseconds budget)
      : when_(std::chrono::steady_clock::now() + budget) {}
  // A deadline that never expires (tools and tests).
  static Deadline Infinite() { return Deadline(std::chrono::steady_clock::time_point::max()); }

  bool Expired() const { return std::chrono::steady_clock::now() >= when_; }
  std::chrono::steady_clock::time_point when() const { return when_; }

 private:
  explicit Deadline(std::chrono::steady_clock::time_point when) : when_(when) {}
  std::chrono::steady_clock::time_point when_;
};

// Polls a deadline from inner loops. Reading the clock costs tens of nanoseconds, so it
// is read once every 256 ticks; once expired, the flag sticks and every loop unwinds.
// Borrows the deadline, which must outlive the poller.
class DeadlinePoll {
 public:
  explicit DeadlinePoll(const Deadline& deadline) : deadline_(deadline) {}
  bool Tick() {
    if (!expired_ && (++ticks_ & 255u) == 0 && deadline_.Expired()) expired_ = true;
    return expired_;
  }
  bool CheckNow() {
    if (!expired_ && deadline_.Expired()) expired_ = true;
    return expired_;
  }
  bool expired() const { return expired_; }
  const Deadline& deadline() const { return deadline_; }

 private:
  const Deadline& deadline_;
  uint32_t ticks_ = 0;
  bool expired_ = false;
};

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_DEADLINE_H_
