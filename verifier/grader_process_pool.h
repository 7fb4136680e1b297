// The verifier's grading processes: answer checks that use GiNaC (the math grader) run in
// a small pool of worker processes instead of the verifier's own threads. GiNaC cannot
// be interrupted and is not thread-safe, so a pathological input used to hold a
// process-wide lock and stall every other symbolic check. In a worker it costs that
// worker for one deadline: the pool kills it (SIGKILL by pid), reaps it and starts a
// fresh one, while the other workers go on grading.
//
// The workers run `pmdrl-verifier --grader-worker` (RunGraderWorker), started with
// posix_spawn, so no forked copy of the multithreaded verifier ever runs code before
// exec. Each talks over a socketpair on its stdin/stdout: the worker says hello, then
// serves one request at a time (a frame = u32 little-endian length + fields, each a u32
// length + bytes; request: task, response, reference, budget in ms; reply: verdict,
// extracted, normalized answer, normalized reference).
//
// Promises: Wait returns by the job's budget plus a small grace once a worker took it
// (the worker, honouring its Deadline, reports kTimeout itself first), or after
// kQueueBudgets budgets in the queue when every worker is busy. A worker that overruns is
// killed, reaped and replaced, and its job is kTimeout; a worker that dies mid-job (a
// crash on its input, an OOM kill) costs that job only (kParseError) and is replaced.
// The other checks keep `processes` workers meanwhile: a check still running after a
// tenth of its budget (normal ones take well under a millisecond) gets a spare worker
// started in its place, up to `processes` spares, and whichever is surplus when that
// check ends is retired.
// Workers never outlive the pool: the destructor kills them by pid and reaps them, and a
// worker whose verifier died gets SIGKILL (PR_SET_PDEATHSIG) or reads EOF and exits.
// Ownership: the pool owns its worker processes and one driver thread per worker (the
// only thread that writes to, reads from, starts and reaps that worker). A job owns
// copies of its inputs and is shared by the caller and a driver.
// Thread-safe: any number of threads may Submit and Wait.
#ifndef PMDRL_VERIFIER_GRADER_PROCESS_POOL_H_
#define PMDRL_VERIFIER_GRADER_PROCESS_POOL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "verifier/grader.h"

namespace pmdrl {

// Test-only inputs, honoured only by a worker started with --grader-test-hooks (never
// by a production verifier: no config key adds that flag). A response containing the
// hang marker makes the worker sleep far beyond any budget, ignoring its Deadline (a
// check that never returns, as a pathological GiNaC input would); one containing the
// crash marker makes it exit at once (a worker dying mid-job).
inline constexpr char kGraderTestHangMarker[] = "PMDRL_TEST_GRADER_HANG";
inline constexpr char kGraderTestCrashMarker[] = "PMDRL_TEST_GRADER_CRASH";

// The hidden worker mode of pmdrl-verifier: serves grading requests on `in_fd` /
// `out_fd` (its stdin and stdout) until EOF. Returns the process exit code.
int RunGraderWorker(int in_fd, int out_fd, bool test_hooks);

class GraderProcessPool {
 public:
  struct Options {
    std::string executable;         // e.g. "/proc/self/exe" (the running verifier)
    std::vector<std::string> argv;  // argv[0] included, e.g. {"pmdrl-verifier", "--grader-worker"}
    int processes = 2;              // workers (at least 1)
    // How long a fresh worker may take to say hello before its start counts as failed.
    std::chrono::milliseconds start_timeout{10000};
  };

  // How a job ended.
  enum class Ending {
    kAnswered,  // the worker replied (its verdict may be kTimeout: it honoured its Deadline)
    kKilled,    // the worker overran budget + grace: killed and replaced; kTimeout
    kDied,      // the worker died mid-job: replaced; kParseError
    kQueued,    // no worker took it within kQueueBudgets budgets; kTimeout
  };

  struct Stats {
    int processes = 0;           // workers wanted for normal checks
    int live = 0;                // worker slots in use (spares included)
    int busy = 0;                // workers running a job now
    int long_running = 0;        // of those, running past a tenth of their budget
    int64_t started = 0;         // worker processes started, first ones included
    int64_t spares_started = 0;  // of those, spares for long-running checks
    int64_t killed_overrun = 0;  // killed after overrunning a job's limit
    int64_t died = 0;            // died mid-job (or while idle), and replaced
    int64_t start_failures = 0;  // replacements or spares that failed to start
  };

  // One answer check, opaque to callers.
  struct Job;

  // Starts the workers and waits for each to say hello. An error (the executable cannot
  // be run, or a worker does not answer in time) stops whatever started.
  static absl::StatusOr<std::unique_ptr<GraderProcessPool>> Start(Options options);

  GraderProcessPool(const GraderProcessPool&) = delete;
  GraderProcessPool& operator=(const GraderProcessPool&) = delete;
  // Kills every worker by pid, reaps them, joins the drivers.
  ~GraderProcessPool();

  // Queues grader `task` (GraderForTask in the worker) on copies of the inputs.
  std::shared_ptr<Job> Submit(std::string task, std::string response, std::string reference,
                              std::chrono::milliseconds budget);

  // The job's result (see Ending for the verdict of jobs that got no answer).
  GradeResult Wait(const std::shared_ptr<Job>& job, Ending* ending);

  Stats stats() const;

 private:
  struct State;
  struct Slot;
  explicit GraderProcessPool(Options options);
  // Starts a driver (which starts its worker) in a free slot; false when none is free.
  // Called with State::mu held.
  static bool StartDriverLocked(const std::shared_ptr<State>& s, bool spare);
  static void DriverLoop(std::shared_ptr<State> s, Slot* slot);

  std::shared_ptr<State> state_;
};

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_GRADER_PROCESS_POOL_H_
