// The weight stream's format and codec, shared by its writer (the learner's WeightFeed
// service) and its reader (the actor's WeightReceiver), so that the two ends cannot
// disagree about it.
//
// A policy version is a list of tensors in a wire dtype (float32, or bfloat16 converted
// once on the learner). It goes to an actor either whole (WEIGHT_FULL) or, when the
// actor kept the previous version, as a delta: per tensor, zstd of the XOR of the two
// versions' bit patterns (WEIGHT_XOR_ZSTD), which is exact. Every tensor carries the
// XXH3-64 checksum of its bytes, checked by the receiver after the tensor is placed (and
// after a delta is applied).
//
// On the wire each chunk is one gRPC message: a v1::WeightChunk whose `header` is
// serialised before its `data`. The writer hands gRPC the header and then a slice that
// points into the version's memory (no copy); the reader parses the header and then
// copies the data once, straight into the tensor it belongs to.
//
// Chunk rules (the reader rejects a version that breaks one): tensors come in order
// (tensor_index 0..count-1); a tensor's chunks are consecutive with offsets 0, then the
// bytes so far, up to payload_bytes; name, shape, dtype, encoding, base_version,
// payload_bytes, checksum and tensor_count are the same on every chunk of a tensor or
// version; a full tensor's payload_bytes is its element count times the dtype's size,
// and chunks split it at element boundaries; every value is finite.
#ifndef PMDRL_COMMON_WEIGHT_STREAM_H_
#define PMDRL_COMMON_WEIGHT_STREAM_H_

#include <grpcpp/support/byte_buffer.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/wire_dtype.h"
#include "google/protobuf/io/coded_stream.h"
#include "pmdrl/pmdrl.pb.h"

struct XXH3_state_s;

namespace pmdrl {

// XXH3-64 of `n` bytes: the checksum every tensor carries.
uint64_t WeightChecksum(const void* data, size_t n);

// One tensor in the wire dtype. The byte array is left uninitialised on allocation (a
// std::vector would first zero it: a wasted pass over a model's worth of memory).
struct WireTensor {
  std::string name;  // Hugging Face parameter name
  std::vector<int64_t> shape;
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;        // bytes
  uint64_t checksum = 0;  // WeightChecksum(bytes, size)

  int64_t elements() const;
};

// Allocates `name` with `shape` in `dtype`, bytes uninitialised, checksum 0.
WireTensor MakeWireTensor(std::string name, std::vector<int64_t> shape, WireDtype dtype);

// One complete policy version, its tensors in the model's parameter order. Immutable
// once published; shared (shared_ptr<const>) by whoever streams or loads it.
struct WeightVersion {
  uint64_t version = 0;
  WireDtype dtype = WireDtype::kFloat32;
  std::vector<WireTensor> tensors;

  // Set by the receiver: when the version's first chunk arrived, the bytes that came
  // over the wire for it, whether it came as a delta, and whether the publisher asked
  // for it to be kept as a delta base.
  std::chrono::steady_clock::time_point first_chunk_time;
  uint64_t wire_bytes = 0;
  bool from_delta = false;
  bool keep_base = false;

  uint64_t Bytes() const;  // sum of the tensors' sizes
  // A float32 version's values of tensor i.
  const float* Floats(size_t i) const;
};

// A version as per-tensor deltas against the one before it.
struct WeightDelta {
  uint64_t base_version = 0;
  uint64_t version = 0;
  std::vector<std::string> payloads;  // per tensor: zstd(next XOR base)
  uint64_t Bytes() const;             // sum of the payloads
};

// Encodes `next` against `base`. Errors when their layouts differ (tensor names,
// shapes or dtype), naming the first difference.
absl::StatusOr<WeightDelta> EncodeDelta(const WeightVersion& base, const WeightVersion& next);

// Writes base XOR zstd-decompress(payload) into `out`, which has base's size and may be
// base's own memory (the delta is applied in place). Errors when the payload is not a
// zstd frame or does not decompress to exactly that size.
absl::Status ApplyDelta(const WireTensor& base, std::string_view payload, uint8_t* out);

// ---------------------------------------------------------------- writer

// Serialises one chunk: `header`, then `n` bytes at `data` as a slice that refers to
// that memory and keeps `owner` alive until gRPC has sent it (no copy).
grpc::ByteBuffer EncodeChunk(const v1::WeightChunkHeader& header, const uint8_t* data, size_t n,
                             std::shared_ptr<const void> owner);

// Streams a version as chunks of at most `chunk_bytes` (whole elements). With `delta`
// (whose version and layout are `version`'s) the tensors go as deltas; otherwise
// whole. `keep_base` is set on every chunk. Stops at the first `write` that returns
// false and returns false then.
bool WriteVersion(const std::shared_ptr<const WeightVersion>& version,
                  const std::shared_ptr<const WeightDelta>& delta, bool keep_base,
                  size_t chunk_bytes, const std::function<bool(const grpc::ByteBuffer&)>& write);

// ---------------------------------------------------------------- reader

// Whether every tensor of `v` still has its memory (WeightAssembler may take it).
bool IsWhole(const WeightVersion& v);

// Assembles one stream of chunks into versions. Pure logic, no I/O or threads, so the
// rules can be tested directly. A chunk that breaks a rule drops the version being
// assembled (Add returns the error, naming the version, tensor and rule) and every
// further chunk of that version is ignored. A version not newer than the one already
// held is skipped silently (a reconnecting stream starts again with the current one).
class WeightAssembler {
 public:
  WeightAssembler();
  ~WeightAssembler();
  WeightAssembler(const WeightAssembler&) = delete;
  WeightAssembler& operator=(const WeightAssembler&) = delete;

  // Feeds one chunk (the frame is consumed). `newest_complete`: the newest version
  // already held (none: nullopt). `previous`: the version the caller kept (null: none).
  // It is the base deltas apply to when it was sent with keep_base; and with `reuse`
  // (nothing else refers to it) the new version is written into its memory, tensor by
  // tensor, so that a push does not fault in a model's worth of fresh pages (deltas are
  // then applied in place). A tensor whose memory was taken has null bytes: the caller
  // must drop a `previous` that is no longer whole. Sets *complete when this chunk
  // finished a version whose every checksum held.
  absl::Status Add(grpc::ByteBuffer* frame, std::optional<uint64_t> newest_complete,
                   WeightVersion* previous, bool reuse, std::shared_ptr<WeightVersion>* complete);
  // The same without reuse: `base` is only read.
  absl::Status Add(grpc::ByteBuffer* frame, std::optional<uint64_t> newest_complete,
                   const WeightVersion* base, std::shared_ptr<WeightVersion>* complete) {
    return Add(frame, newest_complete, const_cast<WeightVersion*>(base), false, complete);
  }

  // Drops a partly assembled version (the stream broke).
  void Reset();

 private:
  absl::Status Begin(const v1::WeightChunkHeader& h, WeightVersion* previous, bool reuse);
  absl::Status Place(google::protobuf::io::CodedInputStream* in, uint64_t n);
  absl::Status FinishTensor(const WeightVersion* previous);

  std::shared_ptr<WeightVersion> partial_;  // version being assembled; null when idle
  uint32_t tensor_count_ = 0;               // of partial_
  v1::WeightChunkHeader tensor_;            // first chunk's header of the current tensor
  uint64_t received_ = 0;                   // payload bytes of it received so far
  std::string compressed_;                  // a delta tensor's payload so far
  bool in_place_ = false;                   // the current tensor holds its base's bytes
  XXH3_state_s* hash_;                      // of a full tensor's bytes so far; owned
  bool skipping_ = false;                   // ignoring the rest of `skip_version_`
  uint64_t skip_version_ = 0;
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_WEIGHT_STREAM_H_
