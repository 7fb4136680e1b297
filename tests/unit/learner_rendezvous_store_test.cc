// The rendezvous store against a misbehaving peer (issue 15): a connection must prove it
// holds the run's token before any request is served (a wrong token, no handshake, or
// a forged proof is refused and closed), and a request that claims a huge value but
// sends a few bytes must not make the server allocate what it claims.
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "learner/training/rendezvous_store.h"

namespace pmdrl {
namespace {

using namespace std::chrono_literals;

constexpr char kToken[] = "rendezvous-test-token";

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

bool SendAll(int fd, const std::string& bytes) {
  return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

// Reads exactly n bytes (5 s at most); "" on EOF, error or timeout.
std::string RecvN(int fd, size_t n) {
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
    if (r <= 0) return "";
    got += static_cast<size_t>(r);
  }
  return out;
}

// True when the server closes `fd` (EOF, or a reset) within 5 s.
bool ClosedByServer(int fd) {
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char b;
  ssize_t r = ::recv(fd, &b, 1, 0);
  return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

std::string Mac(const std::string& token, const std::string& label, const std::string& cn,
                const std::string& sn) {
  std::string msg = label + cn + sn;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

// The client's side of the handshake (learner/training/rendezvous_store.h), written out here so
// the test pins the wire format. Returns the server's one-byte verdict, or -1 when the
// connection broke first.
int Handshake(int fd, const std::string& token) {
  const std::string client_nonce(32, 'c');
  if (!SendAll(fd, std::string("PMDRLRV1") + client_nonce)) return -1;
  std::string server_nonce = RecvN(fd, 32);
  std::string server_mac = RecvN(fd, 32);
  if (server_nonce.empty() || server_mac.empty()) return -1;
  if (!SendAll(fd, Mac(token, "client", client_nonce, server_nonce))) return -1;
  std::string verdict = RecvN(fd, 1);
  return verdict.empty() ? -1 : static_cast<unsigned char>(verdict[0]);
}

std::string SetRequest(const std::string& key, const std::string& value) {
  std::string req(1, '\x01');  // kSet
  PutU32(&req, static_cast<uint32_t>(key.size()));
  req += key;
  PutU32(&req, static_cast<uint32_t>(value.size()));
  req += value;
  req.append(8, '\0');  // timeout_ms
  return req;
}

TEST(RendezvousStoreTest, WrongTokenIsRefused) {
  auto server = StoreServer::Start("127.0.0.1:0", kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  auto wrong = StoreClient::Connect(address, "another-runs-token", 5s);
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  auto right = StoreClient::Connect(address, kToken, 5s);
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_TRUE((*right)->Set("k", "v").ok());
  // Neither side runs without a token.
  EXPECT_FALSE(StoreServer::Start("127.0.0.1:0", "").ok());
  EXPECT_FALSE(StoreClient::Connect(address, "", 1s).ok());
}

TEST(RendezvousStoreTest, ForgedProofAndMissingHandshakeAreRefused) {
  auto server = StoreServer::Start("127.0.0.1:0", kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  // The right magic, then a proof made with another token: refused (verdict 1), closed.
  int fd = ConnectRaw(port);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(Handshake(fd, "not-the-token"), 1);
  EXPECT_TRUE(ClosedByServer(fd));
  ::close(fd);

  // A request sent straight away (no handshake): closed, and the key never lands.
  fd = ConnectRaw(port);
  ASSERT_GE(fd, 0);
  std::string raw = SetRequest("sneaky", "value");
  raw.resize(std::max<size_t>(raw.size(), 40), '\0');  // at least a hello's worth of bytes
  ASSERT_TRUE(SendAll(fd, raw));
  EXPECT_TRUE(ClosedByServer(fd));
  ::close(fd);

  // The right proof is accepted by the same code path.
  fd = ConnectRaw(port);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(Handshake(fd, kToken), 0);
  ::close(fd);

  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string(port), kToken, 5s);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(absl::IsDeadlineExceeded((*client)->Get("sneaky", 100ms).status()));
}

// Many short connections that never authenticate (more than the server serves at once,
// one after another) leave the store serving a client that does.
TEST(RendezvousStoreTest, StreamOfRefusedConnectionsLeavesTheStoreServing) {
  auto server = StoreServer::Start("127.0.0.1:0", kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  for (int i = 0; i < 400; ++i) {
    int fd = ConnectRaw(port);
    ASSERT_GE(fd, 0) << i;
    ASSERT_TRUE(SendAll(fd, std::string(40, 'x')));
    EXPECT_TRUE(ClosedByServer(fd)) << i;
    ::close(fd);
  }
  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string(port), kToken, 5s);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->Set("k", "v").ok());
}

TEST(RendezvousStoreTest, ClaimedLengthDoesNotDriveAllocation) {
  auto server = StoreServer::Start("127.0.0.1:0", kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  const int64_t malloc_before = MallocBytes();
  const int64_t rss_before = ResidentBytes();

  // An authenticated peer sends a set request claiming a 1 GiB value (the cap), then
  // 10 bytes of it.
  int fd = ConnectRaw(port);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(Handshake(fd, kToken), 0);
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
  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string(port), kToken, 5s);
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
  auto server = StoreServer::Start("127.0.0.1:0", kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = StoreClient::Connect("127.0.0.1:" + std::to_string((*server)->port()), kToken, 5s);
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
