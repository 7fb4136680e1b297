// The actor's send window: order kept, generation blocked only when the window is full,
// everything queued sent on drain.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
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

// With several senders, that many sends run at once (each would block on its own ack),
// and every group is sent and reported exactly once.
TEST(GroupSenderTest, SeveralSendersKeepThatManyGroupsInFlight) {
  constexpr int kSenders = 4;
  std::mutex mu;
  std::condition_variable cv;
  int running = 0, most = 0;
  std::vector<int> sends(12, 0), dones(12, 0);
  {
    GroupSender sender(
        kSenders,
        [&](const v1::Group& g, int64_t) {
          std::unique_lock<std::mutex> lock(mu);
          ++sends[g.index()];
          most = std::max(most, ++running);
          cv.notify_all();
          // The first kSenders sends each wait until all of them run (bounded, so that
          // one sender at a time fails instead of hanging).
          if (g.index() < kSenders) {
            cv.wait_for(lock, std::chrono::seconds(30), [&] { return most >= kSenders; });
          }
          --running;
          return v1::ACK_ACCEPTED;
        },
        [&](const v1::Group& g, v1::AckStatus) {
          std::lock_guard<std::mutex> lock(mu);
          ++dones[g.index()];
        },
        kSenders);
    for (int i = 0; i < 12; ++i) sender.Push(GroupOf(i), 0);
    sender.Drain();
    EXPECT_EQ(sender.outstanding(), 0);
  }
  EXPECT_EQ(most, kSenders);
  EXPECT_EQ(sends, std::vector<int>(12, 1));
  EXPECT_EQ(dones, std::vector<int>(12, 1));
}

// Groups of one policy version may be in flight together, but a group of the next
// version starts only once all earlier sends have finished.
TEST(GroupSenderTest, ANewVersionWaitsForEarlierSends) {
  std::mutex mu;
  std::vector<std::pair<uint64_t, char>> events;  // (version, 's'tart | 'e'nd)
  {
    GroupSender sender(
        8,
        [&](const v1::Group& g, int64_t) {
          {
            std::lock_guard<std::mutex> lock(mu);
            events.emplace_back(g.policy_version(), 's');
          }
          std::this_thread::yield();
          std::lock_guard<std::mutex> lock(mu);
          events.emplace_back(g.policy_version(), 'e');
          return v1::ACK_ACCEPTED;
        },
        [](const v1::Group&, v1::AckStatus) {}, 8);
    for (int i = 0; i < 24; ++i) {
      v1::Group g = GroupOf(i);
      g.set_policy_version(i / 6);  // versions 0..3, six groups each
      sender.Push(std::move(g), 0);
    }
    sender.Drain();
  }
  ASSERT_EQ(events.size(), 48u);
  // Before any group of version v starts, every group of an older version has ended.
  std::map<uint64_t, int> ended;
  for (const auto& [version, kind] : events) {
    if (kind == 'e') {
      ++ended[version];
      continue;
    }
    for (uint64_t older = 0; older < version; ++older) {
      EXPECT_EQ(ended[older], 6) << "version " << version << " started early";
    }
  }
}

}  // namespace
}  // namespace pmdrl
