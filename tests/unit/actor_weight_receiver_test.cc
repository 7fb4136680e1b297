// The actor's WeightReceiver (actor/weight_receiver.h): against a scripted fake
// WeightFeed service for the stream-level cases (chunked versions, a malformed version,
// a broken stream, a wrong token), and against the learner's real WeightFeedService and
// WeightPublisher for full pushes and deltas, including a corrupted delta after which
// the actor must ask for a full push and end up with the right weights. The chunk rules
// themselves are tested on WeightAssembler in common_weight_stream_test.cc.
#include <grpcpp/client_context.h>
#include <grpcpp/server.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "actor/weight_receiver.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "common/weight_stream.h"
#include "common/wire_dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "learner/coordinator/weight_feed_service.h"
#include "learner/coordinator/weight_publisher.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "tests/weight_diff.h"
#include "tests/weight_versions.h"

namespace pmdrl {
namespace {

using std::chrono::milliseconds;

constexpr char kToken[] = "test-token";
constexpr milliseconds kLong{20000};  // only reached if the test fails

// ---------------------------------------------------------------- versions

// 3x4, 4 and 3x4 elements: small enough that chunks of a few bytes split every tensor.
std::vector<Spec> SmallModel() {
  return {{"model.embed_tokens.weight", {3, 4}},
          {"model.norm.weight", {4}},
          {"lm_head.weight", {3, 4}}};
}

// The seeded MakeVersion of tests/weight_versions.h, and this file's: seeded by the
// version, of SmallModel() by default.
using ::pmdrl::MakeVersion;
std::shared_ptr<WeightVersion> MakeVersion(uint64_t version, WireDtype dtype = WireDtype::kFloat32,
                                           const std::vector<Spec>& specs = SmallModel()) {
  return MakeVersion(version, dtype, specs, version);
}

// Whether `got` is `want`: layout, checksums and bits. Empty when it is.
std::string Difference(const WeightVersion& got, const WeightVersion& want) {
  if (got.version != want.version) {
    return "version " + std::to_string(got.version) + " vs " + std::to_string(want.version);
  }
  if (got.dtype != want.dtype) return "dtype";
  if (got.tensors.size() != want.tensors.size()) return "tensor count";
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    if (got.tensors[i].name != want.tensors[i].name ||
        got.tensors[i].shape != want.tensors[i].shape ||
        got.tensors[i].checksum != want.tensors[i].checksum) {
      return "tensor " + std::to_string(i) + " header";
    }
  }
  return BitIdentical(got, want) ? "" : "bits";
}

void ExpectSameVersion(const std::shared_ptr<const WeightVersion>& got, const WeightVersion& want) {
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(Difference(*got, want), "");
}

// `r` holds `want`, whole or from a delta as `from_delta` says; so far `deltas` versions
// came as deltas and `malformed` were refused (-1: not checked).
void ExpectHolds(const WeightReceiver& r, const WeightVersion& want, bool from_delta,
                 int64_t deltas = -1, int64_t malformed = -1) {
  const std::shared_ptr<const WeightVersion> latest = r.Latest();
  ExpectSameVersion(latest, want);
  if (latest != nullptr) {
    EXPECT_EQ(latest->from_delta, from_delta) << "version " << want.version;
  }
  if (deltas >= 0) {
    EXPECT_EQ(r.delta_versions(), static_cast<uint64_t>(deltas));
  }
  if (malformed >= 0) {
    EXPECT_EQ(r.malformed_versions(), static_cast<uint64_t>(malformed));
  }
}

// A WatchWeights request said the actor holds `have_version`, with its delta base or not.
void ExpectAsked(const v1::WatchWeightsRequest& request, uint64_t have_version, bool have_base) {
  EXPECT_EQ(request.have_version(), have_version);
  EXPECT_EQ(request.have_base(), have_base) << "asking after version " << have_version;
}

// ---------------------------------------------------------------- chunks for the fake

std::string FrameString(const grpc::ByteBuffer& frame) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(frame.Dump(&slices).ok());
  std::string s;
  for (const grpc::Slice& slice : slices) {
    s.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return s;
}

// A version's chunks as the real writer makes them, as protobuf messages.
std::vector<v1::WeightChunk> Chunks(const std::shared_ptr<const WeightVersion>& version,
                                    size_t chunk_bytes, bool keep_base = false,
                                    const std::shared_ptr<const WeightDelta>& delta = nullptr) {
  std::vector<v1::WeightChunk> out;
  EXPECT_TRUE(WriteVersion(version, delta, keep_base, chunk_bytes, [&](const grpc::ByteBuffer& b) {
    v1::WeightChunk c;
    EXPECT_TRUE(c.ParseFromString(FrameString(b)));
    out.push_back(std::move(c));
    return true;
  }));
  return out;
}

std::vector<v1::WeightChunk> DeltaChunks(const std::shared_ptr<const WeightVersion>& base,
                                         const std::shared_ptr<const WeightVersion>& next,
                                         size_t chunk_bytes) {
  absl::StatusOr<WeightDelta> d = EncodeDelta(*base, *next);
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return {};
  return Chunks(next, chunk_bytes, /*keep_base=*/true,
                std::make_shared<const WeightDelta>(*std::move(d)));
}

std::vector<v1::WeightChunk> Concat(std::vector<std::vector<v1::WeightChunk>> parts) {
  std::vector<v1::WeightChunk> all;
  for (auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

uint64_t WireBytes(const std::vector<v1::WeightChunk>& chunks) {
  uint64_t n = 0;
  for (const v1::WeightChunk& c : chunks) n += c.ByteSizeLong();
  return n;
}

// ---------------------------------------------------------------- the scripted fake

// Serves WatchWeights from a script: connection i streams scripts[i] (the last script
// for later connections), then either ends the stream with `end_status` or, when none
// is given, holds it open until the client cancels. Typed: protobuf writes the header
// (field 1) before the data (field 2), as the receiver requires.
class FakeFeed final : public v1::WeightFeed::Service {
 public:
  struct Script {
    std::vector<v1::WeightChunk> chunks;
    std::optional<grpc::Status> end_status;
    // Writes the first `hold_at` chunks, then waits for Release() before the rest.
    std::optional<size_t> hold_at = std::nullopt;
  };
  explicit FakeFeed(std::vector<Script> scripts) : scripts_(std::move(scripts)) {}

  grpc::Status WatchWeights(grpc::ServerContext* ctx, const v1::WatchWeightsRequest* request,
                            grpc::ServerWriter<v1::WeightChunk>* writer) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    size_t connection;
    {
      std::lock_guard<std::mutex> lock(mu_);
      connection = requests_.size();
      requests_.push_back(*request);
    }
    const Script& script = scripts_[std::min(connection, scripts_.size() - 1)];
    for (size_t i = 0; i < script.chunks.size(); ++i) {
      if (script.hold_at == i) {
        while (!released_.load() && !ctx->IsCancelled()) {
          std::this_thread::sleep_for(milliseconds(2));
        }
      }
      if (!writer->Write(script.chunks[i])) return grpc::Status::CANCELLED;
    }
    if (script.end_status.has_value()) return *script.end_status;
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(milliseconds(5));
    return grpc::Status::CANCELLED;
  }

  std::vector<v1::WatchWeightsRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  void Release() { released_ = true; }

 private:
  const std::vector<Script> scripts_;
  std::atomic<bool> released_{false};
  std::mutex mu_;
  std::vector<v1::WatchWeightsRequest> requests_;
};

WeightReceiver::Options ShortBackoff() {
  WeightReceiver::Options options;
  options.initial_backoff = milliseconds(10);
  options.max_backoff = milliseconds(50);
  return options;
}

class FakeHarness {
 public:
  explicit FakeHarness(std::vector<FakeFeed::Script> scripts, std::string token = kToken)
      : service_(std::move(scripts)) {
    int port = 0;
    auto server = StartServer("127.0.0.1:0", {&service_}, &port);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    receiver_ = std::make_unique<WeightReceiver>(MakeChannel("127.0.0.1:" + std::to_string(port)),
                                                 "actor-x", std::move(token), ShortBackoff());
    receiver_->Start();
  }
  ~FakeHarness() {
    receiver_->Stop();
    server_->Shutdown();
  }
  WeightReceiver& receiver() { return *receiver_; }
  FakeFeed& service() { return service_; }

 private:
  FakeFeed service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<WeightReceiver> receiver_;
};

// Polls `done` every few milliseconds for up to `timeout`.
bool Eventually(const std::function<bool()>& done, milliseconds timeout = kLong) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

TEST(WeightReceiverTest, AssemblesTwoChunkedVersions) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1), v2 = MakeVersion(2);
  const std::vector<v1::WeightChunk> chunks = Concat({Chunks(v1, 12), Chunks(v2, 20)});
  ASSERT_GT(chunks.size(), 6u);  // tensors really are split
  FakeHarness h({{chunks, std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  std::shared_ptr<const WeightVersion> latest = h.receiver().Latest();
  ExpectSameVersion(latest, *v2);
  EXPECT_EQ(latest->Bytes(), (12u + 4u + 12u) * 4u);
  EXPECT_FALSE(latest->from_delta);
  EXPECT_TRUE(h.receiver().WaitForVersion(1, milliseconds(0)));
  EXPECT_FALSE(h.receiver().WaitForVersion(3, milliseconds(20)));
  EXPECT_EQ(h.receiver().malformed_versions(), 0u);
  EXPECT_EQ(h.receiver().delta_versions(), 0u);
  EXPECT_EQ(h.receiver().wire_bytes(), WireBytes(chunks));
  const auto requests = h.service().requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].actor_id(), "actor-x");
  ExpectAsked(requests[0], 0, false);
}

TEST(WeightReceiverTest, AssemblesBfloat16) {
  std::shared_ptr<const WeightVersion> v = MakeVersion(1, WireDtype::kBfloat16);
  FakeHarness h({{Chunks(v, 6), std::nullopt}});
  ASSERT_TRUE(h.receiver().WaitForVersion(1, kLong));
  ExpectSameVersion(h.receiver().Latest(), *v);
}

TEST(WeightReceiverTest, WaitForVersionZeroWaitsForAnyVersion) {
  {
    FakeHarness h({{{}, std::nullopt}});  // a feed that sends nothing
    EXPECT_EQ(h.receiver().Latest(), nullptr);
    EXPECT_FALSE(h.receiver().WaitForVersion(0, milliseconds(30)));
  }
  {
    std::shared_ptr<const WeightVersion> v0 = MakeVersion(0);
    FakeHarness h({{Chunks(v0, 16), std::nullopt}});  // version 0 is a version
    ASSERT_TRUE(h.receiver().WaitForVersion(0, kLong));
    ExpectSameVersion(h.receiver().Latest(), *v0);
  }
}

TEST(WeightReceiverTest, TakeHandsTheVersionOver) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1);
  FakeHarness h({{Chunks(v1, 16), std::nullopt}});
  ASSERT_TRUE(h.receiver().WaitForVersion(1, kLong));
  std::shared_ptr<const WeightVersion> taken = h.receiver().Take();
  ExpectSameVersion(taken, *v1);
  EXPECT_EQ(h.receiver().Latest(), nullptr);
  EXPECT_EQ(h.receiver().Take(), nullptr);
  EXPECT_TRUE(h.receiver().WaitForVersion(1, milliseconds(0)));  // still held
}

TEST(WeightReceiverTest, DropsMalformedVersionAndAsksForAFullPush) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1), v2 = MakeVersion(2),
                                       v3 = MakeVersion(3);
  std::vector<v1::WeightChunk> bad = Chunks(v2, 16);
  bad.erase(bad.begin() + 1);  // a gap in tensor 0's offsets
  // The first connection: version 1, a malformed version 2, version 3 (never read: the
  // receiver gives up on the stream). The second: version 2 and 3, whole.
  FakeHarness h({{Concat({Chunks(v1, 16), bad, Chunks(v3, 16)}), std::nullopt},
                 {Concat({Chunks(v2, 16), Chunks(v3, 16)}), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(3, kLong));
  ExpectSameVersion(h.receiver().Latest(), *v3);
  EXPECT_EQ(h.receiver().malformed_versions(), 1u);
  const auto requests = h.service().requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].actor_id(), "actor-x");
  ExpectAsked(requests[1], 1, false);
}

TEST(WeightReceiverTest, ReconnectsAfterBrokenStreamWithHaveVersion) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1), v2 = MakeVersion(2);
  const std::vector<v1::WeightChunk> c2 = Chunks(v2, 24);
  // The first connection sends version 1 and half of version 2, then breaks.
  std::vector<v1::WeightChunk> first = Chunks(v1, 24);
  first.insert(first.end(), c2.begin(), c2.begin() + c2.size() / 2);
  // The second starts again with the current version (1: must be skipped), then 2.
  FakeHarness h({{first, grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away")},
                 {Concat({Chunks(v1, 24), c2}), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  ExpectSameVersion(h.receiver().Latest(), *v2);
  EXPECT_EQ(h.receiver().malformed_versions(), 0u);
  const auto requests = h.service().requests();
  ASSERT_GE(requests.size(), 2u);
  ExpectAsked(requests[1], 1, false);  // version 1 came without keep_base
}

// A learner restarted from an older checkpoint numbers its versions below what the
// receiver holds: after Forget(), the receiver asks for a full push as a new actor would
// and takes the lower version.
TEST(WeightReceiverTest, ForgetAsksForAFullPushAndTakesALowerVersion) {
  std::shared_ptr<const WeightVersion> v3 = MakeVersion(3), v1 = MakeVersion(1);
  FakeHarness h(
      {{Chunks(v3, 24, /*keep_base=*/true), std::nullopt}, {Chunks(v1, 24), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(3, kLong));
  EXPECT_EQ(h.receiver().NewestVersion(), std::optional<uint64_t>(3));
  h.receiver().Forget();
  ASSERT_TRUE(Eventually([&] { return h.receiver().Latest() != nullptr; }));
  ExpectSameVersion(h.receiver().Latest(), *v1);
  EXPECT_EQ(h.receiver().NewestVersion(), std::optional<uint64_t>(1));
  const auto requests = h.service().requests();
  ASSERT_GE(requests.size(), 2u);
  ExpectAsked(requests[1], 0, false);  // neither version 3 nor its base
}

TEST(WeightReceiverTest, ReconnectsWithHaveBaseAndAppliesADelta) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1);
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  std::vector<v1::WeightChunk> first = Chunks(v1, 24, /*keep_base=*/true);
  const std::vector<v1::WeightChunk> d2 = DeltaChunks(v1, v2, 8);
  first.insert(first.end(), d2.begin(), d2.begin() + d2.size() / 2);
  FakeHarness h(
      {{first, grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away")}, {d2, std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  ExpectHolds(h.receiver(), *v2, true, 1, 0);
  const auto requests = h.service().requests();
  ASSERT_GE(requests.size(), 2u);
  ExpectAsked(requests[1], 1, true);
}

TEST(WeightReceiverTest, BrokenStreamDuringAnInPlaceDeltaAsksForAFullPush) {
  // The actor takes and drops version 1, so version 2's delta is applied in version 1's
  // memory; the stream breaks half-way through it. What is left of version 1 is no base:
  // the actor must reconnect without have_base (and then take the full version 2).
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1);
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  std::shared_ptr<const WeightVersion> v3 = SmallStep(*v2, 3);
  std::vector<v1::WeightChunk> first = Chunks(v1, 16, /*keep_base=*/true);
  const size_t hold = first.size();
  const std::vector<v1::WeightChunk> d2 = DeltaChunks(v1, v2, 4);
  ASSERT_GT(d2.size(), 4u);
  first.insert(first.end(), d2.begin(), d2.begin() + d2.size() * 2 / 3);
  FakeHarness h({{first, grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away"), hold},
                 {Concat({Chunks(v2, 16, true), DeltaChunks(v2, v3, 16)}), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(1, kLong));
  ExpectSameVersion(h.receiver().Take(), *v1);  // taken and dropped at once
  h.service().Release();
  ASSERT_TRUE(h.receiver().WaitForVersion(3, kLong));
  ExpectHolds(h.receiver(), *v3, true, 1, 0);
  const auto requests = h.service().requests();
  ASSERT_EQ(requests.size(), 2u);
  ExpectAsked(requests[1], 1, false);
}

TEST(WeightReceiverTest, CorruptedDeltaDropsTheBaseAndAsksForAFullPush) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1);
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  std::shared_ptr<const WeightVersion> v3 = SmallStep(*v2, 3);
  std::vector<v1::WeightChunk> bad = DeltaChunks(v1, v2, 1 << 20);
  (*bad[0].mutable_data())[0] ^= 0x55;  // not a zstd frame any more
  FakeHarness h({{Concat({Chunks(v1, 16, true), bad}), std::nullopt},
                 {Concat({Chunks(v2, 16, true), DeltaChunks(v2, v3, 16)}), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(3, kLong));
  ExpectSameVersion(h.receiver().Latest(), *v3);
  EXPECT_EQ(h.receiver().malformed_versions(), 1u);
  EXPECT_EQ(h.receiver().delta_versions(), 1u);  // version 3; version 2 came whole
  const auto requests = h.service().requests();
  ASSERT_EQ(requests.size(), 2u);
  ExpectAsked(requests[0], 0, false);
  ExpectAsked(requests[1], 1, false);  // the base was dropped with the bad delta
}

TEST(WeightReceiverTest, DeltaWithoutABaseAsksForAFullPush) {
  std::shared_ptr<const WeightVersion> v1 = MakeVersion(1);
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  FakeHarness h({{DeltaChunks(v1, v2, 16), std::nullopt}, {Chunks(v2, 16, true), std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  ExpectHolds(h.receiver(), *v2, false, -1, 1);
  const auto requests = h.service().requests();
  ASSERT_EQ(requests.size(), 2u);
  ExpectAsked(requests[1], 0, false);
}

TEST(WeightReceiverTest, WrongTokenReceivesNothing) {
  FakeHarness h({{Chunks(MakeVersion(1), 16), std::nullopt}}, "wrong-token");
  EXPECT_FALSE(h.receiver().WaitForVersion(0, milliseconds(200)));
  EXPECT_EQ(h.receiver().Latest(), nullptr);
  EXPECT_EQ(h.receiver().malformed_versions(), 0u);
  EXPECT_TRUE(h.service().requests().empty());
}

// ---------------------------------------------------------------- the real feed

// A WeightFeed service that forwards each stream to the real one, recording the
// requests; it can break the open streams, refuse new ones for a while, and corrupt the
// first chunk of the next delta it forwards.
class Proxy final : public v1::WeightFeed::Service {
 public:
  explicit Proxy(const std::shared_ptr<grpc::Channel>& upstream)
      : stub_(v1::WeightFeed::NewStub(upstream)) {}

  grpc::Status WatchWeights(grpc::ServerContext* ctx, const v1::WatchWeightsRequest* request,
                            grpc::ServerWriter<v1::WeightChunk>* writer) override {
    grpc::ClientContext up;
    const auto& metadata = ctx->client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      up.AddMetadata("authorization", std::string(it->second.data(), it->second.size()));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (refusing_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "proxy: refusing");
      requests_.push_back(*request);
      open_.insert(&up);
    }
    // Ends the upstream call when the actor goes away.
    std::atomic<bool> done{false};
    std::thread watchdog([&] {
      while (!done.load()) {
        if (ctx->IsCancelled()) {
          up.TryCancel();
          return;
        }
        std::this_thread::sleep_for(milliseconds(2));
      }
    });
    std::unique_ptr<grpc::ClientReader<v1::WeightChunk>> reader =
        stub_->WatchWeights(&up, *request);
    v1::WeightChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.header().encoding() == v1::WEIGHT_XOR_ZSTD && chunk.header().offset() == 0 &&
          !chunk.data().empty() && corrupt_next_delta_.exchange(false)) {
        (*chunk.mutable_data())[0] ^= 0x55;  // the zstd magic number
        corrupted_.fetch_add(1);
      }
      if (!writer->Write(chunk)) break;
    }
    up.TryCancel();
    const grpc::Status status = reader->Finish();
    done = true;
    watchdog.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_.erase(&up);
    }
    if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) return status;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "proxy: upstream ended");
  }

  // Breaks every open stream (the actors see UNAVAILABLE and reconnect).
  void BreakAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (grpc::ClientContext* c : open_) c->TryCancel();
  }
  void Refuse(bool refuse) {
    std::lock_guard<std::mutex> lock(mu_);
    refusing_ = refuse;
  }
  void CorruptNextDelta() { corrupt_next_delta_ = true; }
  int corrupted() const { return corrupted_.load(); }
  std::vector<v1::WatchWeightsRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  size_t open_streams() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_.size();
  }

 private:
  std::unique_ptr<v1::WeightFeed::Stub> stub_;
  std::atomic<bool> corrupt_next_delta_{false};
  std::atomic<int> corrupted_{0};
  std::mutex mu_;
  bool refusing_ = false;
  std::vector<v1::WatchWeightsRequest> requests_;
  std::set<grpc::ClientContext*> open_;
};

// The learner's WeightPublisher and WeightFeedService on loopback, optionally behind a
// Proxy, with receivers. Every version published through Publish() is remembered, and a
// watcher thread checks everything any receiver's Latest() returns against it: a
// receiver must never expose a version that was not published, or other bits.
class RealFeed {
 public:
  RealFeed(bool delta, size_t chunk_bytes, bool proxy, bool watch = true)
      : publisher_(WeightPublisher::Options{.delta = delta, .metrics = &metrics_}),
        service_(&publisher_, kToken, chunk_bytes, &metrics_) {
    auto server = StartServer("127.0.0.1:0", {&service_}, &port_);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    if (proxy) {
      proxy_ = std::make_unique<Proxy>(MakeChannel("127.0.0.1:" + std::to_string(port_)));
      auto p = StartServer("127.0.0.1:0", {proxy_.get()}, &proxy_port_);
      EXPECT_TRUE(p.ok()) << p.status();
      proxy_server_ = *std::move(p);
    }
    if (watch) watcher_ = std::thread([this] { Watch(); });
  }

  ~RealFeed() {
    stop_watching_ = true;
    if (watcher_.joinable()) watcher_.join();
    for (auto& r : receivers_) r->Stop();
    publisher_.Close();
    const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(5);
    if (proxy_server_ != nullptr) proxy_server_->Shutdown(deadline);
    server_->Shutdown(deadline);
  }

  WeightReceiver& AddReceiver(std::string token = kToken) {
    const int port = proxy_ != nullptr ? proxy_port_ : port_;
    auto r = std::make_unique<WeightReceiver>(MakeChannel("127.0.0.1:" + std::to_string(port)),
                                              "actor-" + std::to_string(receivers_.size()),
                                              std::move(token), ShortBackoff());
    r->Start();
    std::lock_guard<std::mutex> lock(mu_);
    receivers_.push_back(std::move(r));
    return *receivers_.back();
  }

  // Publishes `v`; with `valid` false the receivers must never expose it.
  void Publish(std::shared_ptr<const WeightVersion> v, bool valid = true) {
    if (valid) {
      std::lock_guard<std::mutex> lock(mu_);
      published_[v->version] = v;
    }
    publisher_.Publish(std::move(v));
  }

  // What the watcher saw go wrong; empty if nothing.
  std::vector<std::string> exposed() {
    std::lock_guard<std::mutex> lock(mu_);
    return exposed_;
  }
  // How many distinct versions the watcher checked.
  size_t checked() {
    std::lock_guard<std::mutex> lock(mu_);
    return checked_;
  }

  WeightPublisher& publisher() { return publisher_; }
  Proxy& proxy() { return *proxy_; }
  std::string metrics() const { return metrics_.Serialize(); }
  // The value of the sample `name` (with its labels, as serialised); -1 if absent.
  double Metric(const std::string& name) const {
    const std::string text = metrics();
    const size_t at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::strtod(text.c_str() + at + 1 + name.size() + 1, nullptr);
  }

 private:
  void Watch() {
    // Remembers what it checked by address and version only: holding a reference would
    // stop the receiver from reusing a taken version's memory.
    std::vector<std::pair<const WeightVersion*, uint64_t>> last;
    while (!stop_watching_.load()) {
      std::vector<WeightReceiver*> receivers;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& r : receivers_) receivers.push_back(r.get());
      }
      last.resize(receivers.size(), {nullptr, 0});
      for (size_t i = 0; i < receivers.size(); ++i) {
        std::shared_ptr<const WeightVersion> v = receivers[i]->Latest();
        if (v == nullptr || std::make_pair(v.get(), v->version) == last[i]) continue;
        last[i] = {v.get(), v->version};
        std::lock_guard<std::mutex> lock(mu_);
        ++checked_;
        auto it = published_.find(v->version);
        if (it == published_.end()) {
          exposed_.push_back("receiver " + std::to_string(i) + " exposed version " +
                             std::to_string(v->version) + ", which was never validly published");
        } else if (std::string d = Difference(*v, *it->second); !d.empty()) {
          exposed_.push_back("receiver " + std::to_string(i) + " exposed version " +
                             std::to_string(v->version) + " with a different " + d);
        }
      }
      std::this_thread::sleep_for(milliseconds(1));
    }
  }

  MetricsRegistry metrics_{"learner"};
  WeightPublisher publisher_;
  WeightFeedService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Proxy> proxy_;
  int proxy_port_ = 0;
  std::unique_ptr<grpc::Server> proxy_server_;
  std::mutex mu_;
  std::vector<std::unique_ptr<WeightReceiver>> receivers_;  // guarded by mu_ (the vector)
  std::map<uint64_t, std::shared_ptr<const WeightVersion>> published_;  // guarded by mu_
  std::vector<std::string> exposed_;                                    // guarded by mu_
  size_t checked_ = 0;                                                  // guarded by mu_
  std::atomic<bool> stop_watching_{false};
  std::thread watcher_;
};

class RealFeedFullTest : public ::testing::TestWithParam<WireDtype> {};

TEST_P(RealFeedFullTest, FullPushes) {
  const WireDtype dtype = GetParam();
  RealFeed feed(/*delta=*/false, /*chunk_bytes=*/100, /*proxy=*/false);
  WeightReceiver& r = feed.AddReceiver();
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, dtype, LargerModel());
  feed.Publish(v0);
  ASSERT_TRUE(r.WaitForVersion(0, kLong));
  ExpectHolds(r, *v0, false);
  EXPECT_FALSE(r.Latest()->keep_base);

  std::shared_ptr<const WeightVersion> v1 = SmallStep(*v0, 1);
  feed.Publish(v1);
  ASSERT_TRUE(r.WaitForVersion(1, kLong));
  ExpectHolds(r, *v1, false);

  // Retire() lets go of the version; the next one still arrives.
  feed.publisher().Retire();
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectSameVersion(r.Latest(), *v2);

  EXPECT_EQ(r.delta_versions(), 0u);
  EXPECT_EQ(r.malformed_versions(), 0u);
  EXPECT_GT(r.wire_bytes(), v0->Bytes() + v1->Bytes() + v2->Bytes());
  EXPECT_TRUE(feed.exposed().empty()) << feed.exposed()[0];
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RealFeedFullTest,
                         ::testing::Values(WireDtype::kFloat32, WireDtype::kBfloat16),
                         [](const auto& info) { return std::string(WireDtypeName(info.param)); });

class RealFeedDeltaTest : public ::testing::TestWithParam<WireDtype> {};

TEST_P(RealFeedDeltaTest, FullFirstThenDeltasAndRequestsSayWhatTheActorHolds) {
  const WireDtype dtype = GetParam();
  RealFeed feed(/*delta=*/true, /*chunk_bytes=*/256, /*proxy=*/true);
  WeightReceiver& r = feed.AddReceiver();

  // Version 0 goes whole, kept as a base.
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, dtype, LargerModel());
  feed.Publish(v0);
  ASSERT_TRUE(r.WaitForVersion(0, kLong));
  ExpectHolds(r, *v0, false);
  EXPECT_TRUE(r.Latest()->keep_base);
  EXPECT_EQ(r.delta_versions(), 0u);
  {
    const auto requests = feed.proxy().requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].actor_id(), "actor-0");
    ExpectAsked(requests[0], 0, false);
  }

  // Version 1, a small change: a delta, much smaller than the version.
  std::shared_ptr<const WeightVersion> v1 = SmallStep(*v0, 1);
  const uint64_t before = r.wire_bytes();
  feed.Publish(v1);
  ASSERT_TRUE(r.WaitForVersion(1, kLong));
  ExpectHolds(r, *v1, true, 1);
  EXPECT_LT((r.wire_bytes() - before) * 10, v1->Bytes());
  EXPECT_EQ(r.Latest()->wire_bytes, r.wire_bytes() - before);

  // A broken stream: the actor reconnects saying it holds version 1 as a base, and the
  // next version comes as a delta again.
  feed.proxy().BreakAll();
  ASSERT_TRUE(Eventually([&] { return feed.proxy().requests().size() == 2; }));
  {
    const auto requests = feed.proxy().requests();
    ExpectAsked(requests[1], 1, true);
  }
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectHolds(r, *v2, true, 2);

  // While the actor is away, versions 3 and 4 are published; 4's delta is against 3,
  // which the actor never had: it must get version 4 whole.
  feed.proxy().Refuse(true);
  feed.proxy().BreakAll();
  ASSERT_TRUE(Eventually([&] { return feed.proxy().open_streams() == 0; }));
  std::shared_ptr<const WeightVersion> v3 = SmallStep(*v2, 3);
  std::shared_ptr<const WeightVersion> v4 = SmallStep(*v3, 4);
  feed.Publish(v3);
  feed.Publish(v4);
  ASSERT_NE(feed.publisher().Latest().delta, nullptr);
  EXPECT_EQ(feed.publisher().Latest().delta->base_version, 3u);
  feed.proxy().Refuse(false);
  ASSERT_TRUE(r.WaitForVersion(4, kLong));
  ExpectHolds(r, *v4, false);
  EXPECT_TRUE(r.Latest()->keep_base);
  EXPECT_EQ(r.delta_versions(), 2u);
  {
    const auto requests = feed.proxy().requests();
    ASSERT_EQ(requests.size(), 3u);
    ExpectAsked(requests[2], 2, true);
  }

  // And the next one is a delta against 4 again.
  std::shared_ptr<const WeightVersion> v5 = SmallStep(*v4, 5);
  feed.Publish(v5);
  ASSERT_TRUE(r.WaitForVersion(5, kLong));
  ExpectHolds(r, *v5, true, 3, 0);
  EXPECT_TRUE(feed.exposed().empty()) << feed.exposed()[0];

  // The learner's counters agree: versions 0 and 4 whole, 1, 2 and 5 as deltas (the
  // service counts a push after its last write, so maybe just after the actor has it).
  EXPECT_TRUE(Eventually([&] {
    return feed.Metric("pmdrl_learner_weight_pushes_total{encoding=\"full\"}") == 2 &&
           feed.Metric("pmdrl_learner_weight_pushes_total{encoding=\"delta\"}") == 3;
  })) << feed.metrics();
}

TEST_P(RealFeedDeltaTest, LateJoinerGetsTheNewestVersionWholeThenDeltas) {
  const WireDtype dtype = GetParam();
  RealFeed feed(/*delta=*/true, /*chunk_bytes=*/4096, /*proxy=*/false);
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, dtype, LargerModel());
  std::shared_ptr<const WeightVersion> v1 = SmallStep(*v0, 1);
  feed.Publish(v0);
  feed.Publish(v1);  // published with a delta against 0, which the newcomer lacks
  WeightReceiver& r = feed.AddReceiver();
  ASSERT_TRUE(r.WaitForVersion(1, kLong));
  ExpectHolds(r, *v1, false);
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectHolds(r, *v2, true, 1);
  EXPECT_TRUE(feed.exposed().empty()) << feed.exposed()[0];
}

TEST_P(RealFeedDeltaTest, CorruptedDeltaLeadsToAFullPushAndCorrectWeights) {
  const WireDtype dtype = GetParam();
  RealFeed feed(/*delta=*/true, /*chunk_bytes=*/256, /*proxy=*/true);
  WeightReceiver& r = feed.AddReceiver();
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, dtype, LargerModel());
  feed.Publish(v0);
  ASSERT_TRUE(r.WaitForVersion(0, kLong));

  // Version 1's delta arrives corrupted: the actor drops it and its base, and
  // reconnects asking for a full push.
  feed.proxy().CorruptNextDelta();
  std::shared_ptr<const WeightVersion> v1 = SmallStep(*v0, 1);
  feed.Publish(v1);
  ASSERT_TRUE(r.WaitForVersion(1, kLong));
  EXPECT_EQ(feed.proxy().corrupted(), 1);
  EXPECT_EQ(r.malformed_versions(), 1u);
  ExpectHolds(r, *v1, false, 0);
  {
    const auto requests = feed.proxy().requests();
    ASSERT_EQ(requests.size(), 2u);
    ExpectAsked(requests[1], 0, false);
  }

  // The full push was kept as a base: deltas again.
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectHolds(r, *v2, true, 1, 1);
  EXPECT_GE(feed.checked(), 1u);
  EXPECT_TRUE(feed.exposed().empty()) << feed.exposed()[0];
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RealFeedDeltaTest,
                         ::testing::Values(WireDtype::kFloat32, WireDtype::kBfloat16),
                         [](const auto& info) { return std::string(WireDtypeName(info.param)); });

// Every version is taken and dropped, so the receiver writes the next one into its
// memory (deltas in place); one delta arrives corrupted half-way. Each taken version
// must be exactly what was published. No watcher: a reference it held for a moment would
// make the reuse below depend on timing.
class RealFeedReuseTest : public ::testing::TestWithParam<bool> {};

TEST_P(RealFeedReuseTest, TakenVersionsMemoryIsReusedAndTheWeightsStayRight) {
  const bool delta = GetParam();
  RealFeed feed(delta, /*chunk_bytes=*/1000, /*proxy=*/true, /*watch=*/false);
  WeightReceiver& r = feed.AddReceiver();
  std::shared_ptr<const WeightVersion> want = MakeVersion(0, WireDtype::kFloat32, LargerModel());
  std::vector<uintptr_t> memory;  // where each taken version's first tensor was
  for (uint64_t v = 0; v <= 5; ++v) {
    SCOPED_TRACE(v);
    if (v > 0) want = SmallStep(*want, v);
    if (v == 3) feed.proxy().CorruptNextDelta();
    feed.Publish(want);
    ASSERT_TRUE(r.WaitForVersion(v, kLong));
    std::shared_ptr<const WeightVersion> got = r.Take();
    ExpectSameVersion(got, *want);
    EXPECT_EQ(r.Take(), nullptr);
    EXPECT_EQ(got->from_delta, delta && v > 0 && v != 3);
    memory.push_back(reinterpret_cast<uintptr_t>(got->tensors[0].bytes.get()));
  }  // `got` is dropped before the next version is published
  EXPECT_EQ(r.malformed_versions(), delta ? 1u : 0u);
  EXPECT_EQ(r.delta_versions(), delta ? 4u : 0u);
  // The versions after 0 were written into the memory of the one before, except 3
  // after its delta failed half-applied in place (the base is gone: a fresh full push).
  for (size_t v : {1, 2, 4, 5}) EXPECT_EQ(memory[v], memory[v - 1]) << v;
  if (!delta) {
    EXPECT_EQ(memory[3], memory[2]);
  }
}

INSTANTIATE_TEST_SUITE_P(DeltaOnOff, RealFeedReuseTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Delta" : "Full"; });

TEST(RealFeedTest, VersionsTheActorHoldsAreNeverOverwritten) {
  RealFeed feed(/*delta=*/true, /*chunk_bytes=*/1000, /*proxy=*/false, /*watch=*/false);
  WeightReceiver& r = feed.AddReceiver();
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, WireDtype::kFloat32, LargerModel());
  feed.Publish(v0);
  ASSERT_TRUE(r.WaitForVersion(0, kLong));
  std::shared_ptr<const WeightVersion> taken = r.Take();  // taken, and still held
  ExpectSameVersion(taken, *v0);

  std::shared_ptr<const WeightVersion> v1 = SmallStep(*v0, 1);
  feed.Publish(v1);
  ASSERT_TRUE(r.WaitForVersion(1, kLong));
  std::shared_ptr<const WeightVersion> seen = r.Latest();  // not taken, held
  ExpectSameVersion(seen, *v1);
  EXPECT_TRUE(seen->from_delta);

  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectHolds(r, *v2, true);
  std::shared_ptr<const WeightVersion> v3 = SmallStep(*v2, 3);
  feed.Publish(v3);
  ASSERT_TRUE(r.WaitForVersion(3, kLong));
  ExpectSameVersion(r.Latest(), *v3);

  // What the actor held all along is untouched.
  ExpectSameVersion(taken, *v0);
  ExpectSameVersion(seen, *v1);
  EXPECT_EQ(r.delta_versions(), 3u);
}

class RealFeedBadVersionTest : public ::testing::TestWithParam<bool> {};

TEST_P(RealFeedBadVersionTest, VersionThatFailsItsChecksumIsNeverExposed) {
  const bool delta = GetParam();
  RealFeed feed(delta, /*chunk_bytes=*/512, /*proxy=*/false);
  WeightReceiver& r = feed.AddReceiver();
  std::shared_ptr<const WeightVersion> v0 = MakeVersion(0, WireDtype::kFloat32, LargerModel());
  feed.Publish(v0);
  ASSERT_TRUE(r.WaitForVersion(0, kLong));

  // Version 1 claims a checksum its bytes do not have (whole, and after the delta).
  std::shared_ptr<WeightVersion> v1 = SmallStep(*v0, 1);
  v1->tensors[1].checksum ^= 1;
  feed.Publish(v1, /*valid=*/false);
  ASSERT_TRUE(Eventually([&] { return r.malformed_versions() >= 1; }));
  EXPECT_FALSE(r.WaitForVersion(1, milliseconds(100)));
  ExpectSameVersion(r.Latest(), *v0);

  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2);
  feed.Publish(v2);
  ASSERT_TRUE(r.WaitForVersion(2, kLong));
  ExpectSameVersion(r.Latest(), *v2);
  EXPECT_FALSE(r.Latest()->from_delta);  // no base after the failure: whole
  EXPECT_TRUE(feed.exposed().empty()) << feed.exposed()[0];
}

INSTANTIATE_TEST_SUITE_P(DeltaOnOff, RealFeedBadVersionTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Delta" : "Full"; });

TEST(RealFeedTest, WrongTokenReceivesNothing) {
  RealFeed feed(/*delta=*/true, /*chunk_bytes=*/4096, /*proxy=*/false);
  feed.Publish(MakeVersion(0));
  WeightReceiver& r = feed.AddReceiver("wrong-token");
  EXPECT_FALSE(r.WaitForVersion(0, milliseconds(300)));
  EXPECT_EQ(r.Latest(), nullptr);
  EXPECT_EQ(r.malformed_versions(), 0u);
  EXPECT_TRUE(Eventually([&] {
    return feed.Metric("pmdrl_learner_rejected_total{reason=\"unauthenticated\"}") >= 1;
  })) << feed.metrics();
}

}  // namespace
}  // namespace pmdrl
