// The dtypes policy weights travel in from the learner to the actors.
#ifndef PMDRL_COMMON_WIRE_DTYPE_H_
#define PMDRL_COMMON_WIRE_DTYPE_H_

#include <cstddef>
#include <string_view>

#include "absl/status/statusor.h"

namespace pmdrl {

enum class WireDtype {
  kFloat32,   // little-endian IEEE float32
  kBfloat16,  // the upper 16 bits of the float32, rounded to nearest even
};

// "float32" | "bfloat16"; an error names the accepted values.
absl::StatusOr<WireDtype> ParseWireDtype(std::string_view name);
const char* WireDtypeName(WireDtype dtype);
size_t WireDtypeBytes(WireDtype dtype);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_WIRE_DTYPE_H_
