#include "common/config_enums.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace pmdrl {

absl::Status BadConfigEnumValue(std::string_view key, std::string_view text,
                                const std::string_view* names, size_t count) {
  std::string want;
  for (size_t i = 0; i < count; ++i) {
    if (i > 0) want += ", ";
    want += names[i];
  }
  return absl::InvalidArgumentError(absl::StrCat("config key '", std::string(key), "': bad value '",
                                                 std::string(text), "' (want one of: ", want, ")"));
}

}  // namespace pmdrl
