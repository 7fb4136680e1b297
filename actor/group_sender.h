// Hands finished groups to the verifiers on a thread of its own, so that generation
// waits for acknowledgements only when a window of groups is outstanding.
#ifndef PMDRL_ACTOR_GROUP_SENDER_H_
#define PMDRL_ACTOR_GROUP_SENDER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// Promises: groups are sent in the order pushed, each exactly once through `send` (which
// retries as it sees fit and returns the learner's answer, or ACK_UNKNOWN when it gave
// up); `done` is called after each send, on the sender's thread. At most `window` groups
// are queued or being sent: Push blocks beyond that. Drain (or the destructor) sends what
// is queued, then ends the thread. Thread-safe.
class GroupSender {
 public:
  using SendFn = std::function<v1::AckStatus(const v1::Group& group, int64_t deadline_unix_ms)>;
  using DoneFn = std::function<void(const v1::Group& group, v1::AckStatus status)>;

  GroupSender(int64_t window, SendFn send, DoneFn done);
  ~GroupSender();
  GroupSender(const GroupSender&) = delete;
  GroupSender& operator=(const GroupSender&) = delete;

  // Queues `group` (its lease's deadline with it); returns the seconds spent waiting for
  // room in the window.
  double Push(v1::Group group, int64_t deadline_unix_ms);
  // Sends everything queued, then stops the thread. Idempotent.
  void Drain();
  int64_t outstanding() const;  // queued or being sent

 private:
  struct Item {
    v1::Group group;
    int64_t deadline_unix_ms = 0;
  };
  void Loop();

  const int64_t window_;
  const SendFn send_;
  const DoneFn done_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<Item> queue_;  // the front one is being sent
  bool draining_ = false;
  std::thread thread_;
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_GROUP_SENDER_H_
