#include "learner/training/peak_memory.h"

#include <torch/torch.h>

#include <fstream>
#include <sstream>

// Debian's CPU-only LibTorch ships the header but not its generated config.
#if __has_include( \
    <c10/cuda/CUDACachingAllocator.h>) && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define PMDRL_PEAK_MEMORY_CUDA 1
#endif

namespace pmdrl {
namespace {

bool IsCuda(const std::string& device) { return device.rfind("cuda", 0) == 0; }

#ifdef PMDRL_PEAK_MEMORY_CUDA
int CudaIndex(const std::string& device) {
  const size_t colon = device.find(':');
  if (colon != std::string::npos) return std::stoi(device.substr(colon + 1));
  return static_cast<int>(c10::cuda::current_device());
}
#endif

// A "Key:   N kB" line of /proc/self/status, in bytes; 0 if absent.
int64_t ProcStatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kb = 0;
    fields >> kb;
    return kb * 1024;
  }
  return 0;
}

}  // namespace

void ResetPeakMemory(const std::string& device) {
  if (IsCuda(device)) {
#ifdef PMDRL_PEAK_MEMORY_CUDA
    if (torch::cuda::is_available()) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(CudaIndex(device));
    }
#endif
    return;
  }
  // "5" resets the peak RSS (VmHWM) to the current RSS (Documentation/filesystems/proc).
  std::ofstream("/proc/self/clear_refs") << "5";
}

int64_t PeakMemoryBytes(const std::string& device) {
  if (IsCuda(device)) {
#ifdef PMDRL_PEAK_MEMORY_CUDA
    if (torch::cuda::is_available()) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(CudaIndex(device));
      return stats
          .allocated_bytes[static_cast<size_t>(
              c10::cuda::CUDACachingAllocator::StatType::AGGREGATE)]
          .peak;
    }
#endif
    return 0;
  }
  return ProcStatusBytes("VmHWM");
}

}  // namespace pmdrl
