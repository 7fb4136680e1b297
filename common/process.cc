#include "common/process.h"

#include <dlfcn.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

namespace pmdrl {
namespace {

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "used from a signal handler");

void OnStopSignal(int sig) { g_stop_signal.store(sig); }

}  // namespace

void InstallStopSignals() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int StopSignal() { return g_stop_signal.load(); }

void SetStopSignalForTesting(int sig) { g_stop_signal.store(sig); }

void UsePassiveOpenMpWait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
  execv("/proc/self/exe", argv);  // returns only on failure: go on with libgomp's default
}

void LimitBlasThreads() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr) return;
  setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(1);
  }
}

void SetBlasThreads(int threads) {
  static const bool user_set = [] {
    const char* v = std::getenv("OPENBLAS_NUM_THREADS");
    return v != nullptr && std::string(v) != "1";
  }();
  if (user_set || threads < 1) return;
  using SetThreads = void (*)(int);
  using GetThreads = int (*)();
  static const auto set =
      reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  static const auto get =
      reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (set != nullptr && (get == nullptr || get() != threads)) set(threads);
}

void RetainFreedHeapMemory(size_t bytes) {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed threshold
  mallopt(M_TRIM_THRESHOLD, static_cast<int>(std::min<size_t>(bytes, 1u << 30)));
}

}  // namespace pmdrl
