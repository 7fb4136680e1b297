// Weight versions made up for the weight-stream tests (codec and receiver): deterministic
// values, a version of given tensor shapes, a copy, and a small step from a version.
#ifndef PMDRL_TESTS_WEIGHT_VERSIONS_H_
#define PMDRL_TESTS_WEIGHT_VERSIONS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/weight_stream.h"
#include "common/wire_dtype.h"

namespace pmdrl {

// One tensor of a made-up version.
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
};

// About 80 KB in float32: large enough that a delta of a few changed values is much
// smaller than the version.
inline std::vector<Spec> LargerModel() {
  return {{"model.embed_tokens.weight", {64, 256}},
          {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
          {"model.norm.weight", {64}}};
}

inline uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A deterministic value in [-1, 1) for (seed, tensor, element).
inline float Value(uint64_t seed, size_t tensor, int64_t j) {
  const uint64_t x =
      SplitMix(seed * 0x100000001B3ull ^ (uint64_t{tensor} << 40) ^ static_cast<uint64_t>(j));
  return static_cast<float>(x >> 40) / static_cast<float>(1 << 23) - 1.0f;
}

// Element j of `t` set to v in `dtype` (bfloat16: v's upper half, truncated).
inline void SetValue(WireTensor* t, WireDtype dtype, int64_t j, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if (dtype == WireDtype::kFloat32) {
    std::memcpy(t->bytes.get() + 4 * j, &bits, 4);
  } else {
    const uint16_t half = static_cast<uint16_t>(bits >> 16);
    std::memcpy(t->bytes.get() + 2 * j, &half, 2);
  }
}

// Every tensor's checksum, from its bytes.
inline void Seal(WeightVersion* v) {
  for (WireTensor& t : v->tensors) t.checksum = WeightChecksum(t.bytes.get(), t.size);
}

// Version `version` of tensors `specs` with Value(seed, ...) in them, sealed.
inline std::shared_ptr<WeightVersion> MakeVersion(uint64_t version, WireDtype dtype,
                                                  const std::vector<Spec>& specs, uint64_t seed) {
  auto v = std::make_shared<WeightVersion>();
  v->version = version;
  v->dtype = dtype;
  for (size_t i = 0; i < specs.size(); ++i) {
    v->tensors.push_back(MakeWireTensor(specs[i].name, specs[i].shape, dtype));
    WireTensor& t = v->tensors.back();
    for (int64_t j = 0; j < t.elements(); ++j) SetValue(&t, dtype, j, Value(seed, i, j));
  }
  Seal(v.get());
  return v;
}

// A copy of `v`'s tensors (bytes and checksums) as version `version`.
inline std::shared_ptr<WeightVersion> Clone(const WeightVersion& v, uint64_t version) {
  auto c = std::make_shared<WeightVersion>();
  c->version = version;
  c->dtype = v.dtype;
  for (const WireTensor& t : v.tensors) {
    c->tensors.push_back(MakeWireTensor(t.name, t.shape, v.dtype));
    if (t.size > 0) std::memcpy(c->tensors.back().bytes.get(), t.bytes.get(), t.size);
    c->tensors.back().checksum = t.checksum;
  }
  return c;
}

// `base` with a few values changed, as version `version`: what one small update does.
inline std::shared_ptr<WeightVersion> SmallStep(const WeightVersion& base, uint64_t version) {
  std::shared_ptr<WeightVersion> next = Clone(base, version);
  for (size_t i = 0; i < next->tensors.size(); ++i) {
    WireTensor& t = next->tensors[i];
    for (int64_t j = 0; j < t.elements(); j += std::max<int64_t>(1, t.elements() / 3)) {
      SetValue(&t, base.dtype, j, Value(version, i, j) * 0.5f);
    }
  }
  Seal(next.get());
  return next;
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_WEIGHT_VERSIONS_H_
