// The actor's send window: order kept, generation blocked only when the window is full,
// everything queued sent on drain.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "actor/group_sender.h"

namespace pmdrl {
namespace {

v1::Group GroupOf(int i) {
  v1::Group g;
  g.set_lease_id("L" + std::to_string(i));
  g.set_index(i);
  return g;
}

TEST(GroupSenderTest, SendsInOrderAndReportsEachAnswer) {
  std::mutex mu;
  std::vector<uint64_t> sent, done;
  {
    GroupSender sender(
        4,
        [&](const v1::Group& g, int64_t deadline) {
          EXPECT_EQ(deadline, 1000 + static_cast<int64_t>(g.index()));
          std::lock_guard<std::mutex> lock(mu);
          sent.push_back(g.index());
          return g.index() % 2 == 0 ? v1::ACK_ACCEPTED : v1::ACK_STALE;
        },
        [&](const v1::Group& g, v1::AckStatus status) {
          EXPECT_EQ(status, g.index() % 2 == 0 ? v1::ACK_ACCEPTED : v1::ACK_STALE);
          std::lock_guard<std::mutex> lock(mu);
          done.push_back(g.index());
        });
    for (int i = 0; i < 20; ++i) sender.Push(GroupOf(i), 1000 + i);
    sender.Drain();
    EXPECT_EQ(sender.outstanding(), 0);
  }
  std::vector<uint64_t> expected;
  for (uint64_t i = 0; i < 20; ++i) expected.push_back(i);
  EXPECT_EQ(sent, expected);
  EXPECT_EQ(done, expected);
}

TEST(GroupSenderTest, PushWaitsOnlyWhenTheWindowIsFull) {
  std::atomic<bool> release{false};
  std::atomic<int> sends{0};
  GroupSender sender(
      3,
      [&](const v1::Group&, int64_t) {
        while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ++sends;
        return v1::ACK_ACCEPTED;
      },
      [](const v1::Group&, v1::AckStatus) {});
  // Three fit while the first send hangs: no waiting.
  for (int i = 0; i < 3; ++i) EXPECT_LT(sender.Push(GroupOf(i), 0), 0.5);
  EXPECT_EQ(sender.outstanding(), 3);
  // The fourth waits until the hanging send returns.
  std::thread unblock([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    release = true;
  });
  EXPECT_GE(sender.Push(GroupOf(3), 0), 0.05);
  unblock.join();
  sender.Drain();
  EXPECT_EQ(sends.load(), 4);
}

}  // namespace
}  // namespace pmdrl
