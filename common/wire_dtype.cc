#include "common/wire_dtype.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace pmdrl {

absl::StatusOr<WireDtype> ParseWireDtype(std::string_view name) {
  if (name == "float32") return WireDtype::kFloat32;
  if (name == "bfloat16") return WireDtype::kBfloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("weight dtype '", std::string(name), "': expected float32 or bfloat16"));
}

const char* WireDtypeName(WireDtype dtype) {
  return dtype == WireDtype::kBfloat16 ? "bfloat16" : "float32";
}

size_t WireDtypeBytes(WireDtype dtype) { return dtype == WireDtype::kBfloat16 ? 2 : 4; }

}  // namespace pmdrl
