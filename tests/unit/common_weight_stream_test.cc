// The weight stream's codec (common/weight_stream.h), without a network: versions built
// by hand are encoded with WriteVersion / EncodeDelta and decoded with WeightAssembler
// (also writing into the previous version's memory, "reuse"), and hand-made hostile
// frames must each be rejected with a clear error, never completing a version, while
// the next good version still assembles.
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/weight_stream.h"
#include "common/wire_dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.pb.h"
#include "tests/weight_diff.h"
#include "tests/weight_versions.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

// ---------------------------------------------------------------- building versions

// 192 + 160 + 32 bytes in float32: tensors split into many chunks at 16-byte chunks.
std::vector<Spec> SmallModel() {
  return {{"model.embed_tokens.weight", {6, 8}},
          {"model.layers.0.mlp.up_proj.weight", {8, 5}},
          {"model.norm.weight", {8}}};
}

// The seeded MakeVersion of tests/weight_versions.h, and this file's: seeded by the
// version, of SmallModel() by default.
using ::pmdrl::MakeVersion;
std::shared_ptr<WeightVersion> MakeVersion(uint64_t version, WireDtype dtype = WireDtype::kFloat32,
                                           const std::vector<Spec>& specs = SmallModel()) {
  return MakeVersion(version, dtype, specs, version);
}

// `v` as a receiver holds a version that came with keep_base: a delta base.
std::shared_ptr<WeightVersion> Kept(std::shared_ptr<WeightVersion> v) {
  v->keep_base = true;
  return v;
}

// Everything a receiver can tell about a version, and its bits.
void ExpectSameVersion(const WeightVersion& got, const WeightVersion& want) {
  EXPECT_EQ(got.version, want.version);
  EXPECT_EQ(got.dtype, want.dtype);
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    EXPECT_EQ(got.tensors[i].name, want.tensors[i].name) << i;
    EXPECT_EQ(got.tensors[i].shape, want.tensors[i].shape) << want.tensors[i].name;
    EXPECT_EQ(got.tensors[i].size, want.tensors[i].size) << want.tensors[i].name;
    EXPECT_EQ(got.tensors[i].checksum, want.tensors[i].checksum) << want.tensors[i].name;
  }
  EXPECT_TRUE(BitIdentical(got, want));
}

// ---------------------------------------------------------------- frames

std::string FrameString(const grpc::ByteBuffer& frame) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(frame.Dump(&slices).ok());
  std::string s;
  for (const grpc::Slice& slice : slices) {
    s.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return s;
}

grpc::ByteBuffer FrameFromString(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::vector<grpc::ByteBuffer> Encode(const std::shared_ptr<const WeightVersion>& version,
                                     size_t chunk_bytes, bool keep_base = false,
                                     const std::shared_ptr<const WeightDelta>& delta = nullptr) {
  std::vector<grpc::ByteBuffer> frames;
  EXPECT_TRUE(WriteVersion(version, delta, keep_base, chunk_bytes, [&](const grpc::ByteBuffer& b) {
    frames.push_back(b);
    return true;
  }));
  return frames;
}

// The frames of a version as protobuf messages, to be edited into hostile ones.
std::vector<v1::WeightChunk> Chunks(const std::shared_ptr<const WeightVersion>& version,
                                    size_t chunk_bytes, bool keep_base = false,
                                    const std::shared_ptr<const WeightDelta>& delta = nullptr) {
  std::vector<v1::WeightChunk> out;
  for (const grpc::ByteBuffer& frame : Encode(version, chunk_bytes, keep_base, delta)) {
    v1::WeightChunk c;
    EXPECT_TRUE(c.ParseFromString(FrameString(frame)));
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<grpc::ByteBuffer> Frames(const std::vector<v1::WeightChunk>& chunks) {
  std::vector<grpc::ByteBuffer> frames;
  for (const v1::WeightChunk& c : chunks) frames.push_back(FrameFromString(c.SerializeAsString()));
  return frames;
}

struct Fed {
  std::vector<std::shared_ptr<WeightVersion>> complete;
  std::vector<absl::Status> errors;
  uint64_t frame_bytes = 0;
};

Fed Feed(WeightAssembler* assembler, std::vector<grpc::ByteBuffer> frames,
         std::optional<uint64_t> newest = std::nullopt, const WeightVersion* base = nullptr) {
  Fed fed;
  for (grpc::ByteBuffer& frame : frames) {
    fed.frame_bytes += frame.Length();
    std::shared_ptr<WeightVersion> complete;
    absl::Status s = assembler->Add(&frame, newest, base, &complete);
    if (!s.ok()) {
      EXPECT_EQ(complete, nullptr) << "a failing chunk completed a version";
      fed.errors.push_back(std::move(s));
    }
    if (complete != nullptr) fed.complete.push_back(std::move(complete));
  }
  return fed;
}

// Feeds frames with the (previous, reuse) form of Add.
Fed FeedInto(WeightAssembler* assembler, std::vector<grpc::ByteBuffer> frames,
             std::optional<uint64_t> newest, WeightVersion* previous, bool reuse) {
  Fed fed;
  for (grpc::ByteBuffer& frame : frames) {
    fed.frame_bytes += frame.Length();
    std::shared_ptr<WeightVersion> complete;
    absl::Status s = assembler->Add(&frame, newest, previous, reuse, &complete);
    if (!s.ok()) {
      EXPECT_EQ(complete, nullptr) << "a failing chunk completed a version";
      fed.errors.push_back(std::move(s));
    }
    if (complete != nullptr) fed.complete.push_back(std::move(complete));
  }
  return fed;
}

// Where each tensor's bytes are.
std::vector<const uint8_t*> Memory(const WeightVersion& v) {
  std::vector<const uint8_t*> m;
  for (const WireTensor& t : v.tensors) m.push_back(t.bytes.get());
  return m;
}

std::vector<uint64_t> Versions(const Fed& fed) {
  std::vector<uint64_t> v;
  for (const auto& c : fed.complete) v.push_back(c->version);
  return v;
}

// ---------------------------------------------------------------- round trips

class RoundTripTest : public ::testing::TestWithParam<WireDtype> {};

TEST_P(RoundTripTest, ManySmallChunksAndOneChunkPerTensor) {
  const WireDtype dtype = GetParam();
  for (size_t chunk_bytes : {size_t{1}, size_t{10}, size_t{16}, size_t{1} << 20}) {
    SCOPED_TRACE(chunk_bytes);
    std::shared_ptr<const WeightVersion> v = MakeVersion(7, dtype);
    std::vector<grpc::ByteBuffer> frames = Encode(v, chunk_bytes, /*keep_base=*/true);
    if (chunk_bytes == (size_t{1} << 20)) {
      EXPECT_EQ(frames.size(), v->tensors.size());
    } else {
      // Chunks never split an element.
      const size_t step = std::max(WireDtypeBytes(dtype),
                                   chunk_bytes / WireDtypeBytes(dtype) * WireDtypeBytes(dtype));
      size_t expected = 0;
      for (const WireTensor& t : v->tensors) expected += (t.size + step - 1) / step;
      EXPECT_EQ(frames.size(), expected);
    }
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, std::move(frames));
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    const WeightVersion& got = *fed.complete[0];
    ExpectSameVersion(got, *v);
    EXPECT_FALSE(got.from_delta);
    EXPECT_TRUE(got.keep_base);
    EXPECT_EQ(got.wire_bytes, fed.frame_bytes);
    EXPECT_GT(got.wire_bytes, v->Bytes());
  }
}

TEST_P(RoundTripTest, ConsecutiveVersionsOnOneStream) {
  const WireDtype dtype = GetParam();
  WeightAssembler assembler;
  std::optional<uint64_t> newest;
  for (uint64_t version : {0, 1, 5}) {
    std::shared_ptr<const WeightVersion> v = MakeVersion(version, dtype);
    Fed fed = Feed(&assembler, Encode(v, 24), newest);
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    ExpectSameVersion(*fed.complete[0], *v);
    EXPECT_FALSE(fed.complete[0]->keep_base);
    newest = version;
  }
}

TEST_P(RoundTripTest, ZeroElementTensors) {
  const WireDtype dtype = GetParam();
  std::shared_ptr<const WeightVersion> v = MakeVersion(3, dtype,
                                                       {{"model.empty.first", {0}},
                                                        {"model.norm.weight", {8}},
                                                        {"model.empty.middle", {4, 0}},
                                                        {"lm_head.weight", {3, 4}},
                                                        {"model.empty.last", {0, 7}}});
  for (size_t chunk_bytes : {size_t{4}, size_t{1} << 20}) {
    std::vector<grpc::ByteBuffer> frames = Encode(v, chunk_bytes);
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, std::move(frames));
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    ExpectSameVersion(*fed.complete[0], *v);
    EXPECT_EQ(fed.complete[0]->tensors[0].size, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RoundTripTest,
                         ::testing::Values(WireDtype::kFloat32, WireDtype::kBfloat16),
                         [](const auto& info) { return std::string(WireDtypeName(info.param)); });

TEST(WeightStreamTest, FramesAreWeightChunkMessagesWithTheHeaderFirst) {
  std::shared_ptr<const WeightVersion> v = MakeVersion(4, WireDtype::kBfloat16);
  std::vector<grpc::ByteBuffer> frames = Encode(v, 64, /*keep_base=*/true);
  ASSERT_FALSE(frames.empty());
  const std::string bytes = FrameString(frames[0]);
  ASSERT_FALSE(bytes.empty());
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), (1 << 3) | 2);  // field 1, length-delimited
  v1::WeightChunk c;
  ASSERT_TRUE(c.ParseFromString(bytes));
  EXPECT_EQ(c.header().version(), 4u);
  EXPECT_EQ(c.header().name(), "model.embed_tokens.weight");
  EXPECT_EQ(std::vector<int64_t>(c.header().shape().begin(), c.header().shape().end()),
            (std::vector<int64_t>{6, 8}));
  EXPECT_EQ(c.header().dtype(), v1::WEIGHT_BFLOAT16);
  EXPECT_EQ(c.header().encoding(), v1::WEIGHT_FULL);
  EXPECT_EQ(c.header().tensor_index(), 0u);
  EXPECT_EQ(c.header().tensor_count(), 3u);
  EXPECT_EQ(c.header().offset(), 0u);
  EXPECT_EQ(c.header().payload_bytes(), 96u);
  EXPECT_EQ(c.header().checksum(), v->tensors[0].checksum);
  EXPECT_TRUE(c.header().keep_base());
  EXPECT_EQ(c.data(), std::string(reinterpret_cast<const char*>(v->tensors[0].bytes.get()), 64));
  // Protobuf's own serialisation of the message is the same bytes (what a typed
  // server writes can be read by the assembler).
  EXPECT_EQ(c.SerializeAsString(), bytes);
}

TEST(WeightStreamTest, DataSlicesPointIntoTheVersionAndKeepItAlive) {
  std::shared_ptr<WeightVersion> v = MakeVersion(2);
  const std::shared_ptr<const WeightVersion> want = Clone(*v, 2);
  std::vector<grpc::ByteBuffer> frames = Encode(v, 1 << 20);
  ASSERT_EQ(frames.size(), 3u);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(frames[1].Dump(&slices).ok());
  ASSERT_EQ(slices.size(), 2u);
  EXPECT_EQ(slices[1].begin(), v->tensors[1].bytes.get());  // zero copy
  slices.clear();
  v.reset();  // the frames own the version now
  WeightAssembler assembler;
  Fed fed = Feed(&assembler, std::move(frames));
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *want);
}

TEST(WeightStreamTest, WriteVersionStopsAtTheFirstFailedWrite) {
  std::shared_ptr<const WeightVersion> v = MakeVersion(1);
  int writes = 0;
  EXPECT_FALSE(
      WriteVersion(v, nullptr, false, 16, [&](const grpc::ByteBuffer&) { return ++writes < 3; }));
  EXPECT_EQ(writes, 3);
}

// ---------------------------------------------------------------- deltas

class DeltaTest : public ::testing::TestWithParam<WireDtype> {};

TEST_P(DeltaTest, DeltaRoundTripIsBitIdenticalAndSmall) {
  const WireDtype dtype = GetParam();
  std::shared_ptr<const WeightVersion> a = Kept(MakeVersion(1, dtype, LargerModel()));
  std::shared_ptr<const WeightVersion> b = SmallStep(*a, 2);
  ASSERT_FALSE(BitIdentical(*a, *b));
  absl::StatusOr<WeightDelta> delta = EncodeDelta(*a, *b);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_EQ(delta->base_version, 1u);
  EXPECT_EQ(delta->version, 2u);
  ASSERT_EQ(delta->payloads.size(), b->tensors.size());
  EXPECT_LT(delta->Bytes() * 20, b->Bytes()) << delta->Bytes() << " vs " << b->Bytes();

  // ApplyDelta alone, tensor by tensor.
  for (size_t i = 0; i < b->tensors.size(); ++i) {
    std::vector<uint8_t> out(b->tensors[i].size);
    ASSERT_TRUE(ApplyDelta(a->tensors[i], delta->payloads[i], out.data()).ok());
    EXPECT_EQ(std::memcmp(out.data(), b->tensors[i].bytes.get(), out.size()), 0) << i;
  }

  // Through the stream, in several chunk sizes.
  auto shared = std::make_shared<const WeightDelta>(*std::move(delta));
  for (size_t chunk_bytes : {size_t{7}, size_t{256}, size_t{1} << 20}) {
    SCOPED_TRACE(chunk_bytes);
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, Encode(b, chunk_bytes, /*keep_base=*/true, shared),
                   /*newest=*/1, a.get());
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    const WeightVersion& got = *fed.complete[0];
    ExpectSameVersion(got, *b);
    EXPECT_TRUE(got.from_delta);
    EXPECT_TRUE(got.keep_base);
    EXPECT_EQ(got.wire_bytes, fed.frame_bytes);
    EXPECT_LT(got.wire_bytes * 10, b->Bytes());
  }
}

// Deltas of `specs` from version 5 to an unchanged version 6 and to a changed one.
void ExpectDeltasApply(WireDtype dtype, const std::vector<Spec>& specs) {
  std::shared_ptr<const WeightVersion> a = Kept(MakeVersion(5, dtype, specs));
  for (const std::shared_ptr<const WeightVersion>& b :
       {std::shared_ptr<const WeightVersion>(Clone(*a, 6)),
        std::shared_ptr<const WeightVersion>(SmallStep(*a, 6))}) {
    absl::StatusOr<WeightDelta> delta = EncodeDelta(*a, *b);
    ASSERT_TRUE(delta.ok()) << delta.status();
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, Encode(b, 8, true, std::make_shared<WeightDelta>(*std::move(delta))),
                   5, a.get());
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    ExpectSameVersion(*fed.complete[0], *b);
    EXPECT_TRUE(fed.complete[0]->from_delta);
  }
}

TEST_P(DeltaTest, UnchangedVersion) {
  ExpectDeltasApply(GetParam(), {{"model.norm.weight", {16}}, {"lm_head.weight", {4, 4}}});
}

// Tensors of more than one of the codec's 1 MiB delta blocks, and of exactly one and
// two, whole and in place.
TEST_P(DeltaTest, TensorsOfSeveralMegabytes) {
  const WireDtype dtype = GetParam();
  const int64_t per_mib = (int64_t{1} << 20) / static_cast<int64_t>(WireDtypeBytes(dtype));
  const std::vector<Spec> specs = {{"model.embed_tokens.weight", {per_mib}},
                                   {"model.layers.0.mlp.up_proj.weight", {2, per_mib}},
                                   {"lm_head.weight", {3, per_mib / 2 + 7}}};
  std::shared_ptr<WeightVersion> a = Kept(MakeVersion(1, dtype, specs));
  std::shared_ptr<const WeightVersion> b = SmallStep(*a, 2);
  absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *b);
  ASSERT_TRUE(d.ok()) << d.status();
  for (size_t i = 0; i < b->tensors.size(); ++i) {
    std::vector<uint8_t> out(b->tensors[i].size);
    absl::Status s = ApplyDelta(a->tensors[i], d->payloads[i], out.data());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(std::memcmp(out.data(), b->tensors[i].bytes.get(), out.size()), 0) << i;
  }
  auto delta = std::make_shared<const WeightDelta>(*std::move(d));
  for (bool reuse : {false, true}) {
    SCOPED_TRACE(reuse);
    std::shared_ptr<WeightVersion> previous = Kept(Clone(*a, 1));
    WeightAssembler assembler;
    Fed fed = FeedInto(&assembler, Encode(b, 4 << 20, true, delta), 1, previous.get(), reuse);
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    ExpectSameVersion(*fed.complete[0], *b);
  }
}

// A zero-element tensor's delta is an empty zstd frame, which must still be read to its
// end (a block loop that never runs would call it "data beyond the tensor").
TEST_P(DeltaTest, ZeroElementTensors) {
  ExpectDeltasApply(GetParam(), {{"model.norm.weight", {16}},
                                 {"model.empty", {0, 3}},
                                 {"lm_head.weight", {4, 4}},
                                 {"model.empty_last", {0}}});
}

// The same, on ApplyDelta directly.
TEST(ApplyDeltaTest, ZeroElementTensor) {
  std::shared_ptr<const WeightVersion> a = MakeVersion(1, WireDtype::kFloat32, {{"empty", {0}}});
  absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *Clone(*a, 2));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->payloads.size(), 1u);
  EXPECT_FALSE(d->payloads[0].empty());  // a zstd frame of no content
  uint8_t out[1] = {0};
  absl::Status s = ApplyDelta(a->tensors[0], d->payloads[0], out);
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DeltaTest,
                         ::testing::Values(WireDtype::kFloat32, WireDtype::kBfloat16),
                         [](const auto& info) { return std::string(WireDtypeName(info.param)); });

TEST(EncodeDeltaTest, RejectsDifferentLayouts) {
  std::shared_ptr<const WeightVersion> a = MakeVersion(1);
  {
    absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *MakeVersion(2, WireDtype::kBfloat16));
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("dtypes differ"));
  }
  {
    std::vector<Spec> fewer = SmallModel();
    fewer.pop_back();
    absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *MakeVersion(2, WireDtype::kFloat32, fewer));
    ASSERT_FALSE(d.ok());
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("3 vs 2 tensors"));
  }
  {
    std::vector<Spec> renamed = SmallModel();
    renamed[1].name = "model.layers.0.mlp.down_proj.weight";
    absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *MakeVersion(2, WireDtype::kFloat32, renamed));
    ASSERT_FALSE(d.ok());
    EXPECT_THAT(std::string(d.status().message()),
                HasSubstr("tensor 1 is 'model.layers.0.mlp.up_proj.weight' [8,5] vs "
                          "'model.layers.0.mlp.down_proj.weight' [8,5]"));
  }
  {
    std::vector<Spec> reshaped = SmallModel();
    reshaped[0].shape = {8, 6};  // same size, different shape
    absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *MakeVersion(2, WireDtype::kFloat32, reshaped));
    ASSERT_FALSE(d.ok());
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("[6,8] vs"));
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("[8,6]"));
  }
}

TEST(ApplyDeltaTest, RejectsGarbageAndWrongSizes) {
  std::shared_ptr<const WeightVersion> a = MakeVersion(1);
  std::vector<uint8_t> out(a->tensors[0].size);
  absl::Status s = ApplyDelta(a->tensors[0], "definitely not zstd", out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("is not a zstd frame"));
  // The delta of tensor 2 (32 bytes) applied to tensor 0 (192 bytes).
  absl::StatusOr<WeightDelta> d = EncodeDelta(*a, *SmallStep(*a, 2));
  ASSERT_TRUE(d.ok());
  s = ApplyDelta(a->tensors[0], d->payloads[2], out.data());
  EXPECT_THAT(std::string(s.message()), HasSubstr("decompresses to 32 bytes, the tensor has 192"));
}

// ---------------------------------------------------------------- hostile input

// A bad version 2 followed by a good version 3 (on the same assembler): exactly one
// error, whose message contains `what`, no version 2, and version 3 complete and right.
class HostileTest : public ::testing::Test {
 protected:
  void ExpectRejected(std::vector<grpc::ByteBuffer> bad, const std::string& what,
                      const WeightVersion* base = nullptr,
                      std::optional<uint64_t> newest = std::nullopt) {
    Fed fed = Feed(&assembler_, std::move(bad), newest, base);
    EXPECT_TRUE(fed.complete.empty()) << what << ": a hostile version completed";
    EXPECT_EQ(fed.errors.size(), 1u) << what;
    last_error_ = fed.errors.empty() ? absl::OkStatus() : fed.errors[0];
    EXPECT_THAT(std::string(last_error_.message()), HasSubstr(what));
    Fed good = Feed(&assembler_, Encode(v3_, 16), newest, base);
    EXPECT_TRUE(good.errors.empty()) << what << ": " << good.errors[0];
    EXPECT_EQ(Versions(good), std::vector<uint64_t>{3}) << what;
    if (good.complete.size() == 1) ExpectSameVersion(*good.complete[0], *v3_);
  }
  void ExpectRejected(const std::vector<v1::WeightChunk>& bad, const std::string& what,
                      const WeightVersion* base = nullptr,
                      std::optional<uint64_t> newest = std::nullopt) {
    ExpectRejected(Frames(bad), what, base, newest);
  }

  WeightAssembler assembler_;
  absl::Status last_error_;  // of the last ExpectRejected
  const std::shared_ptr<const WeightVersion> v2_ = MakeVersion(2);
  const std::shared_ptr<const WeightVersion> v3_ = MakeVersion(3);
};

// --- The chunk rules (the old WeightAssembler tests, on the new format).

TEST_F(HostileTest, GoodChunksAsMessagesAssemble) {
  // The control for every test below: the unedited messages assemble.
  Fed fed = Feed(&assembler_, Frames(Chunks(v2_, 16)));
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *v2_);
}

TEST_F(HostileTest, OffsetGap) {
  auto c = Chunks(v2_, 16);
  c.erase(c.begin() + 1);
  ExpectRejected(c, "expected offset 16");
  const absl::Status& s = last_error_;
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  // The error names the version, the tensor and says the version was dropped.
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("weight version 2, tensor_index 0 ('model.embed_tokens.weight')"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("version dropped"));
}

TEST_F(HostileTest, RepeatedChunk) {
  auto c = Chunks(v2_, 16);
  c.insert(c.begin() + 1, c[1]);
  ExpectRejected(c, "expected offset 32");
}

TEST_F(HostileTest, RepeatedLastChunkOfATensor) {
  auto c = Chunks(v2_, 16);
  ASSERT_EQ(c[11].header().offset(), 176u);  // tensor 0's last chunk
  c.insert(c.begin() + 12, c[11]);
  ExpectRejected(c, "expected tensor 1 at offset 0");
}

TEST_F(HostileTest, SizeNotAMultipleOfTheElement) {
  auto c = Chunks(v2_, 16);
  c[0].mutable_data()->push_back('x');
  ExpectRejected(c, "data of 17 bytes is not whole float32 elements");

  auto b = Chunks(MakeVersion(2, WireDtype::kBfloat16), 16);
  b[0].mutable_data()->push_back('x');
  ExpectRejected(b, "data of 17 bytes is not whole bfloat16 elements");
}

TEST_F(HostileTest, ShapeDoesNotMatchPayloadBytes) {
  auto c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_shape(0, 9);  // [9,5] claims 180 bytes, the payload is 160
  ExpectRejected(c, "shape [9,5] needs 180 bytes of float32 but payload_bytes is 160");

  c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_payload_bytes(164);
  c[1].mutable_data()->append(4, '\0');
  ExpectRejected(c, "shape [8,5] needs 160 bytes of float32 but payload_bytes is 164");
}

TEST_F(HostileTest, DataBeyondThePayload) {
  auto c = Chunks(v2_, 1 << 20);
  c[1].mutable_data()->append(4, '\0');
  ExpectRejected(c, "data of 164 bytes overruns payload_bytes 160");
}

TEST_F(HostileTest, TensorOutOfOrder) {
  auto c = Chunks(v2_, 1 << 20);
  std::swap(c[1], c[2]);
  ExpectRejected(c, "expected tensor 1 at offset 0");
}

TEST_F(HostileTest, VersionNotStartingAtTensorZero) {
  auto c = Chunks(v2_, 1 << 20);
  c.erase(c.begin());
  ExpectRejected(c, "a version must start with tensor 0 at offset 0");

  c = Chunks(v2_, 16);
  c.erase(c.begin());  // tensor 0 from offset 16
  ExpectRejected(c, "a version must start with tensor 0 at offset 0");
}

TEST_F(HostileTest, ChangedTensorCount) {
  auto c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_tensor_count(4);
  ExpectRejected(c, "tensor_count changed from 3 to 4");
}

TEST_F(HostileTest, HeaderChangesInsideATensor) {
  auto c = Chunks(v2_, 16);
  c[1].mutable_header()->set_name("model.other");
  ExpectRejected(c, "the header differs from the tensor's first chunk");
}

TEST_F(HostileTest, NonFiniteValues) {
  auto c = Chunks(v2_, 1 << 20);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(c[1].mutable_data()->data() + 4, &nan, 4);
  ExpectRejected(c, "non-finite value at element 1");

  c = Chunks(v2_, 16);
  const float inf = -std::numeric_limits<float>::infinity();
  std::memcpy(c[3].mutable_data()->data() + 8, &inf, 4);  // element 12 + 2 of tensor 0
  ExpectRejected(c, "non-finite value at element 14");

  auto b = Chunks(MakeVersion(2, WireDtype::kBfloat16), 1 << 20);
  const uint16_t bf16_inf = 0x7F80;
  std::memcpy(b[2].mutable_data()->data() + 6, &bf16_inf, 2);
  ExpectRejected(b, "non-finite value at element 3");
}

// The finiteness scan runs over 64-bit words in 4 KiB blocks with a tail of single
// elements: a bad value is found, at its index, in a later block, in the tail, in either
// half of a word, and not where all values are finite.
TEST(WeightStreamTest, NonFiniteFoundInEveryPartOfALongTensor) {
  struct Case {
    WireDtype dtype;
    int64_t elements;  // 3001 fp32 = 12004 bytes; 4099 bf16 = 8198 bytes: both end in a tail
    int64_t bad;       // -1: all finite
    float value;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const Case& c : std::vector<Case>{{WireDtype::kFloat32, 3001, -1, 0},
                                         {WireDtype::kFloat32, 3001, 2500, nan},
                                         {WireDtype::kFloat32, 3001, 2501, -inf},
                                         {WireDtype::kFloat32, 3001, 3000, inf},
                                         {WireDtype::kBfloat16, 4099, -1, 0},
                                         {WireDtype::kBfloat16, 4099, 1500, -nan},
                                         {WireDtype::kBfloat16, 4099, 2051, inf},
                                         {WireDtype::kBfloat16, 4099, 4098, -inf}}) {
    auto v = MakeVersion(2, c.dtype, {{"w", {c.elements}}}, 7);
    if (c.bad >= 0) SetValue(&v->tensors[0], c.dtype, c.bad, c.value);
    Seal(v.get());  // the checksum holds: only the finiteness check can refuse it
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, Encode(v, 1 << 20));
    const std::string what = absl::StrCat(WireDtypeName(c.dtype), " element ", c.bad);
    if (c.bad < 0) {
      EXPECT_TRUE(fed.errors.empty()) << what;
      EXPECT_EQ(fed.complete.size(), 1u) << what;
    } else {
      ASSERT_EQ(fed.errors.size(), 1u) << what;
      EXPECT_THAT(std::string(fed.errors[0].message()),
                  HasSubstr(absl::StrCat("non-finite value at element ", c.bad)))
          << what;
      EXPECT_TRUE(fed.complete.empty()) << what;
    }
  }
}

TEST_F(HostileTest, HostileHeaders) {
  auto c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_shape(0, -8);
  c[1].mutable_header()->set_shape(1, -5);
  ExpectRejected(c, "negative dimension");

  c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->clear_shape();
  c[1].mutable_header()->add_shape(int64_t{1} << 40);
  c[1].mutable_header()->add_shape(int64_t{1} << 40);
  ExpectRejected(c, "is over the 8 GiB a tensor may have");

  c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_name("");
  ExpectRejected(c, "empty tensor name");

  c = Chunks(v2_, 1 << 20);
  c[2].mutable_header()->set_name(c[0].header().name());
  ExpectRejected(c, "tensor name repeated");

  c = Chunks(v2_, 1 << 20);
  c[0].mutable_header()->set_dtype(static_cast<v1::WeightDtype>(7));
  ExpectRejected(c, "unknown dtype 7");

  c = Chunks(v2_, 1 << 20);
  c[1].mutable_header()->set_dtype(v1::WEIGHT_BFLOAT16);
  ExpectRejected(c, "dtype differs from the version's first tensor");

  c = Chunks(v2_, 1 << 20);
  c[0].mutable_header()->set_encoding(static_cast<v1::WeightEncoding>(9));
  ExpectRejected(c, "unknown encoding 9");

  c = Chunks(v2_, 1 << 20);
  for (auto& chunk : c) chunk.mutable_header()->set_tensor_count(0);
  ExpectRejected(c, "tensor_count is 0");
}

// --- Incomplete and already held versions are dropped silently.

TEST_F(HostileTest, IncompleteVersionIsDroppedWhenTheNextStarts) {
  auto c = Chunks(v2_, 16);
  c.pop_back();  // version 2 never finishes
  Fed fed = Feed(&assembler_, Frames(c));
  EXPECT_TRUE(fed.complete.empty());
  fed = Feed(&assembler_, Encode(v3_, 16));
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(Versions(fed), std::vector<uint64_t>{3});
  ExpectSameVersion(*fed.complete[0], *v3_);
}

TEST_F(HostileTest, ResetDropsThePartialVersion) {
  auto frames = Encode(v2_, 16);
  frames.resize(frames.size() / 2);
  Fed fed = Feed(&assembler_, std::move(frames));
  EXPECT_TRUE(fed.complete.empty() && fed.errors.empty());
  assembler_.Reset();  // the stream broke; the next one starts again with version 2
  fed = Feed(&assembler_, Encode(v2_, 16));
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(Versions(fed), std::vector<uint64_t>{2});
  ExpectSameVersion(*fed.complete[0], *v2_);
}

TEST_F(HostileTest, RejectedVersionCanBeSentAgainAfterReset) {
  auto c = Chunks(v2_, 16);
  c[2].mutable_data()->push_back('x');
  Fed fed = Feed(&assembler_, Frames(c));
  EXPECT_EQ(fed.errors.size(), 1u);
  EXPECT_TRUE(fed.complete.empty());
  assembler_.Reset();  // the receiver reconnects and is sent the same version whole
  fed = Feed(&assembler_, Encode(v2_, 16));
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(Versions(fed), std::vector<uint64_t>{2});
}

TEST_F(HostileTest, SkipsVersionsAlreadyHeld) {
  std::shared_ptr<const WeightVersion> v4 = MakeVersion(4), v5 = MakeVersion(5);
  Fed fed = Feed(&assembler_, Encode(v4, 16), /*newest=*/4);
  EXPECT_TRUE(fed.complete.empty());
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  fed = Feed(&assembler_, Encode(v2_, 16), /*newest=*/4);  // older: skipped too
  EXPECT_TRUE(fed.complete.empty() && fed.errors.empty());
  fed = Feed(&assembler_, Encode(v5, 16), /*newest=*/4);
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(Versions(fed), std::vector<uint64_t>{5});
  ExpectSameVersion(*fed.complete[0], *v5);
}

// --- Corrupted bytes.

TEST_F(HostileTest, CorruptedDataByte) {
  auto c = Chunks(v2_, 16);
  (*c[13].mutable_data())[0] ^= 0x01;  // tensor 1, lowest mantissa bit: still finite
  ExpectRejected(c, "checksum mismatch");
  const absl::Status& s = last_error_;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("weight version 2, tensor_index 1 ('model.layers.0.mlp.up_proj.weight')"));
}

// A checksum mismatch keeps its DATA_LOSS code through Add.
TEST_F(HostileTest, ChecksumMismatchIsDataLoss) {
  auto c = Chunks(v2_, 16);
  (*c[13].mutable_data())[0] ^= 0x01;
  ExpectRejected(c, "checksum mismatch");
  const absl::Status& s = last_error_;
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST_F(HostileTest, WrongChecksumInTheHeader) {
  auto c = Chunks(v2_, 16);
  for (auto& chunk : c) {
    if (chunk.header().tensor_index() == 2) {
      chunk.mutable_header()->set_checksum(chunk.header().checksum() + 1);
    }
  }
  ExpectRejected(c, "checksum mismatch");
}

TEST_F(HostileTest, TruncatedFrame) {
  // Cut inside the data.
  auto c = Chunks(v2_, 1 << 20);
  std::vector<grpc::ByteBuffer> frames = Frames(c);
  std::string cut = c[1].SerializeAsString();
  cut.resize(cut.size() - 3);
  frames[1] = FrameFromString(cut);
  ExpectRejected(std::move(frames), "the chunk ends inside its 160 data bytes");

  // Cut inside the header.
  frames = Frames(c);
  cut = c[0].SerializeAsString();
  cut.resize(6);
  frames[0] = FrameFromString(cut);
  frames.resize(1);
  ExpectRejected(std::move(frames), "weight chunk header does not parse");

  // Cut inside the data field's length.
  frames = Frames(c);
  cut = c[0].SerializeAsString();
  cut.resize(2 + c[0].header().ByteSizeLong() + 1);  // header, then the data tag only
  frames[0] = FrameFromString(cut);
  ExpectRejected(std::move(frames), "the data field is malformed or longer than the chunk");
}

TEST_F(HostileTest, FrameThatDoesNotStartWithTheHeader) {
  auto c = Chunks(v2_, 1 << 20);
  // Data only.
  v1::WeightChunk data_only;
  data_only.set_data(c[0].data());
  std::vector<grpc::ByteBuffer> frames = {FrameFromString(data_only.SerializeAsString())};
  ExpectRejected(std::move(frames), "weight chunk does not start with a header");

  // Data before the header (valid protobuf, but not the stream's format).
  v1::WeightChunk header_only;
  *header_only.mutable_header() = c[0].header();
  frames = {FrameFromString(data_only.SerializeAsString() + header_only.SerializeAsString())};
  ExpectRejected(std::move(frames), "weight chunk does not start with a header");

  // Nothing at all.
  frames = {FrameFromString("")};
  ExpectRejected(std::move(frames), "weight chunk does not start with a header");
}

TEST_F(HostileTest, ExtraFieldsAfterTheData) {
  auto c = Chunks(v2_, 1 << 20);
  std::vector<grpc::ByteBuffer> frames = Frames(c);
  // Field 3, varint 1: unknown to WeightChunk.
  frames[1] = FrameFromString(c[1].SerializeAsString() + std::string("\x18\x01", 2));
  ExpectRejected(std::move(frames), "unexpected fields after the data");

  // A second data field.
  frames = Frames(c);
  v1::WeightChunk more;
  more.set_data(std::string(4, '\0'));
  frames[2] = FrameFromString(c[2].SerializeAsString() + more.SerializeAsString());
  ExpectRejected(std::move(frames), "unexpected fields after the data");
}

TEST_F(HostileTest, FieldBetweenHeaderAndData) {
  auto c = Chunks(v2_, 1 << 20);
  v1::WeightChunk header_only;
  *header_only.mutable_header() = c[1].header();
  v1::WeightChunk data_only;
  data_only.set_data(c[1].data());
  std::vector<grpc::ByteBuffer> frames = Frames(c);
  frames[1] = FrameFromString(header_only.SerializeAsString() + std::string("\x18\x01", 2) +
                              data_only.SerializeAsString());
  ExpectRejected(std::move(frames), "the data field is malformed or longer than the chunk");
}

// --- Deltas that must not apply.

class HostileDeltaTest : public HostileTest {
 protected:
  void SetUp() override {
    absl::StatusOr<WeightDelta> d = EncodeDelta(*base_, *next_);
    ASSERT_TRUE(d.ok()) << d.status();
    delta_ = std::make_shared<const WeightDelta>(*std::move(d));
  }
  std::vector<v1::WeightChunk> DeltaChunks(size_t chunk_bytes = 1 << 20) {
    return Chunks(next_, chunk_bytes, /*keep_base=*/true, delta_);
  }

  // Version 1 is the base; version 2 is sent as a delta against it.
  const std::shared_ptr<const WeightVersion> base_ = Kept(MakeVersion(1));
  const std::shared_ptr<const WeightVersion> next_ = SmallStep(*base_, 2);
  std::shared_ptr<const WeightDelta> delta_;
};

TEST_F(HostileDeltaTest, ControlTheDeltaApplies) {
  Fed fed = Feed(&assembler_, Frames(DeltaChunks(5)), 1, base_.get());
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *next_);
  EXPECT_TRUE(fed.complete[0]->from_delta);
}

TEST_F(HostileDeltaTest, DeltaAgainstAVersionTheBaseIsNot) {
  std::shared_ptr<const WeightVersion> other = Kept(MakeVersion(7));
  ExpectRejected(DeltaChunks(),
                 "a delta against version 1, which this actor does not hold (its base is "
                 "version 7)",
                 other.get());
}

TEST_F(HostileDeltaTest, DeltaWithoutABase) {
  ExpectRejected(DeltaChunks(), "a delta against version 1, but this actor holds no base version",
                 /*base=*/nullptr);
}

TEST_F(HostileDeltaTest, DeltaAgainstABaseOfAnotherLayout) {
  std::vector<Spec> specs = SmallModel();
  specs[1].shape = {5, 8};
  std::shared_ptr<const WeightVersion> other = Kept(MakeVersion(1, WireDtype::kFloat32, specs));
  ExpectRejected(DeltaChunks(), "a delta whose tensor 1 does not match the base version's",
                 other.get());
}

TEST_F(HostileDeltaTest, DeltaAppliedToADifferentBaseOfTheSameVersion) {
  // Same version number and layout, other bits: the delta applies, the checksum catches it.
  std::shared_ptr<const WeightVersion> impostor =
      Kept(MakeVersion(1, WireDtype::kFloat32, SmallModel(), /*seed=*/99));
  ExpectRejected(DeltaChunks(), "checksum mismatch", impostor.get());
}

TEST_F(HostileDeltaTest, CorruptedZstdMagic) {
  auto c = DeltaChunks();
  (*c[0].mutable_data())[0] ^= 0x55;
  ExpectRejected(c, "the delta of 'model.embed_tokens.weight' is not a zstd frame", base_.get());
}

TEST_F(HostileDeltaTest, TruncatedZstdPayload) {
  auto c = DeltaChunks();
  v1::WeightChunk& t1 = c[1];
  t1.mutable_data()->pop_back();
  t1.mutable_header()->set_payload_bytes(t1.data().size());
  ExpectRejected(c, "the delta of 'model.layers.0.mlp.up_proj.weight'", base_.get());
}

TEST_F(HostileDeltaTest, CorruptedZstdBodyIsRejected) {
  // Whatever a flipped byte in the compressed body does (a zstd error, other bytes, a
  // non-finite value), the version must not complete.
  const auto good = DeltaChunks();
  const std::string& payload = good[0].data();
  ASSERT_GT(payload.size(), 12u);
  for (size_t at = 6; at < payload.size(); ++at) {
    SCOPED_TRACE(at);
    auto c = good;
    (*c[0].mutable_data())[at] ^= 0x20;
    WeightAssembler assembler;
    Fed fed = Feed(&assembler, Frames(c), 1, base_.get());
    EXPECT_TRUE(fed.complete.empty());
    ASSERT_EQ(fed.errors.size(), 1u);
    EXPECT_THAT(std::string(fed.errors[0].message()), HasSubstr("model.embed_tokens.weight"));
  }
}

TEST_F(HostileDeltaTest, DeltaThatProducesNonFiniteValues) {
  std::shared_ptr<WeightVersion> nan_next = Clone(*next_, 2);
  SetValue(&nan_next->tensors[2], WireDtype::kFloat32, 5, std::numeric_limits<float>::quiet_NaN());
  Seal(nan_next.get());
  absl::StatusOr<WeightDelta> d = EncodeDelta(*base_, *nan_next);
  ASSERT_TRUE(d.ok());
  auto c = Chunks(nan_next, 1 << 20, true, std::make_shared<const WeightDelta>(*std::move(d)));
  ExpectRejected(c, "non-finite value at element 5 after applying the delta", base_.get());
}

TEST_F(HostileDeltaTest, DeltaPayloadOverZstdsBound) {
  auto c = DeltaChunks();
  c[2].mutable_header()->set_payload_bytes(uint64_t{1} << 30);
  ExpectRejected(c, "is more than zstd's bound", base_.get());
}

TEST_F(HostileDeltaTest, PreviousVersionNotKeptIsNoBase) {
  // A version that came without keep_base is no delta base.
  std::shared_ptr<const WeightVersion> not_kept = Clone(*base_, 1);
  ExpectRejected(DeltaChunks(), "a delta against version 1, but this actor holds no base version",
                 not_kept.get());
}

// ---------------------------------------------------------------- reuse

class ReuseTest : public ::testing::TestWithParam<WireDtype> {};

TEST_P(ReuseTest, FullVersionIsWrittenIntoThePreviousVersionsMemory) {
  const WireDtype dtype = GetParam();
  std::shared_ptr<WeightVersion> previous = MakeVersion(1, dtype, LargerModel());
  EXPECT_TRUE(IsWhole(*previous));
  const std::vector<const uint8_t*> memory = Memory(*previous);
  std::shared_ptr<const WeightVersion> v2 = MakeVersion(2, dtype, LargerModel());
  WeightAssembler assembler;
  Fed fed = FeedInto(&assembler, Encode(v2, 1000), 1, previous.get(), /*reuse=*/true);
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *v2);
  EXPECT_EQ(Memory(*fed.complete[0]), memory);
  EXPECT_FALSE(IsWhole(*previous));
}

TEST_P(ReuseTest, DeltasAreAppliedInPlace) {
  const WireDtype dtype = GetParam();
  std::shared_ptr<WeightVersion> previous = Kept(MakeVersion(1, dtype, LargerModel()));
  const std::vector<const uint8_t*> memory = Memory(*previous);
  std::shared_ptr<const WeightVersion> want = Clone(*previous, 1);
  WeightAssembler assembler;
  for (uint64_t v = 2; v <= 4; ++v) {
    SCOPED_TRACE(v);
    std::shared_ptr<const WeightVersion> next = SmallStep(*want, v);
    absl::StatusOr<WeightDelta> d = EncodeDelta(*want, *next);
    ASSERT_TRUE(d.ok());
    Fed fed = FeedInto(&assembler,
                       Encode(next, 300, true, std::make_shared<const WeightDelta>(*std::move(d))),
                       v - 1, previous.get(), /*reuse=*/true);
    EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
    ASSERT_EQ(fed.complete.size(), 1u);
    ExpectSameVersion(*fed.complete[0], *next);
    EXPECT_TRUE(fed.complete[0]->from_delta);
    EXPECT_TRUE(fed.complete[0]->keep_base);
    EXPECT_EQ(Memory(*fed.complete[0]), memory);
    EXPECT_FALSE(IsWhole(*previous));
    previous = fed.complete[0];  // the receiver keeps the new version
    want = next;
  }
}

TEST_P(ReuseTest, WithoutReuseThePreviousVersionIsOnlyRead) {
  const WireDtype dtype = GetParam();
  std::shared_ptr<WeightVersion> previous = Kept(MakeVersion(1, dtype, LargerModel()));
  std::shared_ptr<const WeightVersion> snapshot = Clone(*previous, 1);
  std::shared_ptr<const WeightVersion> next = SmallStep(*previous, 2);
  absl::StatusOr<WeightDelta> d = EncodeDelta(*previous, *next);
  ASSERT_TRUE(d.ok());
  auto delta = std::make_shared<const WeightDelta>(*std::move(d));
  WeightAssembler assembler;
  Fed fed = FeedInto(&assembler, Encode(next, 300, true, delta), 1, previous.get(), false);
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *next);
  fed = FeedInto(&assembler, Encode(MakeVersion(3, dtype, LargerModel()), 300), 2, previous.get(),
                 false);
  ASSERT_EQ(fed.complete.size(), 1u);
  EXPECT_TRUE(IsWhole(*previous));
  ExpectSameVersion(*previous, *snapshot);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ReuseTest,
                         ::testing::Values(WireDtype::kFloat32, WireDtype::kBfloat16),
                         [](const auto& info) { return std::string(WireDtypeName(info.param)); });

TEST(ReuseFailureTest, FailedVersionLeavesThePreviousNotWholeAndNoDeltaAppliesToIt) {
  std::shared_ptr<WeightVersion> previous = Kept(MakeVersion(1));
  std::shared_ptr<const WeightVersion> v1 = Clone(*previous, 1);
  WeightAssembler assembler;
  // Version 2 whole, written into version 1's memory, fails at tensor 1.
  auto bad = Chunks(MakeVersion(2), 1 << 20);
  bad[1].mutable_header()->set_checksum(bad[1].header().checksum() ^ 1);
  Fed fed = FeedInto(&assembler, Frames(bad), 1, previous.get(), true);
  EXPECT_TRUE(fed.complete.empty());
  ASSERT_EQ(fed.errors.size(), 1u);
  EXPECT_THAT(std::string(fed.errors[0].message()), HasSubstr("checksum mismatch"));
  EXPECT_FALSE(IsWhole(*previous));  // the caller must drop it now

  // A delta against version 1 must not apply to what is left of it.
  absl::StatusOr<WeightDelta> d = EncodeDelta(*v1, *SmallStep(*v1, 3));
  ASSERT_TRUE(d.ok());
  fed = FeedInto(
      &assembler,
      Encode(SmallStep(*v1, 3), 1 << 20, true, std::make_shared<const WeightDelta>(*std::move(d))),
      1, previous.get(), true);
  EXPECT_TRUE(fed.complete.empty());
  ASSERT_EQ(fed.errors.size(), 1u);
  EXPECT_THAT(std::string(fed.errors[0].message()),
              HasSubstr("a delta whose tensor 0 does not match the base version's"));

  // A whole version still assembles, into what memory is left or new memory.
  std::shared_ptr<const WeightVersion> v4 = MakeVersion(4);
  fed = FeedInto(&assembler, Encode(v4, 16), 1, previous.get(), true);
  EXPECT_TRUE(fed.errors.empty()) << fed.errors[0];
  ASSERT_EQ(fed.complete.size(), 1u);
  ExpectSameVersion(*fed.complete[0], *v4);
}

TEST(ReuseFailureTest, IncompleteInPlaceDeltaThenAnotherDeltaAgainstTheSameBase) {
  std::shared_ptr<WeightVersion> previous = Kept(MakeVersion(1));
  std::shared_ptr<const WeightVersion> v1 = Clone(*previous, 1);
  WeightAssembler assembler;
  // Version 2 as a delta, applied in place, never finishes (its last chunk is missing);
  // the stream goes on with version 3, also a delta against version 1.
  std::shared_ptr<const WeightVersion> v2 = SmallStep(*v1, 2), v3 = SmallStep(*v1, 3);
  absl::StatusOr<WeightDelta> d2 = EncodeDelta(*v1, *v2), d3 = EncodeDelta(*v1, *v3);
  ASSERT_TRUE(d2.ok() && d3.ok());
  std::vector<grpc::ByteBuffer> frames =
      Encode(v2, 1 << 20, true, std::make_shared<const WeightDelta>(*std::move(d2)));
  frames.pop_back();
  Fed fed = FeedInto(&assembler, std::move(frames), 1, previous.get(), true);
  EXPECT_TRUE(fed.complete.empty() && fed.errors.empty());
  fed = FeedInto(&assembler,
                 Encode(v3, 1 << 20, true, std::make_shared<const WeightDelta>(*std::move(d3))), 1,
                 previous.get(), true);
  // Tensor 0 of version 1 now holds version 2's bytes (or nothing): version 3 must not
  // complete from it.
  for (const auto& c : fed.complete) ExpectSameVersion(*c, *v3);
  EXPECT_TRUE(fed.complete.empty());
  ASSERT_EQ(fed.errors.size(), 1u);
  EXPECT_THAT(std::string(fed.errors[0].message()),
              HasSubstr("a delta whose tensor 0 does not match the base version's"));
}

}  // namespace
}  // namespace pmdrl
