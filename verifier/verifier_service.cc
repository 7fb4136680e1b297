#include "verifier/verifier_service.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/rpc.h"

namespace pmdrl {

using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------------ grader pool

namespace {

// One answer check. Shared by the waiter and the worker, so a waiter that gives up can
// return while the worker still runs it; the job owns copies of its inputs for that
// reason.
struct Job {
  Grader grader;
  std::string response;
  std::string reference;
  std::chrono::milliseconds budget;
  Clock::time_point submitted;

  // Guarded by PoolState::mu.
  enum class Phase { kQueued, kRunning, kDone } phase = Phase::kQueued;
  bool abandoned = false;  // the waiter gave up: the result goes nowhere
  Clock::time_point started;
  GradeResult result;
};

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
class GraderPool {
 public:
  GraderPool(int threads, int max_stuck) : state_(std::make_shared<State>()) {
    state_->target = std::max(1, threads);
    state_->max_total = state_->target + std::max(0, max_stuck);
    std::lock_guard<std::mutex> lock(state_->mu);
    for (int i = 0; i < state_->target; ++i) SpawnLocked();
  }

  GraderPool(const GraderPool&) = delete;
  GraderPool& operator=(const GraderPool&) = delete;

  // Stops the healthy workers and waits for them; stuck ones exit on their own later.
  ~GraderPool() {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->stopping = true;
    state_->queue.clear();
    state_->work_cv.notify_all();
    state_->done_cv.wait(lock, [this] { return state_->healthy == 0; });
  }

  std::shared_ptr<Job> Submit(const Grader& grader, std::string response, std::string reference,
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

  // The job's result, or nullopt if it overran its limit (then it is abandoned; a
  // running one costs its thread, which is replaced). Sets *overran when a running
  // check was written off.
  std::optional<GradeResult> Wait(const std::shared_ptr<Job>& job, bool* overran) {
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

  // Threads written off and still running their grader.
  int Stuck() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->total - state_->healthy;
  }

 private:
  struct State {
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

  void SpawnLocked() {
    try {
      std::thread(&GraderPool::WorkerLoop, state_).detach();
      ++state_->healthy;
      ++state_->total;
    } catch (const std::system_error& e) {
      spdlog::error("verifier: cannot start a grading thread: {}", e.what());
    }
  }

  static void WorkerLoop(std::shared_ptr<State> s) {
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
        spdlog::error("verifier: grader threw: {}", e.what());
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

  std::shared_ptr<State> state_;
};

// ------------------------------------------------------------------ scorer

namespace {

const std::vector<double>& ScoreBuckets() {
  static const std::vector<double> buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,   0.5,   1,      2.5,   5,    10,    30};
  return buckets;
}

v1::Outcome ToOutcome(Verdict verdict) {
  switch (verdict) {
    case Verdict::kCorrect:
      return v1::OUTCOME_CORRECT;
    case Verdict::kIncorrect:
      return v1::OUTCOME_INCORRECT;
    case Verdict::kParseError:
      return v1::OUTCOME_PARSE_ERROR;
    case Verdict::kTimeout:
      return v1::OUTCOME_TIMEOUT;
  }
  return v1::OUTCOME_PARSE_ERROR;
}

}  // namespace

GroupScorer::GroupScorer(ScorerOptions options, MetricsRegistry* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      pool_(std::make_unique<GraderPool>(options_.threads, options_.max_stuck_threads)) {
  // Register the families up front so /metrics shows them (at 0) from the start.
  for (Verdict v :
       {Verdict::kCorrect, Verdict::kIncorrect, Verdict::kParseError, Verdict::kTimeout}) {
    metrics_->Counter("pmdrl_verifier_completions_total", "Completions scored, by outcome.",
                      {{"outcome", std::string(VerdictName(v))}});
  }
  metrics_->Histogram("pmdrl_verifier_score_seconds", "Time to score one group.", ScoreBuckets());
  metrics_->Counter("pmdrl_verifier_grader_overruns_total",
                    "Answer checks that ignored their deadline and were written off.");
  metrics_->Gauge("pmdrl_verifier_grader_threads_stuck",
                  "Grading threads written off and still running their check.");
}

GroupScorer::~GroupScorer() = default;

absl::Status GroupScorer::Score(v1::Group* group) {
  const Clock::time_point start = Clock::now();
  const std::string& task = group->task().empty() ? options_.default_task : group->task();
  absl::StatusOr<Grader> grader =
      options_.grader_for_task ? options_.grader_for_task(task) : GraderForTask(task);
  if (!grader.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group of lease ", group->lease_id(), ": ", grader.status().message()));
  }

  // All checks of the group run in parallel; each gets its own limit.
  std::vector<std::shared_ptr<Job>> jobs;
  jobs.reserve(group->completions_size());
  for (const v1::Completion& c : group->completions()) {
    jobs.push_back(pool_->Submit(*grader, c.text(), group->reference(), options_.timeout));
  }
  for (int i = 0; i < group->completions_size(); ++i) {
    bool overran = false;
    std::optional<GradeResult> result = pool_->Wait(jobs[i], &overran);
    if (overran) {
      metrics_->Counter("pmdrl_verifier_grader_overruns_total", "").Increment();
      spdlog::warn("verifier: lease {} completion {}: grader overran {} ms; thread written off",
                   group->lease_id(), i, options_.timeout.count());
    }
    const Verdict verdict = result ? result->verdict : Verdict::kTimeout;
    v1::Completion* c = group->mutable_completions(i);
    c->set_outcome(ToOutcome(verdict));
    c->set_reward(verdict == Verdict::kCorrect ? options_.reward_correct
                                               : options_.reward_incorrect);
    metrics_
        ->Counter("pmdrl_verifier_completions_total", "",
                  {{"outcome", std::string(VerdictName(verdict))}})
        .Increment();
  }

  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  group->set_verifier_id(options_.verifier_id);
  group->set_verify_seconds(seconds);
  metrics_->Histogram("pmdrl_verifier_score_seconds", "", ScoreBuckets()).Observe(seconds);
  metrics_->Gauge("pmdrl_verifier_grader_threads_stuck", "").Set(pool_->Stuck());
  return absl::OkStatus();
}

GroupLimits DefaultVerifierLimits() {
  GroupLimits limits{};
  limits.vocab_size = int64_t{1} << 20;
  limits.max_prompt_tokens = 8192;
  limits.max_response_tokens = 8192;
  limits.group_size = 0;
  return limits;
}

// ------------------------------------------------------------------ service

namespace {

// One actor stream's Learner.SubmitGroups stream, opened on first use. Not thread-safe:
// it belongs to the handler thread of one actor stream.
class LearnerLink {
 public:
  LearnerLink(v1::Learner::Stub* stub, std::string target, std::string token)
      : stub_(stub), target_(std::move(target)), token_(std::move(token)) {}
  LearnerLink(const LearnerLink&) = delete;
  LearnerLink& operator=(const LearnerLink&) = delete;
  ~LearnerLink() { Close(); }

  // Sends the group and returns the learner's ack. If the stream breaks, reopens it
  // once and resends (the learner de-duplicates by (epoch, index)).
  absl::StatusOr<v1::GroupAck> Forward(const v1::Group& group) {
    absl::StatusOr<v1::GroupAck> ack = TryOnce(group);
    if (ack.ok()) return ack;
    spdlog::warn("verifier: learner stream to {} broke ({}); reopening", target_,
                 ack.status().ToString());
    absl::StatusOr<v1::GroupAck> retry = TryOnce(group);
    if (retry.ok()) return retry;
    return absl::UnavailableError(
        absl::StrCat("learner ", target_, " unreachable: ", retry.status().ToString()));
  }

  // Half-closes and finishes the stream, if open.
  void Close() {
    if (stream_ == nullptr) return;
    stream_->WritesDone();
    grpc::Status status = stream_->Finish();
    if (!status.ok()) {
      spdlog::debug("verifier: learner stream to {} ended: {}", target_, status.error_message());
    }
    stream_.reset();
    context_.reset();
  }

 private:
  absl::StatusOr<v1::GroupAck> TryOnce(const v1::Group& group) {
    if (stream_ == nullptr) {
      context_ = std::make_unique<grpc::ClientContext>();
      AddBearer(context_.get(), token_);
      stream_ = stub_->SubmitGroups(context_.get());
    }
    if (!stream_->Write(group)) return Broken("sending");
    v1::GroupAck ack;
    if (!stream_->Read(&ack)) return Broken("waiting for the ack");
    return ack;
  }

  // The call is over (a failed Write or Read means the status has arrived): collect it
  // and drop the stream so the next attempt opens a fresh one.
  absl::Status Broken(const char* while_doing) {
    grpc::Status status = stream_->Finish();
    stream_.reset();
    context_.reset();
    absl::Status s = ToAbsl(status);
    if (s.ok()) s = absl::UnavailableError("learner closed the stream");
    return absl::Status(s.code(), absl::StrCat("while ", while_doing, ": ", s.message()));
  }

  v1::Learner::Stub* const stub_;
  const std::string target_;
  const std::string token_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::Group, v1::GroupAck>> stream_;
};

// Keeps pmdrl_verifier_streams_active right on every exit path.
class ActiveStream {
 public:
  explicit ActiveStream(prometheus::Gauge& gauge) : gauge_(gauge) { gauge_.Increment(); }
  ~ActiveStream() { gauge_.Decrement(); }
  ActiveStream(const ActiveStream&) = delete;
  ActiveStream& operator=(const ActiveStream&) = delete;

 private:
  prometheus::Gauge& gauge_;
};

}  // namespace

VerifierService::VerifierService(VerifierOptions options, MetricsRegistry* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      scorer_(options_.scorer, metrics),
      learner_channel_(MakeChannel(options_.learner)),
      learner_stub_(v1::Learner::NewStub(learner_channel_)) {
  for (const char* reason : {"unauthenticated", "invalid"}) {
    metrics_->Counter("pmdrl_verifier_rejected_total", "Calls and groups rejected, by reason.",
                      {{"reason", reason}});
  }
  metrics_->Counter("pmdrl_verifier_groups_forwarded_total",
                    "Scored groups the learner acknowledged (any ack status).");
  metrics_->Counter("pmdrl_verifier_groups_failed_total",
                    "Scored groups that could not be delivered to the learner.");
  metrics_->Gauge("pmdrl_verifier_streams_active", "Actor streams being served.");
}

VerifierService::~VerifierService() = default;

grpc::Status VerifierService::ScoreGroups(
    grpc::ServerContext* context, grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) {
  if (grpc::Status auth = CheckBearer(*context, options_.token); !auth.ok()) {
    metrics_->Counter("pmdrl_verifier_rejected_total", "", {{"reason", "unauthenticated"}})
        .Increment();
    spdlog::warn("verifier: rejected stream from {}: {}", context->peer(), auth.error_message());
    return auth;
  }
  ActiveStream active(metrics_->Gauge("pmdrl_verifier_streams_active", ""));
  LearnerLink learner(learner_stub_.get(), options_.learner, options_.token);

  v1::Group group;
  while (stream->Read(&group)) {
    v1::GroupAck ack;
    ack.set_lease_id(group.lease_id());

    GroupLimits limits = options_.limits;
    if (limits.group_size == 0) limits.group_size = group.completions_size();
    absl::Status valid = group.completions_size() == 0
                             ? absl::InvalidArgumentError(absl::StrCat(
                                   "group of lease ", group.lease_id(), " has no completions"))
                             : ValidateGroup(group, limits, /*scored=*/false);
    if (valid.ok()) valid = scorer_.Score(&group);
    if (!valid.ok()) {
      metrics_->Counter("pmdrl_verifier_rejected_total", "", {{"reason", "invalid"}}).Increment();
      spdlog::warn("verifier: rejected group of lease {} from {}: {}", group.lease_id(),
                   context->peer(), std::string(valid.message()));
      ack.set_status(v1::ACK_REJECTED);
      ack.set_message(std::string(valid.message()));
    } else if (absl::StatusOr<v1::GroupAck> learner_ack = learner.Forward(group);
               learner_ack.ok()) {
      metrics_->Counter("pmdrl_verifier_groups_forwarded_total", "").Increment();
      ack = *std::move(learner_ack);
    } else {
      metrics_->Counter("pmdrl_verifier_groups_failed_total", "").Increment();
      spdlog::warn("verifier: group of lease {} not delivered: {}", group.lease_id(),
                   std::string(learner_ack.status().message()));
      ack.set_status(v1::ACK_UNKNOWN);
      ack.set_message(std::string(learner_ack.status().message()));
    }
    if (!stream->Write(ack)) break;  // the actor went away
  }
  learner.Close();
  return grpc::Status::OK;
}

}  // namespace pmdrl
