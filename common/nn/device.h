// Device names of the config (learner.device, actor.device) as Torch devices.
#ifndef PMDRL_COMMON_NN_DEVICE_H_
#define PMDRL_COMMON_NN_DEVICE_H_

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace pmdrl {

// `name` (cpu | cuda | cuda:N), the value of the config key `key`, as a Torch device.
// Plain "cuda" is GPU `default_index` % the visible GPUs (a learner passes its rank, the
// NCCL backend's rule). Errors name the key: InvalidArgument for a malformed name or an
// index past the visible GPUs, FailedPrecondition when this LibTorch sees no GPU.
absl::StatusOr<c10::Device> TorchDevice(const std::string& key, const std::string& name,
                                        int64_t default_index = 0);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_DEVICE_H_
