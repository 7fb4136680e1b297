#include "actor/group_sender.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace pmdrl {

GroupSender::GroupSender(int64_t window, SendFn send, DoneFn done, int64_t senders)
    : window_(window < 1 ? 1 : window), send_(std::move(send)), done_(std::move(done)) {
  const int64_t n = std::clamp<int64_t>(senders, 1, window_);
  for (int64_t i = 0; i < n; ++i) threads_.emplace_back([this] { Loop(); });
}

GroupSender::~GroupSender() { Drain(); }

double GroupSender::Push(v1::Group group, int64_t deadline_unix_ms) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return static_cast<int64_t>(queue_.size()) + sending_ < window_; });
  queue_.push_back(Item{std::move(group), deadline_unix_ms});
  changed_.notify_all();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void GroupSender::Drain() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  changed_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

int64_t GroupSender::outstanding() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size()) + sending_;
}

void GroupSender::Loop() {
  while (true) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // A group of another policy version than those being sent waits until they are
      // all done: a send ends with the learner's answer, so the learner then sees each
      // actor's versions in order even though groups of one version may pass each other.
      auto may_start = [&] {
        return !queue_.empty() &&
               (sending_ == 0 || queue_.front().group.policy_version() == sending_version_);
      };
      changed_.wait(lock, [&] { return may_start() || (draining_ && queue_.empty()); });
      if (!may_start()) return;  // draining and nothing left
      item = std::move(queue_.front());
      queue_.pop_front();
      sending_version_ = item.group.policy_version();
      ++sending_;
    }
    const v1::AckStatus status = send_(item.group, item.deadline_unix_ms);
    done_(item.group, status);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --sending_;
    }
    changed_.notify_all();
  }
}

}  // namespace pmdrl
