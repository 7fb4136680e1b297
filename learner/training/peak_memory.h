// The learner's peak memory over a window (an update): the process's peak resident set
// on the CPU (Linux's VmHWM, reset through /proc/self/clear_refs), or the caching
// allocator's peak allocated bytes on a CUDA device.
#ifndef PMDRL_LEARNER_PEAK_MEMORY_H_
#define PMDRL_LEARNER_PEAK_MEMORY_H_

#include <cstdint>
#include <string>

namespace pmdrl {

// Starts a window: the peak is reset to the current use. (On the CPU this also resets
// what getrusage reports as the peak, so windows that tile a run are its only record.) `device` is
// "cpu" or a CUDA device name as learner.device takes it ("cuda", "cuda:N"). Best effort: where the
// reset is not possible (no /proc), the peak covers the process's lifetime.
void ResetPeakMemory(const std::string& device);

// Peak bytes since the last ResetPeakMemory (resident set on the CPU, allocated on
// CUDA); 0 where it cannot be read.
int64_t PeakMemoryBytes(const std::string& device);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_PEAK_MEMORY_H_
