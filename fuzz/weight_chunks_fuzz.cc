// The actor's weight-chunk assembler (common/weight_stream.h, WeightAssembler, as
// actor/weight_receiver.cc drives it) fed a hostile stream. Input: one flags byte, then
// frames, each a 2-byte little-endian length and that many bytes of a serialised
// v1::WeightChunk (header first, then data), handed over as a gRPC ByteBuffer (in one
// slice, or cut in two when a flag says so). As in the receiver, the last complete
// version is kept as `previous` (a delta's base and, with the reuse flag, the memory the
// next version is written into). Checks: Add never crashes; an error resets the
// partial version; every version it completes is whole, has tensor_count tensors with
// distinct non-empty names, each of elements x dtype size bytes, whose checksum is the
// XXH3 of its bytes and whose values are finite.
//
// The seeds (fuzz/corpus/weight_chunks_fuzz) are written by this binary:
//   PMDRL_FUZZ_WRITE_SEEDS=<dir> build-fuzz/fuzz/weight_chunks_fuzz
// A full version of two tensors, then a delta against it, in float32 and bfloat16.
//
// The assembler allocates a tensor's claimed size (at most 8 GiB, its limit) when the
// tensor's first chunk arrives, before its data: uninitialised memory, so the pages are
// only touched as data arrives. scripts/fuzz runs this target with -malloc_limit_mb above
// that cap; -rss_limit_mb still catches memory actually used.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/weight_stream.h"
#include "common/wire_dtype.h"
#include "fuzz/fuzz_check.h"

namespace {

using pmdrl::WeightVersion;
using pmdrl::WireDtype;

void CheckVersion(const WeightVersion& v) {
  FUZZ_CHECK(pmdrl::IsWhole(v));
  std::set<std::string> names;
  for (const pmdrl::WireTensor& t : v.tensors) {
    FUZZ_CHECK(!t.name.empty() && names.insert(t.name).second);
    FUZZ_CHECK(t.size == static_cast<uint64_t>(t.elements()) * pmdrl::WireDtypeBytes(v.dtype));
    FUZZ_CHECK(t.checksum == pmdrl::WeightChecksum(t.bytes.get(), t.size));
    if (v.dtype == WireDtype::kFloat32) {
      for (size_t i = 0; i < t.size / 4; ++i) {
        float f;
        std::memcpy(&f, t.bytes.get() + 4 * i, 4);
        FUZZ_CHECK(std::isfinite(f));
      }
    }
  }
}

// ---- seeds ----

std::shared_ptr<WeightVersion> MakeVersion(uint64_t version, WireDtype dtype, float scale) {
  auto v = std::make_shared<WeightVersion>();
  v->version = version;
  v->dtype = dtype;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> specs = {
      {"model.embed_tokens.weight", {4, 3}}, {"model.norm.weight", {3}}};
  for (const auto& [name, shape] : specs) {
    pmdrl::WireTensor t = pmdrl::MakeWireTensor(name, shape, dtype);
    for (int64_t j = 0; j < t.elements(); ++j) {
      const float f = scale * static_cast<float>(j + 1) / 8.0f;
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      if (dtype == WireDtype::kFloat32) {
        std::memcpy(t.bytes.get() + 4 * j, &bits, 4);
      } else {
        const uint16_t half = static_cast<uint16_t>(bits >> 16);
        std::memcpy(t.bytes.get() + 2 * j, &half, 2);
      }
    }
    t.checksum = pmdrl::WeightChecksum(t.bytes.get(), t.size);
    v->tensors.push_back(std::move(t));
  }
  return v;
}

void AppendFrames(const std::shared_ptr<const WeightVersion>& v,
                  const std::shared_ptr<const pmdrl::WeightDelta>& delta, size_t chunk_bytes,
                  std::string* out) {
  pmdrl::WriteVersion(v, delta, /*keep_base=*/true, chunk_bytes, [&](const grpc::ByteBuffer& b) {
    std::vector<grpc::Slice> slices;
    FUZZ_CHECK(b.Dump(&slices).ok());
    std::string frame;
    for (const grpc::Slice& s : slices) {
      frame.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    FUZZ_CHECK(frame.size() < 65536);
    out->push_back(static_cast<char>(frame.size() & 0xff));
    out->push_back(static_cast<char>(frame.size() >> 8));
    *out += frame;
    return true;
  });
}

void WriteSeeds(const std::string& dir) {
  int n = 0;
  for (WireDtype dtype : {WireDtype::kFloat32, WireDtype::kBfloat16}) {
    for (size_t chunk : {size_t{8}, size_t{64}}) {
      for (uint8_t flags : {uint8_t{0}, uint8_t{3}}) {
        auto v1 = MakeVersion(1, dtype, 1.0f);
        auto v2 = MakeVersion(2, dtype, 1.5f);
        std::string input(1, static_cast<char>(flags));
        AppendFrames(v1, nullptr, chunk, &input);
        absl::StatusOr<pmdrl::WeightDelta> delta = pmdrl::EncodeDelta(*v1, *v2);
        FUZZ_CHECK(delta.ok());
        AppendFrames(v2, std::make_shared<pmdrl::WeightDelta>(std::move(*delta)), chunk, &input);
        std::ofstream(dir + "/seed-" + std::to_string(n++), std::ios::binary) << input;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("PMDRL_FUZZ_WRITE_SEEDS"); dir != nullptr) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const bool reuse = (flags & 1) != 0;
  const bool split = (flags & 2) != 0;
  size_t pos = 1;
  pmdrl::WeightAssembler assembler;
  std::shared_ptr<WeightVersion> last;
  std::optional<uint64_t> newest;
  while (pos + 2 <= size) {
    const size_t n = std::min<size_t>(data[pos] | (size_t{data[pos + 1]} << 8), size - pos - 2);
    pos += 2;
    grpc::ByteBuffer frame;
    if (split && n >= 2) {
      const size_t cut = 1 + data[pos] % (n - 1);
      grpc::Slice parts[2] = {grpc::Slice(data + pos, cut), grpc::Slice(data + pos + cut, n - cut)};
      frame = grpc::ByteBuffer(parts, 2);
    } else {
      grpc::Slice one(data + pos, n);
      frame = grpc::ByteBuffer(&one, 1);
    }
    pos += n;
    std::shared_ptr<WeightVersion> complete;
    const absl::Status s =
        assembler.Add(&frame, newest, last.get(), reuse && last.use_count() == 1, &complete);
    if (!s.ok()) {
      FUZZ_CHECK(complete == nullptr);
      last.reset();  // as the receiver does: start again from a full push
      assembler.Reset();
      continue;
    }
    if (complete == nullptr) continue;
    CheckVersion(*complete);
    FUZZ_CHECK(!newest.has_value() || complete->version > *newest);
    newest = complete->version;
    last = std::move(complete);
    if (last != nullptr && !pmdrl::IsWhole(*last)) last.reset();
  }
  return 0;
}
