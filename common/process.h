// Process-wide set-up the pmdrl binaries share: the stop signals, OpenMP's wait policy,
// the BLAS thread count, and how much freed heap a process keeps.
#ifndef PMDRL_COMMON_PROCESS_H_
#define PMDRL_COMMON_PROCESS_H_

#include <cstddef>

namespace pmdrl {

// Installs SIGINT/SIGTERM handlers that only record the signal. A handler, not a
// blocked mask plus sigwait: libraries start threads before main (OpenBLAS's pool), and
// a process-directed signal may land on any of them.
void InstallStopSignals();
// The signal that asked the process to stop, 0 if none.
int StopSignal();
inline bool StopRequested() { return StopSignal() != 0; }
// Records `sig` as if it had arrived (0 forgets it): for tests of what a stop does,
// which must not leave the process stopped for the tests after them.
void SetStopSignalForTesting(int sig);

// Makes LibTorch's OpenMP workers sleep as soon as a parallel region ends, instead of
// spinning for about 300,000 iterations first (libgomp's default). On the learner's
// cores OpenBLAS's threads run the next product while those workers spin: learner_bench
// measured an update at 30.1 s spinning and 22.0 s passive (docs/design.md "CPU threads").
// libgomp reads OMP_WAIT_POLICY once, when it is loaded before main, so when the variable
// is unset this sets it and executes the same binary again with the same arguments (same
// pid); it returns only if it kept a value the user set or the exec failed. Call it first
// in main.
void UsePassiveOpenMpWait(char** argv);

// OpenBLAS reads OPENBLAS_NUM_THREADS when it is loaded, before main runs, so setting
// the variable only reaches child processes; the running library is told through its
// API when it exports one. Without this, Torch's threads times OpenBLAS's threads
// oversubscribe the cores (2.5x slower: docs/design.md "Processes"). A value the user set is kept.
void LimitBlasThreads();
// Sets the running OpenBLAS's thread count (no-op under another BLAS), unless the user
// set OPENBLAS_NUM_THREADS. For phases made of large products on the calling thread (the
// learner's forward and backward), where Torch's pool does not split the product.
void SetBlasThreads(int threads);

// Keeps up to `bytes` of freed heap memory mapped for reuse, and serves blocks of up to
// 32 MiB from the heap instead of fresh mmaps. gRPC reads a socket into a newly allocated
// buffer of up to 4 MiB per read; by default glibc hands each freed one back to the
// kernel (its trim threshold follows the largest freed block, about 8 MiB), so every read
// faults fresh pages in, and on a VM that costs as much as the copy itself. For processes
// that receive bulk streams (the actor's weight stream): weight_sync_bench measured a
// later-version push at 67-72% of raw TCP without this and 89-94% with it.
void RetainFreedHeapMemory(size_t bytes);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_PROCESS_H_
