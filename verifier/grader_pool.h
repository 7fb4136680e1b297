// The verifier's grading threads: runs answer checks (graders) on a pool of worker
// threads and lets the caller wait for each with a hard time limit, even against a
// grader that ignores its Deadline. For thread-safe graders only (arith, and graders
// tests inject); GiNaC graders run in verifier/grader_process_pool.h instead.
//
// Promises: Wait returns by the job's budget plus a small grace once the job runs (a
// grader honouring its Deadline reports kTimeout itself first), or after
// kQueueBudgets budgets in the queue (only when every worker is stuck and no
// replacement may start). A check that overruns is abandoned and its thread written
// off (leaked until the grader returns) and replaced, up to `max_stuck` such threads,
// so the pool keeps its capacity.
// Ownership: the pool owns its workers; they are detached and share the pool's state,
// so a written-off thread outlives the pool harmlessly. A job owns copies of its
// inputs (never the caller's data) and is shared by the caller and the worker.
// Thread-safe: any number of threads may Submit and Wait.
#ifndef PMDRL_VERIFIER_GRADER_POOL_H_
#define PMDRL_VERIFIER_GRADER_POOL_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "verifier/grader.h"

namespace pmdrl {

class GraderPool {
 public:
  // One answer check, opaque to callers.
  struct Job;

  // `threads` workers (at least 1); at most `max_stuck` written-off threads beyond them.
  GraderPool(int threads, int max_stuck);
  GraderPool(const GraderPool&) = delete;
  GraderPool& operator=(const GraderPool&) = delete;
  // Stops the healthy workers and waits for them; stuck ones exit on their own later.
  ~GraderPool();

  // Queues grader(response, reference, Deadline(budget)).
  std::shared_ptr<Job> Submit(const Grader& grader, std::string response, std::string reference,
                              std::chrono::milliseconds budget);

  // The job's result, or nullopt if it overran its limit (then it is abandoned; a
  // running one costs its thread, which is replaced). Sets *overran when a running
  // check was written off.
  std::optional<GradeResult> Wait(const std::shared_ptr<Job>& job, bool* overran);

  // Threads written off and still running their grader.
  int Stuck() const;

 private:
  struct State;
  void SpawnLocked();
  static void WorkerLoop(std::shared_ptr<State> s);

  std::shared_ptr<State> state_;
};

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_GRADER_POOL_H_
