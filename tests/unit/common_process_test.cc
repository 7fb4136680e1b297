// RetainFreedHeapMemory (common/process.h): after it, a 4 MiB buffer freed and allocated
// again, as gRPC does for every socket read of the weight stream, reuses mapped pages
// instead of faulting fresh ones in. Counted in page faults, not timed.
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/process.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

long MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Page faults of `rounds` rounds of what a weight stream's reads do: 8 buffers of 4 MiB
// (gRPC's read-ahead holds several) allocated and written, then all freed.
long FaultsOfStreaming(int rounds) {
  constexpr size_t kBytes = 4 << 20;
  constexpr int kBuffers = 8;
  const long before = MinorFaults();
  for (int i = 0; i < rounds; ++i) {
    char* buffers[kBuffers];
    for (char*& p : buffers) {
      p = static_cast<char*>(std::malloc(kBytes));
      if (p == nullptr) {
        ADD_FAILURE() << "malloc failed";
        return -1;
      }
      std::memset(p, i, kBytes);
      asm volatile("" : : "r"(p) : "memory");  // the writes stay
    }
    for (char* p : buffers) std::free(p);
  }
  return MinorFaults() - before;
}

TEST(ProcessTest, RetainedHeapIsReusedWithoutFaults) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer replaces malloc; glibc's knobs do not apply";
#else
  constexpr int kRounds = 8;
  constexpr long kPagesPerRound = 8 * (4 << 20) / 4096;
  // glibc's default: the freed buffers go back to the kernel (mmaps, or a heap top above
  // the trim threshold, which follows the largest freed block: about 8 MiB), so every
  // round faults its 32 MiB in again.
  const long before = FaultsOfStreaming(kRounds);
  RetainFreedHeapMemory(size_t{128} << 20);
  FaultsOfStreaming(1);  // the first round under the new settings maps the heap once
  const long after = FaultsOfStreaming(kRounds);
  std::printf("page faults over %d rounds of %ld pages: %ld by default, %ld retained\n", kRounds,
              kPagesPerRound, before, after);
  EXPECT_GT(before, kRounds / 2 * kPagesPerRound) << "glibc's default already keeps them";
  EXPECT_LT(after, kPagesPerRound / 2) << "the rounds faulted their buffers in again";
#endif
}

}  // namespace
}  // namespace pmdrl
