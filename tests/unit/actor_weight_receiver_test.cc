#include <grpcpp/server.h>
#include <grpcpp/server_context.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "actor/weight_receiver.h"
#include "common/auth.h"
#include "common/rpc.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {
namespace {

using std::chrono::milliseconds;

constexpr char kToken[] = "test-token";

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// Three tensors whose values encode the version, so versions are told apart.
std::vector<Tensor> MakeTensors(uint64_t version) {
  std::vector<Tensor> t = {{"model.embed_tokens.weight", {3, 4}, {}},
                           {"model.norm.weight", {4}, {}},
                           {"lm_head.weight", {3, 4}, {}}};
  for (size_t i = 0; i < t.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : t[i].shape) n *= d;
    for (int64_t j = 0; j < n; ++j) {
      t[i].values.push_back(static_cast<float>(version * 1000 + i * 100 + j) * 0.5f);
    }
  }
  return t;
}

// The chunks of one version, each tensor cut into pieces of at most `chunk_bytes`.
std::vector<v1::WeightChunk> Chunks(uint64_t version, const std::vector<Tensor>& tensors,
                                    size_t chunk_bytes) {
  std::vector<v1::WeightChunk> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string bytes(reinterpret_cast<const char*>(tensors[i].values.data()),
                            tensors[i].values.size() * 4);
    for (size_t off = 0; off < bytes.size(); off += chunk_bytes) {
      v1::WeightChunk c;
      c.set_version(version);
      c.set_name(tensors[i].name);
      for (int64_t d : tensors[i].shape) c.add_shape(d);
      c.set_offset(off);
      c.set_tensor_bytes(bytes.size());
      c.set_data(bytes.substr(off, chunk_bytes));
      c.set_tensor_index(static_cast<uint32_t>(i));
      c.set_tensor_count(static_cast<uint32_t>(tensors.size()));
      out.push_back(std::move(c));
    }
  }
  return out;
}

void ExpectVersion(const WeightSet& set, uint64_t version) {
  const std::vector<Tensor> want = MakeTensors(version);
  EXPECT_EQ(set.version, version);
  ASSERT_EQ(set.names.size(), want.size());
  ASSERT_EQ(set.data.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(set.names[i], want[i].name);
    EXPECT_EQ(set.shapes[i], want[i].shape);
    EXPECT_EQ(set.data[i], want[i].values) << want[i].name;
  }
}

// Serves WatchWeights from a script: connection i streams scripts[i] (the last script
// for later connections), then either ends the stream with `end_status[i]` or, when
// none is given, holds it open until the client cancels.
class FakeCoordinator final : public v1::Coordinator::Service {
 public:
  struct Script {
    std::vector<v1::WeightChunk> chunks;
    std::optional<grpc::Status> end_status;
  };
  explicit FakeCoordinator(std::vector<Script> scripts) : scripts_(std::move(scripts)) {}

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
    for (const v1::WeightChunk& c : script.chunks) {
      if (!writer->Write(c)) return grpc::Status::CANCELLED;
    }
    if (script.end_status.has_value()) return *script.end_status;
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(milliseconds(5));
    return grpc::Status::CANCELLED;
  }

  std::vector<v1::WatchWeightsRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  const std::vector<Script> scripts_;
  std::mutex mu_;
  std::vector<v1::WatchWeightsRequest> requests_;
};

class Harness {
 public:
  explicit Harness(std::vector<FakeCoordinator::Script> scripts, std::string token = kToken)
      : service_(std::move(scripts)) {
    int port = 0;
    auto server = StartServer("127.0.0.1:0", {&service_}, &port);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    WeightReceiver::Options options;
    options.initial_backoff = milliseconds(10);
    options.max_backoff = milliseconds(50);
    receiver_ = std::make_unique<WeightReceiver>(MakeChannel("127.0.0.1:" + std::to_string(port)),
                                                 "actor-x", std::move(token), options);
    receiver_->Start();
  }
  ~Harness() {
    receiver_->Stop();
    server_->Shutdown();
  }
  WeightReceiver& receiver() { return *receiver_; }
  FakeCoordinator& service() { return service_; }

 private:
  FakeCoordinator service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<WeightReceiver> receiver_;
};

constexpr milliseconds kLong{20000};  // only reached if the test fails

TEST(WeightReceiverTest, AssemblesTwoChunkedVersions) {
  std::vector<v1::WeightChunk> chunks = Chunks(1, MakeTensors(1), 12);
  const std::vector<v1::WeightChunk> v2 = Chunks(2, MakeTensors(2), 20);
  ASSERT_GT(chunks.size(), 6u);  // tensors really are split
  chunks.insert(chunks.end(), v2.begin(), v2.end());
  Harness h({{chunks, std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  std::shared_ptr<const WeightSet> latest = h.receiver().Latest();
  ASSERT_NE(latest, nullptr);
  ExpectVersion(*latest, 2);
  EXPECT_EQ(latest->total_bytes, (12u + 4u + 12u) * 4u);
  EXPECT_TRUE(h.receiver().WaitForVersion(1, milliseconds(0)));
  EXPECT_FALSE(h.receiver().WaitForVersion(3, milliseconds(20)));
  EXPECT_EQ(h.receiver().malformed_versions(), 0u);
  ASSERT_EQ(h.service().requests().size(), 1u);
  EXPECT_EQ(h.service().requests()[0].actor_id(), "actor-x");
  EXPECT_EQ(h.service().requests()[0].have_version(), 0u);
}

TEST(WeightReceiverTest, WaitForVersionZeroWaitsForAnyVersion) {
  Harness h({{{}, std::nullopt}});  // a coordinator that sends nothing
  EXPECT_EQ(h.receiver().Latest(), nullptr);
  EXPECT_FALSE(h.receiver().WaitForVersion(0, milliseconds(30)));
}

TEST(WeightReceiverTest, DropsMalformedVersionAndKeepsGoing) {
  std::vector<v1::WeightChunk> chunks = Chunks(1, MakeTensors(1), 16);
  std::vector<v1::WeightChunk> bad = Chunks(2, MakeTensors(2), 16);
  bad.erase(bad.begin() + 1);  // a gap in tensor 0's offsets
  std::vector<v1::WeightChunk> v3 = Chunks(3, MakeTensors(3), 16);
  chunks.insert(chunks.end(), bad.begin(), bad.end());
  chunks.insert(chunks.end(), v3.begin(), v3.end());
  Harness h({{chunks, std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(3, kLong));
  ExpectVersion(*h.receiver().Latest(), 3);
  EXPECT_EQ(h.receiver().malformed_versions(), 1u);
}

TEST(WeightReceiverTest, ReconnectsAfterBrokenStreamWithHaveVersion) {
  std::vector<v1::WeightChunk> v2 = Chunks(2, MakeTensors(2), 24);
  std::vector<v1::WeightChunk> first = Chunks(1, MakeTensors(1), 24);
  // The first connection sends version 1 and half of version 2, then breaks.
  first.insert(first.end(), v2.begin(), v2.begin() + v2.size() / 2);
  // The second starts again with the current version (1: must be skipped), then 2.
  std::vector<v1::WeightChunk> second = Chunks(1, MakeTensors(1), 24);
  second.insert(second.end(), v2.begin(), v2.end());
  Harness h(
      {{first, grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away")}, {second, std::nullopt}});

  ASSERT_TRUE(h.receiver().WaitForVersion(2, kLong));
  ExpectVersion(*h.receiver().Latest(), 2);
  EXPECT_EQ(h.receiver().malformed_versions(), 0u);
  const auto requests = h.service().requests();
  ASSERT_GE(requests.size(), 2u);
  EXPECT_EQ(requests[1].have_version(), 1u);
}

TEST(WeightReceiverTest, WrongTokenReceivesNothing) {
  Harness h({{Chunks(1, MakeTensors(1), 16), std::nullopt}}, "wrong-token");
  EXPECT_FALSE(h.receiver().WaitForVersion(0, milliseconds(200)));
  EXPECT_EQ(h.receiver().Latest(), nullptr);
}

// ---- The assembly rules, directly.

class AssemblerTest : public ::testing::Test {
 protected:
  // Feeds `chunks`; returns the completed versions and counts errors.
  std::vector<uint64_t> Feed(const std::vector<v1::WeightChunk>& chunks,
                             std::optional<uint64_t> newest = std::nullopt) {
    std::vector<uint64_t> done;
    for (const v1::WeightChunk& c : chunks) {
      std::shared_ptr<WeightSet> complete;
      absl::Status s = assembler_.Add(c, newest, &complete);
      if (!s.ok()) {
        ++errors_;
        last_error_ = std::string(s.message());
      }
      if (complete != nullptr) {
        ExpectVersion(*complete, complete->version);
        done.push_back(complete->version);
      }
    }
    return done;
  }

  // A malformed version 2 followed by a good version 3: only 3 completes, one error.
  void ExpectRejected(std::vector<v1::WeightChunk> bad, const std::string& what) {
    const std::vector<v1::WeightChunk> v3 = Chunks(3, MakeTensors(3), 16);
    bad.insert(bad.end(), v3.begin(), v3.end());
    EXPECT_EQ(Feed(bad), std::vector<uint64_t>{3}) << what;
    EXPECT_EQ(errors_, 1) << what;
    errors_ = 0;
  }

  WeightAssembler assembler_;
  int errors_ = 0;
  std::string last_error_;
};

TEST_F(AssemblerTest, AcceptsWholeTensorsAndManySmallChunks) {
  EXPECT_EQ(Feed(Chunks(1, MakeTensors(1), 1 << 20)), std::vector<uint64_t>{1});
  EXPECT_EQ(Feed(Chunks(2, MakeTensors(2), 4)), std::vector<uint64_t>{2});
  EXPECT_EQ(errors_, 0);
}

TEST_F(AssemblerTest, SkipsVersionsAlreadyHeld) {
  EXPECT_TRUE(Feed(Chunks(4, MakeTensors(4), 16), /*newest=*/4).empty());
  EXPECT_EQ(Feed(Chunks(5, MakeTensors(5), 16), /*newest=*/4), std::vector<uint64_t>{5});
  EXPECT_EQ(errors_, 0);
}

TEST_F(AssemblerTest, RejectsOffsetGap) {
  auto c = Chunks(2, MakeTensors(2), 16);
  c.erase(c.begin() + 1);
  ExpectRejected(c, "gap");
  EXPECT_NE(last_error_.find("offset"), std::string::npos) << last_error_;
}

TEST_F(AssemblerTest, RejectsRepeatedChunk) {
  auto c = Chunks(2, MakeTensors(2), 16);
  c.insert(c.begin() + 1, c[1]);
  ExpectRejected(c, "repeat");
}

TEST_F(AssemblerTest, RejectsSizeNotMultipleOfFour) {
  auto c = Chunks(2, MakeTensors(2), 16);
  c[0].mutable_data()->push_back('x');
  ExpectRejected(c, "odd size");
}

TEST_F(AssemblerTest, RejectsShapeThatDoesNotMatchBytes) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  c[1].set_shape(0, 5);  // model.norm.weight claims 5 elements but has 4
  ExpectRejected(c, "shape");
  EXPECT_NE(last_error_.find("shape"), std::string::npos) << last_error_;
}

TEST_F(AssemblerTest, RejectsDataBeyondTensorBytes) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  c[1].mutable_data()->append(std::string(4, '\0'));
  ExpectRejected(c, "overrun");
}

TEST_F(AssemblerTest, RejectsTensorOutOfOrder) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  std::swap(c[1], c[2]);
  ExpectRejected(c, "order");
}

TEST_F(AssemblerTest, RejectsVersionNotStartingAtTensorZero) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  c.erase(c.begin());
  ExpectRejected(c, "start");
}

TEST_F(AssemblerTest, RejectsChangedTensorCount) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  c[1].set_tensor_count(4);
  ExpectRejected(c, "count");
}

TEST_F(AssemblerTest, RejectsNonFiniteValues) {
  auto c = Chunks(2, MakeTensors(2), 1 << 20);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(c[1].mutable_data()->data() + 4, &nan, 4);
  ExpectRejected(c, "nan");
}

TEST_F(AssemblerTest, IncompleteVersionIsDroppedWhenTheNextStarts) {
  auto c = Chunks(2, MakeTensors(2), 16);
  c.pop_back();  // version 2 never finishes
  const auto v3 = Chunks(3, MakeTensors(3), 16);
  c.insert(c.end(), v3.begin(), v3.end());
  EXPECT_EQ(Feed(c), std::vector<uint64_t>{3});
}

}  // namespace
}  // namespace pmdrl
