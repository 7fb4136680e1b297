// The rendezvous store against a misbehaving peer (issue 15): a request that claims a
// huge value but sends a few bytes must not make the server allocate what it claims.
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "learner/rendezvous_store.h"

namespace pmdrl {
namespace {

using namespace std::chrono_literals;

// Bytes the process holds by two measures: malloc's books (heap plus mmapped chunks,
// which a big allocation shows at once) and resident pages (which a zero-filled buffer
// shows even under a sanitizer's allocator, where mallinfo2 reads zero).
int64_t MallocBytes() {
  struct mallinfo2 mi = mallinfo2();
  return static_cast<int64_t>(mi.uordblks + mi.hblkhd);
}
int64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long size = 0, resident = 0;
  if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

int ConnectRaw(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }

TEST(RendezvousStoreTest, ClaimedLengthDoesNotDriveAllocation) {
  auto server = StoreServer::Start("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  const int64_t malloc_before = MallocBytes();
  const int64_t rss_before = ResidentBytes();

  // A set request claiming a 1 GiB value (the cap), then 10 bytes of it.
  int fd = ConnectRaw(port);
  ASSERT_GE(fd, 0);
  std::string req(1, '\x01');  // kSet
  PutU32(&req, 1);
  req += "k";
  PutU32(&req, 1u << 30);
  req += "0123456789";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));

  // The server's thread blocks for the rest of the value; watch its footprint while the
  // connection is open (an eager resize shows within milliseconds).
  int64_t peak = 0;
  for (int i = 0; i < 100; ++i) {
    peak = std::max({peak, MallocBytes() - malloc_before, ResidentBytes() - rss_before});
    std::this_thread::sleep_for(10ms);
  }
  ::close(fd);
  EXPECT_LT(peak, int64_t{100} << 20) << "server allocated " << peak << " bytes for 10 received";

  // The store still serves a well-behaved client.
  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string(port), 5s);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Set("good", "value").ok());
  auto got = (*client)->Get("good", 5s);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "value");
  // The half-sent key never landed.
  EXPECT_FALSE((*client)->Get("k", 100ms).ok());
}

// Values bigger than one growth step still arrive whole.
TEST(RendezvousStoreTest, MultiMegabyteValuesRoundTrip) {
  auto server = StoreServer::Start("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string((*server)->port()), 5s);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string value(5 * (1 << 20) + 123, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 131 + 7);
  ASSERT_TRUE((*client)->Set("big", value).ok());
  auto got = (*client)->Get("big", 5s);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), value.size());
  EXPECT_TRUE(*got == value);
}

}  // namespace
}  // namespace pmdrl
