#include <grpcpp/server.h>
#include <grpcpp/server_context.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "actor/verifier_pool.h"
#include "common/auth.h"
#include "common/rpc.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {
namespace {

constexpr char kToken[] = "pool-token";

// Records, across all fake verifiers, which one received each group, in order.
struct Journal {
  std::mutex mu;
  std::vector<std::string> entries;  // "<verifier>:<lease_id>"
  void Add(const std::string& e) {
    std::lock_guard<std::mutex> lock(mu);
    entries.push_back(e);
  }
  std::vector<std::string> Get() {
    std::lock_guard<std::mutex> lock(mu);
    return entries;
  }
};

// A verifier that acks each group with `status`. With `fail_after` >= 0, a stream that
// has acked that many groups reads one more and then breaks (UNAVAILABLE, no ack).
// With `hang`, it never acks and holds the stream until the client cancels.
class FakeVerifier final : public v1::Verifier::Service {
 public:
  FakeVerifier(std::string name, Journal* journal) : name_(std::move(name)), journal_(journal) {}

  std::atomic<v1::AckStatus> status{v1::ACK_ACCEPTED};  // may change while serving
  int fail_after = -1;
  bool hang = false;
  // With `hold`, it reads and records groups but acks none, until the call ends.
  bool hold = false;

  // Blocks until `n` groups are held (true) or 60 s pass (false).
  bool WaitHeld(int n) {
    std::unique_lock<std::mutex> lock(held_mu_);
    return held_cv_.wait_for(lock, std::chrono::seconds(60), [&] { return held_ >= n; });
  }

  grpc::Status ScoreGroups(grpc::ServerContext* ctx,
                           grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    streams_.fetch_add(1);
    int acked = 0;
    v1::Group group;
    while (stream->Read(&group)) {
      journal_->Add(name_ + ":" + group.lease_id());
      if (hold) {
        std::lock_guard<std::mutex> lock(held_mu_);
        ++held_;
        held_cv_.notify_all();
        continue;
      }
      if (hang) {
        while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return grpc::Status::CANCELLED;
      }
      if (fail_after >= 0 && acked == fail_after) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "verifier broke");
      }
      v1::GroupAck ack;
      ack.set_lease_id(group.lease_id());
      ack.set_status(status);
      ack.set_learner_version(7);
      if (!stream->Write(ack)) break;
      ++acked;
    }
    return grpc::Status::OK;
  }

  int streams() const { return streams_.load(); }

 private:
  const std::string name_;
  Journal* journal_;
  std::atomic<int> streams_{0};
  std::mutex held_mu_;
  std::condition_variable held_cv_;
  int held_ = 0;  // guarded by held_mu_
};

struct Server {
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

Server Serve(FakeVerifier* service) {
  int port = 0;
  auto server = StartServer("127.0.0.1:0", {service}, &port);
  EXPECT_TRUE(server.ok()) << server.status();
  return {*std::move(server), "127.0.0.1:" + std::to_string(port)};
}

// An address where nothing listens: a server's port after it shut down.
std::string DeadAddress() {
  Journal journal;
  FakeVerifier service("dead", &journal);
  Server s = Serve(&service);
  s.server->Shutdown();
  s.server->Wait();
  return s.address;
}

v1::Group MakeGroup(int i) {
  v1::Group g;
  g.set_lease_id("lease-" + std::to_string(i));
  g.set_epoch(0);
  g.set_index(i);
  return g;
}

TEST(VerifierPoolTest, RoundRobinOverOpenStreams) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  Server sa = Serve(&a), sb = Serve(&b);
  VerifierPool pool({sa.address, sb.address}, kToken);
  ASSERT_EQ(pool.size(), 2u);
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->lease_id(), "lease-" + std::to_string(i));
    EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
    EXPECT_EQ(ack->learner_version(), 7u);
  }
  EXPECT_EQ(journal.Get(),
            (std::vector<std::string>{"a:lease-0", "b:lease-1", "a:lease-2", "b:lease-3"}));
  // One stream per verifier, kept open across sends.
  EXPECT_EQ(a.streams(), 1);
  EXPECT_EQ(b.streams(), 1);
}

TEST(VerifierPoolTest, FailsOverWhenAVerifierIsDown) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  VerifierPool pool({DeadAddress(), sa.address}, kToken);
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->lease_id(), "lease-" + std::to_string(i));
  }
  EXPECT_EQ(journal.Get(),
            (std::vector<std::string>{"a:lease-0", "a:lease-1", "a:lease-2", "a:lease-3"}));
}

TEST(VerifierPoolTest, AckUnknownTriesTheNextVerifier) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  a.status = v1::ACK_UNKNOWN;
  b.status = v1::ACK_DUPLICATE;  // any definite answer ends the search
  Server sa = Serve(&a), sb = Serve(&b);
  VerifierPool pool({sa.address, sb.address}, kToken);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->status(), v1::ACK_DUPLICATE);
  }
  EXPECT_EQ(journal.Get(), (std::vector<std::string>{"a:lease-0", "b:lease-0", "b:lease-1"}));
}

TEST(VerifierPoolTest, AllFailingIsAnErrorNamingEachVerifier) {
  Journal journal;
  FakeVerifier a("a", &journal);
  a.status = v1::ACK_UNKNOWN;
  Server sa = Serve(&a);
  const std::string dead = DeadAddress();
  VerifierPool pool({sa.address, dead}, kToken);
  absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(0));
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), absl::StatusCode::kUnavailable);
  const std::string message(ack.status().message());
  EXPECT_NE(message.find(sa.address), std::string::npos) << message;
  EXPECT_NE(message.find(dead), std::string::npos) << message;
  EXPECT_NE(message.find("ACK_UNKNOWN"), std::string::npos) << message;
  // Each verifier is tried at most once per Send.
  EXPECT_EQ(journal.Get(), std::vector<std::string>{"a:lease-0"});
}

TEST(VerifierPoolTest, BrokenStreamIsReopened) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  a.fail_after = 1;  // every stream to `a` acks one group, then breaks on the next
  Server sa = Serve(&a), sb = Serve(&b);
  VerifierPool pool({sa.address, sb.address}, kToken);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->lease_id(), "lease-" + std::to_string(i));
  }
  EXPECT_EQ(journal.Get(), (std::vector<std::string>{"a:lease-0", "b:lease-1", "a:lease-2",
                                                     "b:lease-2", "b:lease-3", "a:lease-4"}));
  EXPECT_EQ(a.streams(), 2);
  EXPECT_EQ(b.streams(), 1);
}

TEST(VerifierPoolTest, SilentVerifierTimesOutAndIsSkipped) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  a.hang = true;
  Server sa = Serve(&a), sb = Serve(&b);
  VerifierPool::Options options;
  options.ack_timeout = std::chrono::milliseconds(100);
  VerifierPool pool({sa.address, sb.address}, kToken, options);
  absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(0));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(journal.Get(), (std::vector<std::string>{"a:lease-0", "b:lease-0"}));
}

TEST(VerifierPoolTest, WrongTokenIsAFailure) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  VerifierPool pool({sa.address}, "not-the-token");
  absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(0));
  ASSERT_FALSE(ack.ok());
  EXPECT_NE(std::string(ack.status().message()).find("UNAUTHENTICATED"), std::string::npos)
      << ack.status();
  EXPECT_TRUE(journal.Get().empty());
}

// ---- dns:/// targets: one round_robin channel standing for every replica.

std::string Port(const std::string& address) { return address.substr(address.rfind(':') + 1); }

TEST(VerifierPoolTest, DnsTargetIsRecognised) {
  EXPECT_TRUE(VerifierPool::IsDnsTarget("dns:///verifier:50052"));
  EXPECT_TRUE(VerifierPool::IsDnsTarget("dns:verifier:50052"));
  EXPECT_FALSE(VerifierPool::IsDnsTarget("verifier:50052"));
  EXPECT_FALSE(VerifierPool::IsDnsTarget("127.0.0.1:50052"));
}

TEST(VerifierPoolTest, DnsTargetReachesTheVerifierItResolvesTo) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  VerifierPool::Options options;
  options.dns_streams = 2;
  // localhost resolves to 127.0.0.1 (and maybe ::1, where nothing listens: round_robin
  // skips an address it cannot connect to).
  VerifierPool pool({"dns:///localhost:" + Port(sa.address)}, kToken, options);
  ASSERT_EQ(pool.size(), 2u);
  EXPECT_EQ(pool.address(1), "dns:///localhost:" + Port(sa.address));
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->lease_id(), "lease-" + std::to_string(i));
    EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
  }
  EXPECT_EQ(journal.Get(),
            (std::vector<std::string>{"a:lease-0", "a:lease-1", "a:lease-2", "a:lease-3"}));
  // Both slots opened a stream over the one channel and kept it.
  EXPECT_EQ(a.streams(), 2);
}

TEST(VerifierPoolTest, DnsStreamsAreRenewedAfterTheRefreshInterval) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  VerifierPool::Options options;
  options.dns_streams = 1;
  options.dns_refresh = std::chrono::milliseconds(0);  // every stream lives for one group
  VerifierPool pool({"dns:///localhost:" + Port(sa.address)}, kToken, options);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
  }
  EXPECT_EQ(a.streams(), 3);
  // A static host:port target keeps its stream however old it is.
  FakeVerifier b("b", &journal);
  Server sb = Serve(&b);
  VerifierPool fixed({sb.address}, kToken, options);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(fixed.Send(MakeGroup(i)).ok());
  EXPECT_EQ(b.streams(), 1);
}

TEST(VerifierPoolTest, DnsTargetFailsOverToAStaticAddress) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  const std::string dead = "dns:///localhost:" + Port(DeadAddress());
  VerifierPool pool({dead, sa.address}, kToken);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
  }
  EXPECT_EQ(journal.Get(), (std::vector<std::string>{"a:lease-0", "a:lease-1", "a:lease-2"}));
}

// A replica goes away and another comes up behind the same name (a restarted
// container): the pool reports the gap and then reaches the new one by itself.
TEST(VerifierPoolTest, DnsTargetReachesAReplacementReplica) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  Server sa = Serve(&a);
  const std::string port = Port(sa.address);
  VerifierPool::Options options;
  options.dns_streams = 2;
  VerifierPool pool({"dns:///localhost:" + port}, kToken, options);
  ASSERT_TRUE(pool.Send(MakeGroup(0)).ok());
  // A deadline of now cancels the open stream (else Shutdown waits for the client).
  sa.server->Shutdown(std::chrono::system_clock::now());
  sa.server->Wait();
  absl::StatusOr<v1::GroupAck> gone = pool.Send(MakeGroup(1));
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(gone.status().message()).find("dns:///localhost:" + port),
            std::string::npos)
      << gone.status();

  int bound = 0;
  auto replacement = StartServer("127.0.0.1:" + port, {&b}, &bound);
  ASSERT_TRUE(replacement.ok()) << replacement.status();
  // Reconnecting follows gRPC's backoff (MakeChannel: at most 5 s between tries).
  bool reached = false;
  for (int i = 2; i < 200 && !reached; ++i) {
    reached = pool.Send(MakeGroup(i)).ok();
    if (!reached) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(reached) << "the replacement replica was never used";
  std::vector<std::string> entries = journal.Get();
  ASSERT_FALSE(entries.empty());
  EXPECT_EQ(entries.back().substr(0, 2), "b:");
  (*replacement)->Shutdown(std::chrono::system_clock::now());
}

// A verifier dies with a full window (8) of groups in flight on its stream: every one of
// them fails there and moves on, to the other verifier if it has not tried it yet
// (accepted there exactly once), else back to its caller as not delivered; none is
// answered twice, and a retry of those delivers them.
TEST(VerifierPoolTest, VerifierDyingWithAFullWindowResendsEveryGroupInFlight) {
  Journal journal;
  FakeVerifier a("a", &journal), b("b", &journal);
  a.hold = true;
  b.status = v1::ACK_UNKNOWN;  // until `a` holds the window: every group then sits on `a`
  Server sa = Serve(&a), sb = Serve(&b);
  VerifierPool::Options options;
  ASSERT_EQ(options.window, 8);
  VerifierPool pool({sa.address, sb.address}, kToken, options);

  constexpr int kGroups = 8;
  std::vector<absl::StatusOr<v1::GroupAck>> acks(kGroups, absl::UnknownError("not sent"));
  std::vector<std::thread> senders;
  for (int i = 0; i < kGroups; ++i) {
    senders.emplace_back([&, i] { acks[i] = pool.Send(MakeGroup(i)); });
  }
  ASSERT_TRUE(a.WaitHeld(kGroups)) << "the window did not fill on verifier a";
  b.status = v1::ACK_ACCEPTED;
  sa.server->Shutdown(std::chrono::system_clock::now());  // cancels a's stream: it dies
  for (std::thread& t : senders) t.join();

  std::map<std::string, int> on_b;  // lease -> groups b received after a died
  const std::vector<std::string> entries = journal.Get();
  int a_entries = 0;
  for (const std::string& e : entries) {
    if (e.rfind("a:", 0) == 0) ++a_entries;
  }
  EXPECT_EQ(a_entries, kGroups);  // each group went to a once (none was sent there twice)
  int delivered = 0;
  std::vector<int> retry;
  for (int i = 0; i < kGroups; ++i) {
    const std::string lease = "lease-" + std::to_string(i);
    const int b_count = static_cast<int>(std::count(entries.begin(), entries.end(), "b:" + lease));
    if (acks[i].ok()) {
      ++delivered;
      EXPECT_EQ(acks[i]->lease_id(), lease);
      EXPECT_EQ(acks[i]->status(), v1::ACK_ACCEPTED);
      EXPECT_EQ(b_count, 1) << lease;  // resent to b once, after a died
    } else {
      EXPECT_EQ(acks[i].status().code(), absl::StatusCode::kUnavailable) << acks[i].status();
      // It had tried b (ACK_UNKNOWN) before a, so it had no verifier left.
      EXPECT_EQ(b_count, 1) << lease;
      retry.push_back(i);
    }
  }
  // Round robin started half of the sends on a (they end on b) and half on b.
  EXPECT_EQ(delivered, kGroups / 2);
  for (int i : retry) {
    absl::StatusOr<v1::GroupAck> ack = pool.Send(MakeGroup(i));
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->lease_id(), "lease-" + std::to_string(i));
    EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
  }
  EXPECT_EQ(a.streams(), 1);
}

// Groups of concurrent Sends share one stream, up to the window, and each gets its own
// ack back.
TEST(VerifierPoolTest, ConcurrentSendsShareOneStream) {
  Journal journal;
  FakeVerifier a("a", &journal);
  Server sa = Serve(&a);
  VerifierPool pool({sa.address}, kToken);
  constexpr int kGroups = 32;
  std::vector<absl::StatusOr<v1::GroupAck>> acks(kGroups, absl::UnknownError("not sent"));
  std::vector<std::thread> senders;
  for (int i = 0; i < kGroups; ++i) {
    senders.emplace_back([&, i] { acks[i] = pool.Send(MakeGroup(i)); });
  }
  for (std::thread& t : senders) t.join();
  for (int i = 0; i < kGroups; ++i) {
    ASSERT_TRUE(acks[i].ok()) << acks[i].status();
    EXPECT_EQ(acks[i]->lease_id(), "lease-" + std::to_string(i));
  }
  EXPECT_EQ(journal.Get().size(), static_cast<size_t>(kGroups));
  EXPECT_EQ(a.streams(), 1);
}

}  // namespace
}  // namespace pmdrl
