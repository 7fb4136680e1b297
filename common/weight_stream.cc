#include "common/weight_stream.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace pmdrl {
namespace {

// A hostile shape must not make the receiver allocate terabytes. 8 GiB is four times
// the largest tensor of a 7B model in float32 (its 152k x 3584 embedding).
constexpr uint64_t kMaxTensorBytes = uint64_t{8} << 30;
constexpr uint32_t kMaxHeaderBytes = 1 << 20;
constexpr uint32_t kHeaderTag = (1 << 3) | 2;  // field 1, length-delimited
constexpr uint32_t kDataTag = (2 << 3) | 2;    // field 2, length-delimited
// Deltas are XORed and compressed a block at a time, so the XOR stays in cache.
constexpr size_t kDeltaBlockBytes = 1 << 20;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? "," : "", shape[i]);
  return s + "]";
}

v1::WeightDtype ToProto(WireDtype d) {
  return d == WireDtype::kBfloat16 ? v1::WEIGHT_BFLOAT16 : v1::WEIGHT_FLOAT32;
}

// out = a XOR b over n bytes, a word at a time; out may be a.
void Xor(uint8_t* out, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    x ^= y;
    std::memcpy(out + i, &x, 8);
  }
  for (; i < n; ++i) out[i] = a[i] ^ b[i];
}

// Index of the first non-finite element of n bytes in `dtype`, or -1. Every byte of a
// version passes through here, so the common case (all finite) is a branch-free scan of
// 16-byte vectors: a lane is non-finite when its exponent bits are all ones, i.e. when
// (~x & exponent) is zero in that lane, and (sign - z) sets the lane's top bit exactly
// then (z < sign, so no borrow crosses lanes). Only a flagged block is searched again.
int64_t FirstNonFinite(const uint8_t* p, size_t n, WireDtype dtype) {
  using U64x2 = uint64_t __attribute__((vector_size(16)));
  const bool bf16 = dtype == WireDtype::kBfloat16;
  const size_t element = bf16 ? 2 : 4;
  const uint64_t exponent = bf16 ? 0x7F807F807F807F80ull : 0x7F8000007F800000ull;
  const uint64_t sign = bf16 ? 0x8000800080008000ull : 0x8000000080000000ull;
  const U64x2 ve = {exponent, exponent}, vs = {sign, sign};
  constexpr size_t kBlockBytes = 4096;  // 64 steps of 4 vectors
  auto bad = [&](size_t j) {
    uint32_t u = 0;
    std::memcpy(&u, p + j, element);
    const uint32_t e = bf16 ? 0x7F80u : 0x7F800000u;
    return (u & e) == e;
  };
  for (size_t start = 0; start < n; start += kBlockBytes) {
    const size_t end = std::min(n, start + kBlockBytes);
    bool flagged = false;
    if (end - start == kBlockBytes) {
      U64x2 f0 = {0, 0}, f1 = f0, f2 = f0, f3 = f0;
      for (size_t i = start; i < end; i += 64) {
        U64x2 x0, x1, x2, x3;
        std::memcpy(&x0, p + i, 16);
        std::memcpy(&x1, p + i + 16, 16);
        std::memcpy(&x2, p + i + 32, 16);
        std::memcpy(&x3, p + i + 48, 16);
        f0 |= vs - (~x0 & ve);
        f1 |= vs - (~x1 & ve);
        f2 |= vs - (~x2 & ve);
        f3 |= vs - (~x3 & ve);
      }
      const U64x2 f = (f0 | f1 | f2 | f3) & vs;
      flagged = (f[0] | f[1]) != 0;
    } else {
      for (size_t j = start; j + element <= end && !flagged; j += element) flagged = bad(j);
    }
    if (!flagged) continue;
    for (size_t j = start; j + element <= end; j += element) {
      if (bad(j)) return static_cast<int64_t>(j / element);
    }
  }
  return -1;
}

void UnrefOwner(void* p) { delete static_cast<std::shared_ptr<const void>*>(p); }

}  // namespace

uint64_t WeightChecksum(const void* data, size_t n) { return XXH3_64bits(data, n); }

int64_t WireTensor::elements() const {
  int64_t e = 1;
  for (int64_t d : shape) e *= d;
  return e;
}

WireTensor MakeWireTensor(std::string name, std::vector<int64_t> shape, WireDtype dtype) {
  WireTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.size = static_cast<size_t>(t.elements()) * WireDtypeBytes(dtype);
  t.bytes.reset(new uint8_t[std::max<size_t>(t.size, 1)]);
  return t;
}

uint64_t WeightVersion::Bytes() const {
  uint64_t n = 0;
  for (const WireTensor& t : tensors) n += t.size;
  return n;
}

const float* WeightVersion::Floats(size_t i) const {
  return dtype == WireDtype::kFloat32 ? reinterpret_cast<const float*>(tensors[i].bytes.get())
                                      : nullptr;
}

uint64_t WeightDelta::Bytes() const {
  uint64_t n = 0;
  for (const std::string& p : payloads) n += p.size();
  return n;
}

absl::StatusOr<WeightDelta> EncodeDelta(const WeightVersion& base, const WeightVersion& next) {
  if (base.dtype != next.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("delta from version ", base.version, " (", WireDtypeName(base.dtype), ") to ",
                     next.version, " (", WireDtypeName(next.dtype), "): dtypes differ"));
  }
  if (base.tensors.size() != next.tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("delta from version ", base.version, " to ",
                                                   next.version, ": ", base.tensors.size(), " vs ",
                                                   next.tensors.size(), " tensors"));
  }
  WeightDelta delta;
  delta.base_version = base.version;
  delta.version = next.version;
  delta.payloads.resize(next.tensors.size());
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> ctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (ctx == nullptr) return absl::ResourceExhaustedError("ZSTD_createCCtx failed");
  std::vector<uint8_t> block(kDeltaBlockBytes);
  for (size_t i = 0; i < next.tensors.size(); ++i) {
    const WireTensor& a = base.tensors[i];
    const WireTensor& b = next.tensors[i];
    if (a.name != b.name || a.shape != b.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "delta from version ", base.version, " to ", next.version, ": tensor ", i, " is '",
          a.name, "' ", ShapeString(a.shape), " vs '", b.name, "' ", ShapeString(b.shape)));
    }
    ZSTD_CCtx_reset(ctx.get(), ZSTD_reset_session_only);
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_compressionLevel, 1);
    ZSTD_CCtx_setPledgedSrcSize(ctx.get(), b.size);
    std::string& out = delta.payloads[i];
    out.resize(ZSTD_compressBound(b.size));
    ZSTD_outBuffer dst{out.data(), out.size(), 0};
    size_t done = 0;
    do {
      const size_t n = std::min(kDeltaBlockBytes, b.size - done);
      Xor(block.data(), b.bytes.get() + done, a.bytes.get() + done, n);
      done += n;
      ZSTD_inBuffer src{block.data(), n, 0};
      const ZSTD_EndDirective mode = done == b.size ? ZSTD_e_end : ZSTD_e_continue;
      size_t left;
      do {
        left = ZSTD_compressStream2(ctx.get(), &dst, &src, mode);
        if (ZSTD_isError(left)) {
          return absl::InternalError(
              absl::StrCat("compressing the delta of '", b.name, "': ", ZSTD_getErrorName(left)));
        }
      } while (src.pos < src.size || (mode == ZSTD_e_end && left != 0));
    } while (done < b.size);
    out.resize(dst.pos);
    out.shrink_to_fit();
  }
  return delta;
}

absl::Status ApplyDelta(const WireTensor& base, std::string_view payload, uint8_t* out) {
  const unsigned long long content = ZSTD_getFrameContentSize(payload.data(), payload.size());
  if (content == ZSTD_CONTENTSIZE_ERROR) {
    return absl::InvalidArgumentError(
        absl::StrCat("the delta of '", base.name, "' is not a zstd frame"));
  }
  if (content != base.size) {
    return absl::InvalidArgumentError(absl::StrCat("the delta of '", base.name,
                                                   "' decompresses to ", content,
                                                   " bytes, the tensor has ", base.size));
  }
  // A block at a time, so that `out` may be base's memory and the XOR stays in cache.
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (ctx == nullptr) return absl::ResourceExhaustedError("ZSTD_createDCtx failed");
  thread_local std::vector<uint8_t> block(kDeltaBlockBytes);
  ZSTD_inBuffer src{payload.data(), payload.size(), 0};
  size_t done = 0;
  size_t left = 1;
  if (base.size == 0) {  // the frame holds no data: read it to its end
    ZSTD_outBuffer dst{block.data(), 0, 0};
    left = ZSTD_decompressStream(ctx.get(), &dst, &src);
    if (ZSTD_isError(left)) {
      return absl::InvalidArgumentError(
          absl::StrCat("decompressing the delta of '", base.name, "': ", ZSTD_getErrorName(left)));
    }
  }
  while (done < base.size) {
    ZSTD_outBuffer dst{block.data(), std::min(kDeltaBlockBytes, base.size - done), 0};
    while (dst.pos < dst.size) {
      const size_t in_before = src.pos;
      left = ZSTD_decompressStream(ctx.get(), &dst, &src);
      if (ZSTD_isError(left)) {
        return absl::InvalidArgumentError(absl::StrCat("decompressing the delta of '", base.name,
                                                       "': ", ZSTD_getErrorName(left)));
      }
      if (src.pos == in_before && dst.pos < dst.size && (left == 0 || src.pos == src.size)) {
        return absl::InvalidArgumentError(absl::StrCat("the delta of '", base.name, "' ends after ",
                                                       done + dst.pos, " of ", base.size,
                                                       " bytes"));
      }
    }
    Xor(out + done, base.bytes.get() + done, block.data(), dst.pos);
    done += dst.pos;
  }
  if (left != 0 || src.pos != src.size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the delta of '", base.name, "' has data beyond the tensor's ", base.size, " bytes"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- writer

grpc::ByteBuffer EncodeChunk(const v1::WeightChunkHeader& header, const uint8_t* data, size_t n,
                             std::shared_ptr<const void> owner) {
  const std::string h = header.SerializeAsString();
  std::string prefix;
  {
    google::protobuf::io::StringOutputStream s(&prefix);
    google::protobuf::io::CodedOutputStream out(&s);
    out.WriteTag(kHeaderTag);
    out.WriteVarint32(static_cast<uint32_t>(h.size()));
    out.WriteRaw(h.data(), static_cast<int>(h.size()));
    out.WriteTag(kDataTag);
    out.WriteVarint64(n);
  }
  grpc::Slice slices[2] = {grpc::Slice(prefix),
                           n == 0 ? grpc::Slice()
                                  : grpc::Slice(const_cast<uint8_t*>(data), n, UnrefOwner,
                                                new std::shared_ptr<const void>(std::move(owner)))};
  return grpc::ByteBuffer(slices, n == 0 ? 1 : 2);
}

bool WriteVersion(const std::shared_ptr<const WeightVersion>& version,
                  const std::shared_ptr<const WeightDelta>& delta, bool keep_base,
                  size_t chunk_bytes, const std::function<bool(const grpc::ByteBuffer&)>& write) {
  const size_t element = WireDtypeBytes(version->dtype);
  const size_t count = version->tensors.size();
  for (size_t i = 0; i < count; ++i) {
    const WireTensor& t = version->tensors[i];
    v1::WeightChunkHeader h;
    h.set_version(version->version);
    h.set_name(t.name);
    h.mutable_shape()->Add(t.shape.begin(), t.shape.end());
    h.set_dtype(ToProto(version->dtype));
    h.set_tensor_index(static_cast<uint32_t>(i));
    h.set_tensor_count(static_cast<uint32_t>(count));
    h.set_checksum(t.checksum);
    h.set_keep_base(keep_base);
    const uint8_t* payload = t.bytes.get();
    size_t size = t.size;
    size_t step = std::max(element, chunk_bytes / element * element);
    std::shared_ptr<const void> owner = version;
    if (delta != nullptr) {
      h.set_encoding(v1::WEIGHT_XOR_ZSTD);
      h.set_base_version(delta->base_version);
      payload = reinterpret_cast<const uint8_t*>(delta->payloads[i].data());
      size = delta->payloads[i].size();
      step = std::max<size_t>(1, chunk_bytes);
      owner = delta;
    }
    h.set_payload_bytes(size);
    size_t offset = 0;
    do {
      const size_t n = std::min(step, size - offset);
      h.set_offset(offset);
      if (!write(EncodeChunk(h, payload + offset, n, owner))) return false;
      offset += n;
    } while (offset < size);
  }
  return true;
}

// ---------------------------------------------------------------- reader

WeightAssembler::WeightAssembler() : hash_(XXH3_createState()) {
  if (hash_ == nullptr) throw std::bad_alloc();
}

WeightAssembler::~WeightAssembler() { XXH3_freeState(hash_); }

void WeightAssembler::Reset() {
  partial_.reset();
  skipping_ = false;
  tensor_count_ = 0;
  received_ = 0;
  compressed_.clear();
  compressed_.shrink_to_fit();
}

bool IsWhole(const WeightVersion& v) {
  for (const WireTensor& t : v.tensors) {
    if (t.bytes == nullptr) return false;
  }
  return true;
}

absl::Status WeightAssembler::Add(grpc::ByteBuffer* frame, std::optional<uint64_t> newest_complete,
                                  WeightVersion* previous, bool reuse,
                                  std::shared_ptr<WeightVersion>* complete) {
  complete->reset();
  const size_t frame_bytes = frame->Length();
  grpc::ProtoBufferReader reader(frame);
  google::protobuf::io::CodedInputStream in(&reader);
  in.SetTotalBytesLimit(std::numeric_limits<int>::max());

  v1::WeightChunkHeader h;
  uint32_t header_len = 0;
  if (in.ReadTag() != kHeaderTag || !in.ReadVarint32(&header_len) || header_len > kMaxHeaderBytes) {
    Reset();
    return absl::InvalidArgumentError(
        "weight chunk does not start with a header of at most 1 MiB; stream state dropped");
  }
  {
    auto limit = in.PushLimit(static_cast<int>(header_len));
    if (!h.MergeFromCodedStream(&in) || !in.ConsumedEntireMessage()) {
      Reset();
      return absl::InvalidArgumentError("weight chunk header does not parse; stream state dropped");
    }
    in.PopLimit(limit);
  }
  uint64_t n = 0;
  if (const uint32_t tag = in.ReadTag(); tag == kDataTag) {
    if (!in.ReadVarint64(&n)) n = std::numeric_limits<uint64_t>::max();
  } else if (tag != 0) {
    n = std::numeric_limits<uint64_t>::max();
  }

  const uint64_t version = h.version();
  if (skipping_ && version == skip_version_) return absl::OkStatus();
  skipping_ = false;

  // Drops the version being assembled and ignores the rest of its chunks.
  // (`code`: a checksum mismatch stays DATA_LOSS, a failed allocation RESOURCE_EXHAUSTED.)
  auto fail = [&](const std::string& what,
                  absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    partial_.reset();
    compressed_.clear();
    skipping_ = true;
    skip_version_ = version;
    return absl::Status(
        code, absl::StrCat("weight version ", version, ", tensor_index ", h.tensor_index(), " ('",
                           h.name(), "'), offset ", h.offset(), ": ", what, "; version dropped"));
  };
  if (n > frame_bytes) return fail("the data field is malformed or longer than the chunk");

  if (partial_ != nullptr && partial_->version != version) {
    partial_.reset();  // the next version started: the stream gave up on this one
  }
  bool begin_tensor = false;
  if (partial_ == nullptr) {
    if (newest_complete.has_value() && version <= *newest_complete) {
      skipping_ = true;  // already held
      skip_version_ = version;
      return absl::OkStatus();
    }
    if (h.tensor_index() != 0 || h.offset() != 0) {
      return fail("a version must start with tensor 0 at offset 0");
    }
    if (h.tensor_count() == 0) return fail("tensor_count is 0");
    if (h.dtype() != v1::WEIGHT_FLOAT32 && h.dtype() != v1::WEIGHT_BFLOAT16) {
      return fail(absl::StrCat("unknown dtype ", static_cast<int>(h.dtype())));
    }
    partial_ = std::make_shared<WeightVersion>();
    partial_->version = version;
    partial_->dtype = h.dtype() == v1::WEIGHT_BFLOAT16 ? WireDtype::kBfloat16 : WireDtype::kFloat32;
    partial_->keep_base = h.keep_base();
    partial_->first_chunk_time = std::chrono::steady_clock::now();
    partial_->tensors.reserve(std::min<uint32_t>(h.tensor_count(), 1 << 16));
    tensor_count_ = h.tensor_count();
    begin_tensor = true;
  } else {
    if (h.tensor_count() != tensor_count_) {
      return fail(
          absl::StrCat("tensor_count changed from ", tensor_count_, " to ", h.tensor_count()));
    }
    const size_t current = partial_->tensors.size() - 1;
    if (received_ < tensor_.payload_bytes()) {
      if (h.tensor_index() != current) {
        return fail(absl::StrCat("expected more of tensor ", current, " ('", tensor_.name(), "', ",
                                 received_, " of ", tensor_.payload_bytes(), " bytes received)"));
      }
      if (h.offset() != received_) return fail(absl::StrCat("expected offset ", received_));
      v1::WeightChunkHeader same = h;
      same.set_offset(tensor_.offset());
      if (same.SerializeAsString() != tensor_.SerializeAsString()) {
        return fail("the header differs from the tensor's first chunk in more than the offset");
      }
    } else {
      if (h.tensor_index() != current + 1 || h.offset() != 0) {
        return fail(absl::StrCat("expected tensor ", current + 1, " at offset 0"));
      }
      begin_tensor = true;
    }
  }
  if (begin_tensor) {
    if (absl::Status s = Begin(h, previous, reuse); !s.ok())
      return fail(std::string(s.message()), s.code());
  }
  if (n > tensor_.payload_bytes() - received_) {
    return fail(
        absl::StrCat("data of ", n, " bytes overruns payload_bytes ", tensor_.payload_bytes()));
  }
  if (absl::Status s = Place(&in, n); !s.ok()) return fail(std::string(s.message()), s.code());
  if (in.ReadTag() != 0) return fail("unexpected fields after the data");
  partial_->wire_bytes += frame_bytes;

  if (received_ == tensor_.payload_bytes()) {
    if (absl::Status s = FinishTensor(previous); !s.ok())
      return fail(std::string(s.message()), s.code());
    if (partial_->tensors.size() == tensor_count_) {
      *complete = std::move(partial_);
      partial_.reset();
      tensor_count_ = 0;
      compressed_.clear();
      compressed_.shrink_to_fit();
    }
  }
  return absl::OkStatus();
}

absl::Status WeightAssembler::Begin(const v1::WeightChunkHeader& h, WeightVersion* previous,
                                    bool reuse) {
  if (h.tensor_index() >= tensor_count_) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_index beyond tensor_count ", tensor_count_));
  }
  if (h.name().empty()) return absl::InvalidArgumentError("empty tensor name");
  for (const WireTensor& t : partial_->tensors) {
    if (t.name == h.name()) return absl::InvalidArgumentError("tensor name repeated");
  }
  const WireDtype dtype =
      h.dtype() == v1::WEIGHT_BFLOAT16 ? WireDtype::kBfloat16 : WireDtype::kFloat32;
  if (dtype != partial_->dtype ||
      (h.dtype() != v1::WEIGHT_FLOAT32 && h.dtype() != v1::WEIGHT_BFLOAT16)) {
    return absl::InvalidArgumentError("dtype differs from the version's first tensor");
  }
  std::vector<int64_t> shape(h.shape().begin(), h.shape().end());
  const uint64_t element = WireDtypeBytes(dtype);
  uint64_t bytes = element;
  for (int64_t d : shape) {
    if (d < 0)
      return absl::InvalidArgumentError("negative dimension in shape " + ShapeString(shape));
    if (d != 0 && bytes > kMaxTensorBytes / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(shape), " is over the 8 GiB a tensor may have"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  if (h.encoding() == v1::WEIGHT_FULL) {
    if (h.payload_bytes() != bytes) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeString(shape), " needs ", bytes,
                                                     " bytes of ", WireDtypeName(dtype),
                                                     " but payload_bytes is ", h.payload_bytes()));
    }
  } else if (h.encoding() == v1::WEIGHT_XOR_ZSTD) {
    const WeightVersion* base = previous != nullptr && previous->keep_base ? previous : nullptr;
    if (base == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("a delta against version ", h.base_version(),
                                                     ", but this actor holds no base version"));
    }
    if (base->version != h.base_version()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a delta against version ", h.base_version(),
          ", which this actor does not hold (its base is version ", base->version, ")"));
    }
    const size_t i = h.tensor_index();
    if (base->dtype != dtype || i >= base->tensors.size() || base->tensors[i].name != h.name() ||
        base->tensors[i].shape != shape || base->tensors[i].bytes == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("a delta whose tensor ", i, " does not match the base version's"));
    }
    if (h.payload_bytes() > ZSTD_compressBound(bytes)) {
      return absl::InvalidArgumentError(absl::StrCat("delta payload_bytes ", h.payload_bytes(),
                                                     " is more than zstd's bound for ", bytes,
                                                     " bytes"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown encoding ", static_cast<int>(h.encoding())));
  }
  partial_->from_delta |= h.encoding() == v1::WEIGHT_XOR_ZSTD;
  // The previous version's memory for this tensor, when no one else can see it: the
  // pages are mapped already, and a delta is applied in place.
  const size_t i = h.tensor_index();
  in_place_ = reuse && previous != nullptr && i < previous->tensors.size() &&
              previous->tensors[i].bytes != nullptr && previous->tensors[i].size == bytes &&
              previous->dtype == dtype;
  if (in_place_) {
    WireTensor t;
    t.name = h.name();
    t.shape = std::move(shape);
    t.size = bytes;
    t.bytes = std::move(previous->tensors[i].bytes);
    partial_->tensors.push_back(std::move(t));
  } else {
    try {
      partial_->tensors.push_back(MakeWireTensor(h.name(), std::move(shape), dtype));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
  }
  tensor_ = h;
  received_ = 0;
  compressed_.clear();
  XXH3_64bits_reset(hash_);
  return absl::OkStatus();
}

absl::Status WeightAssembler::Place(google::protobuf::io::CodedInputStream* in, uint64_t n) {
  WireTensor& t = partial_->tensors.back();
  uint8_t* dst;
  if (tensor_.encoding() == v1::WEIGHT_FULL) {
    const size_t element = WireDtypeBytes(partial_->dtype);
    if (n % element != 0) {
      return absl::InvalidArgumentError(absl::StrCat("data of ", n, " bytes is not whole ",
                                                     WireDtypeName(partial_->dtype), " elements"));
    }
    dst = t.bytes.get() + received_;
  } else {
    compressed_.resize(received_ + n);
    dst = reinterpret_cast<uint8_t*>(compressed_.data()) + received_;
  }
  if (tensor_.encoding() != v1::WEIGHT_FULL) {
    if (n > 0 && !in->ReadRaw(dst, static_cast<int>(n))) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chunk ends inside its ", n, " data bytes"));
    }
    received_ += n;
    return absl::OkStatus();
  }
  // Copied, checked and hashed a piece at a time, so the two reads after the copy find
  // the bytes in the core's L1 cache instead of going out to L3 for each of them.
  constexpr uint64_t kPieceBytes = 32 << 10;  // a multiple of every element size
  for (uint64_t off = 0; off < n; off += kPieceBytes) {
    const uint64_t piece = std::min(kPieceBytes, n - off);
    if (!in->ReadRaw(dst + off, static_cast<int>(piece))) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chunk ends inside its ", n, " data bytes"));
    }
    if (int64_t bad = FirstNonFinite(dst + off, piece, partial_->dtype); bad >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("non-finite value at element ",
                       (received_ + off) / WireDtypeBytes(partial_->dtype) + bad));
    }
    XXH3_64bits_update(hash_, dst + off, piece);
  }
  received_ += n;
  return absl::OkStatus();
}

absl::Status WeightAssembler::FinishTensor(const WeightVersion* previous) {
  WireTensor& t = partial_->tensors.back();
  if (tensor_.encoding() == v1::WEIGHT_XOR_ZSTD) {
    // In place, the tensor's own memory still holds the base's bytes.
    const WireTensor& b = in_place_ ? t : previous->tensors[tensor_.tensor_index()];
    if (absl::Status s = ApplyDelta(b, compressed_, t.bytes.get()); !s.ok()) return s;
    compressed_.clear();
    if (int64_t bad = FirstNonFinite(t.bytes.get(), t.size, partial_->dtype); bad >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("non-finite value at element ", bad, " after applying the delta"));
    }
    t.checksum = WeightChecksum(t.bytes.get(), t.size);
  } else {
    t.checksum = XXH3_64bits_digest(hash_);
  }
  if (t.checksum != tensor_.checksum()) {
    return absl::DataLossError(absl::StrCat("checksum mismatch: the tensor's bytes hash to ",
                                            t.checksum, ", the header says ", tensor_.checksum()));
  }
  return absl::OkStatus();
}

}  // namespace pmdrl
