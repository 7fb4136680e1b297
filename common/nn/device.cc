#include "common/nn/device.h"

#include <torch/cuda.h>

#include "absl/strings/str_cat.h"

namespace pmdrl {

absl::StatusOr<c10::Device> TorchDevice(const std::string& key, const std::string& name,
                                        int64_t default_index) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  const auto malformed = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(key, "=", name, ": expected cpu, cuda or cuda:N"));
  };
  if (name != "cuda" && name.rfind("cuda:", 0) != 0) return malformed();
  int64_t index = -1;
  if (name != "cuda") {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.size() > 4 ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      return malformed();
    }
    index = std::stoll(digits);
  }
  const int64_t count = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        key, "=", name,
        ": no CUDA device is visible to this LibTorch (a CPU-only build, or no GPU); use cpu"));
  }
  if (index < 0) index = default_index % count;
  if (index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, "=", name, ": only ", count, " CUDA devices are visible"));
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace pmdrl
