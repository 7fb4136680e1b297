// Process-wide set-up every pmdrl binary shares: the stop signals and the BLAS thread
// count.
#ifndef PMDRL_COMMON_PROCESS_H_
#define PMDRL_COMMON_PROCESS_H_

namespace pmdrl {

// Installs SIGINT/SIGTERM handlers that only record the signal. A handler, not a
// blocked mask plus sigwait: libraries start threads before main (OpenBLAS's pool), and
// a process-directed signal may land on any of them.
void InstallStopSignals();
// The signal that asked the process to stop, 0 if none.
int StopSignal();
inline bool StopRequested() { return StopSignal() != 0; }

// OpenBLAS reads OPENBLAS_NUM_THREADS when it is loaded, before main runs, so setting
// the variable only reaches child processes; the running library is told through its
// API when it exports one. Without this, Torch's threads times OpenBLAS's threads
// oversubscribe the cores (DESIGN.md: 2.5x slower). A value the user set is kept.
void LimitBlasThreads();
// Sets the running OpenBLAS's thread count (no-op under another BLAS), unless the user
// set OPENBLAS_NUM_THREADS. For phases made of large products on the calling thread (the
// learner's forward and backward), where Torch's pool does not split the product.
void SetBlasThreads(int threads);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_PROCESS_H_
