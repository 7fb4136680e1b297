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
#include <vector>

#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// Promises: each group pushed is sent exactly once through `send` (which retries as it
// sees fit and returns the learner's answer, or ACK_UNKNOWN when it gave up), and `done`
// is called once for it, after its send, on a sender thread. Sends start in the order
// pushed; up to `senders` run at once (each blocks on its own ack, so that many groups
// can be in flight on the verifier streams), so with senders > 1 they may finish out of
// order. A group of a new policy_version starts only once every earlier group's send has
// finished, so an actor's versions reach the learner in order. At most `window` groups
// are queued or being sent: Push blocks beyond that. Drain (or the destructor) sends what
// is queued, waits for every send, then ends the threads. Thread-safe.
class GroupSender {
 public:
  using SendFn = std::function<v1::AckStatus(const v1::Group& group, int64_t deadline_unix_ms)>;
  using DoneFn = std::function<void(const v1::Group& group, v1::AckStatus status)>;

  // `senders` is clamped to [1, window].
  GroupSender(int64_t window, SendFn send, DoneFn done, int64_t senders = 1);
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
  std::deque<Item> queue_;        // not yet taken by a sender thread
  int64_t sending_ = 0;           // taken and not yet done
  uint64_t sending_version_ = 0;  // the policy_version of those, when sending_ > 0
  bool draining_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_GROUP_SENDER_H_
