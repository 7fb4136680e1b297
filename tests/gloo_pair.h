// Two Gloo ranks over loopback in one test process, for tests of the data-parallel path
// that run every rank as a thread.
#ifndef PMDRL_TESTS_GLOO_PAIR_H_
#define PMDRL_TESTS_GLOO_PAIR_H_

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "learner/training/communicator.h"
#include "tests/free_port.h"

namespace pmdrl {

// Joins ranks 0 and 1 (rank 1 on a helper thread: the rendezvous needs both). On failure
// the test fails and the pointers stay null.
inline void ConnectGlooPair(std::unique_ptr<Communicator>* c0, std::unique_ptr<Communicator>* c1,
                            int64_t bucket_bytes = 16 << 10) {
  CommOptions o0;
  o0.world_size = 2;
  o0.store_address = "127.0.0.1:" + std::to_string(FreePort());
  o0.token = "gloo-pair-test-token";
  o0.bucket_bytes = bucket_bytes;
  o0.timeout = std::chrono::milliseconds(30000);
  CommOptions o1 = o0;
  o1.rank = 1;
  absl::StatusOr<std::unique_ptr<Communicator>> r0, r1;
  std::thread t1([&] { r1 = CreateCommunicator(o1); });
  r0 = CreateCommunicator(o0);
  t1.join();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  *c0 = *std::move(r0);
  *c1 = *std::move(r1);
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_GLOO_PAIR_H_
