#include "verifier/grader_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "common/log.h"
#include "verifier/deadline.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

// One answer check. Shared by the waiter and the worker, so a waiter that gives up can
// return while the worker still runs it; the job owns copies of its inputs for that
// reason.
struct GraderPool::Job {
  Grader grader;
  std::string response;
  std::string reference;
  std::chrono::milliseconds budget;
  Clock::time_point submitted;

  // Guarded by GraderPool::State::mu.
  enum class Phase { kQueued, kRunning, kDone } phase = Phase::kQueued;
  bool abandoned = false;  // the waiter gave up: the result goes nowhere
  Clock::time_point started;
  GradeResult result;
};

namespace {

// A waiter gives up on a queued job after this many budgets: only reached when every
// worker is stuck and no replacement may be started (max_stuck_threads).
constexpr int kQueueBudgets = 10;

// Slack on top of the budget before a running check is written off, so that a grader
// that honours its Deadline reports kTimeout itself and keeps its thread.
std::chrono::milliseconds Grace(std::chrono::milliseconds budget) {
  return std::clamp(budget / 10, std::chrono::milliseconds(5), std::chrono::milliseconds(100));
}

}  // namespace

// Worker threads are detached and share this state through a shared_ptr, so a thread
// written off while running a check outlives the pool harmlessly: when its grader
// returns, it drops the result and exits (or rejoins the pool if no replacement was
// started for it).
struct GraderPool::State {
  mutable std::mutex mu;
  std::condition_variable work_cv;  // a job was queued, or stopping
  std::condition_variable done_cv;  // a job started or finished, or a worker exited
  std::deque<std::shared_ptr<Job>> queue;
  int target = 1;     // workers wanted
  int max_total = 1;  // cap on threads, stuck ones included
  int healthy = 0;    // live workers not written off
  int total = 0;      // all live worker threads
  bool stopping = false;
};

GraderPool::GraderPool(int threads, int max_stuck) : state_(std::make_shared<State>()) {
  state_->target = std::max(1, threads);
  state_->max_total = state_->target + std::max(0, max_stuck);
  std::lock_guard<std::mutex> lock(state_->mu);
  for (int i = 0; i < state_->target; ++i) SpawnLocked();
}

GraderPool::~GraderPool() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->stopping = true;
  state_->queue.clear();
  state_->work_cv.notify_all();
  state_->done_cv.wait(lock, [this] { return state_->healthy == 0; });
}

std::shared_ptr<GraderPool::Job> GraderPool::Submit(const Grader& grader, std::string response,
                                                    std::string reference,
                                                    std::chrono::milliseconds budget) {
  auto job = std::make_shared<Job>();
  job->grader = grader;
  job->response = std::move(response);
  job->reference = std::move(reference);
  job->budget = budget;
  job->submitted = Clock::now();
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->queue.push_back(job);
  state_->work_cv.notify_one();
  return job;
}

std::optional<GradeResult> GraderPool::Wait(const std::shared_ptr<Job>& job, bool* overran) {
  *overran = false;
  std::unique_lock<std::mutex> lock(state_->mu);
  const Clock::time_point queue_limit = job->submitted + kQueueBudgets * job->budget;
  while (true) {
    const Clock::time_point now = Clock::now();
    switch (job->phase) {
      case Job::Phase::kDone:
        return std::move(job->result);
      case Job::Phase::kQueued:
        if (now >= queue_limit) {
          job->abandoned = true;  // the worker that pops it skips it
          return std::nullopt;
        }
        state_->done_cv.wait_until(lock, queue_limit);
        break;
      case Job::Phase::kRunning: {
        const Clock::time_point hard = job->started + job->budget + Grace(job->budget);
        if (now >= hard) {
          job->abandoned = true;
          *overran = true;
          // Its thread is stuck until the grader returns: replace it, within limits.
          --state_->healthy;
          if (state_->total < state_->max_total) SpawnLocked();
          return std::nullopt;
        }
        state_->done_cv.wait_until(lock, hard);
        break;
      }
    }
  }
}

int GraderPool::Stuck() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->total - state_->healthy;
}

void GraderPool::SpawnLocked() {
  try {
    std::thread(&GraderPool::WorkerLoop, state_).detach();
    ++state_->healthy;
    ++state_->total;
  } catch (const std::system_error& e) {
    spdlog::error("verifier: cannot start a grading thread: {}", e.what());
  }
}

void GraderPool::WorkerLoop(std::shared_ptr<State> s) {
  std::unique_lock<std::mutex> lock(s->mu);
  bool healthy = true;
  while (true) {
    s->work_cv.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
    if (s->stopping) break;
    std::shared_ptr<Job> job = std::move(s->queue.front());
    s->queue.pop_front();
    if (job->abandoned) continue;
    job->phase = Job::Phase::kRunning;
    job->started = Clock::now();
    s->done_cv.notify_all();  // its waiter switches from the queue limit to the run limit
    lock.unlock();
    GradeResult result;
    try {
      result = job->grader(job->response, job->reference, Deadline(job->budget));
    } catch (const std::exception& e) {
      // Graders promise not to throw; if one does, the answer is unreadable.
      // The message may quote the (untrusted) answer being graded.
      spdlog::error("verifier: grader threw: {}", QuoteUntrusted(e.what()));
      result.verdict = Verdict::kParseError;
    } catch (...) {
      spdlog::error("verifier: grader threw a non-standard exception");
      result.verdict = Verdict::kParseError;
    }
    lock.lock();
    job->result = std::move(result);
    job->phase = Job::Phase::kDone;
    s->done_cv.notify_all();
    if (job->abandoned) {
      // This thread was written off. Exit if a replacement took its place.
      if (s->stopping || s->healthy >= s->target) {
        healthy = false;
        break;
      }
      ++s->healthy;  // no replacement was started (thread cap): rejoin
    }
  }
  if (healthy) --s->healthy;
  --s->total;
  s->done_cv.notify_all();
}

}  // namespace pmdrl
