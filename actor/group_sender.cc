#include "actor/group_sender.h"

#include <chrono>
#include <utility>

namespace pmdrl {

GroupSender::GroupSender(int64_t window, SendFn send, DoneFn done)
    : window_(window < 1 ? 1 : window), send_(std::move(send)), done_(std::move(done)) {
  thread_ = std::thread([this] { Loop(); });
}

GroupSender::~GroupSender() { Drain(); }

double GroupSender::Push(v1::Group group, int64_t deadline_unix_ms) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return static_cast<int64_t>(queue_.size()) < window_; });
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
  if (thread_.joinable()) thread_.join();
}

int64_t GroupSender::outstanding() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

void GroupSender::Loop() {
  while (true) {
    Item* item = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [&] { return !queue_.empty() || draining_; });
      if (queue_.empty()) return;  // draining and nothing left
      item = &queue_.front();      // stays in place (deque front) until popped below
    }
    const v1::AckStatus status = send_(item->group, item->deadline_unix_ms);
    done_(item->group, status);
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.pop_front();
    }
    changed_.notify_all();
  }
}

}  // namespace pmdrl
