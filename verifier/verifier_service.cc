#include "verifier/verifier_service.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/rpc.h"
#include "verifier/grader_pool.h"

namespace pmdrl {

using Clock = std::chrono::steady_clock;

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
      pool_(std::make_unique<GraderPool>(options_.threads, options_.max_stuck_threads)) {
  // Registered up front so /metrics shows them (at 0) from the start.
  for (Verdict v :
       {Verdict::kCorrect, Verdict::kIncorrect, Verdict::kParseError, Verdict::kTimeout}) {
    completions_.at(static_cast<size_t>(v)) =
        &metrics->Counter("pmdrl_verifier_completions_total", "Completions scored, by outcome.",
                          {{"outcome", std::string(VerdictName(v))}});
  }
  score_seconds_ = &metrics->Histogram("pmdrl_verifier_score_seconds", "Time to score one group.",
                                       ScoreBuckets());
  overruns_ = &metrics->Counter("pmdrl_verifier_grader_overruns_total",
                                "Answer checks that ignored their deadline and were written off.");
  threads_stuck_ = &metrics->Gauge("pmdrl_verifier_grader_threads_stuck",
                                   "Grading threads written off and still running their check.");
  const char* replaced = "pmdrl_verifier_grader_workers_replaced_total";
  const char* replaced_help =
      "Grader processes replaced: killed after overrunning a check, or died mid-check.";
  workers_replaced_timeout_ = &metrics->Counter(replaced, replaced_help, {{"reason", "timeout"}});
  workers_replaced_died_ = &metrics->Counter(replaced, replaced_help, {{"reason", "died"}});
  if (!options_.grader_worker.executable.empty()) {
    absl::StatusOr<std::unique_ptr<GraderProcessPool>> started =
        GraderProcessPool::Start(options_.grader_worker);
    if (started.ok()) {
      processes_ = *std::move(started);
    } else {
      init_status_ = started.status();
      spdlog::error("verifier: grader processes: {}", std::string(init_status_.message()));
    }
  }
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
  const bool isolated = !options_.grader_for_task && GraderNeedsProcess(task);
  if (isolated && processes_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("group of lease ", group->lease_id(), ": task \"", task,
                     "\" is graded in grader processes, and none run",
                     init_status_.ok() ? "" : absl::StrCat(" (", init_status_.message(), ")")));
  }
  std::vector<Verdict> verdicts(group->completions_size(), Verdict::kTimeout);
  if (isolated) {
    std::vector<std::shared_ptr<GraderProcessPool::Job>> jobs;
    jobs.reserve(group->completions_size());
    for (const v1::Completion& c : group->completions()) {
      jobs.push_back(processes_->Submit(task, c.text(), group->reference(), options_.timeout));
    }
    for (int i = 0; i < group->completions_size(); ++i) {
      GraderProcessPool::Ending ending = GraderProcessPool::Ending::kAnswered;
      verdicts[i] = processes_->Wait(jobs[i], &ending).verdict;
      if (ending == GraderProcessPool::Ending::kKilled) {
        workers_replaced_timeout_->Increment();
        spdlog::warn("verifier: lease {} completion {}: grader overran {} ms; worker replaced",
                     QuoteUntrusted(group->lease_id()), i, options_.timeout.count());
      } else if (ending == GraderProcessPool::Ending::kDied) {
        workers_replaced_died_->Increment();
      } else if (ending == GraderProcessPool::Ending::kQueued) {
        spdlog::warn("verifier: lease {} completion {}: no grader process free in time",
                     QuoteUntrusted(group->lease_id()), i);
      }
    }
  } else {
    std::vector<std::shared_ptr<GraderPool::Job>> jobs;
    jobs.reserve(group->completions_size());
    for (const v1::Completion& c : group->completions()) {
      jobs.push_back(pool_->Submit(*grader, c.text(), group->reference(), options_.timeout));
    }
    for (int i = 0; i < group->completions_size(); ++i) {
      bool overran = false;
      std::optional<GradeResult> result = pool_->Wait(jobs[i], &overran);
      if (overran) {
        overruns_->Increment();
        spdlog::warn("verifier: lease {} completion {}: grader overran {} ms; thread written off",
                     QuoteUntrusted(group->lease_id()), i, options_.timeout.count());
      }
      if (result) verdicts[i] = result->verdict;
    }
  }
  for (int i = 0; i < group->completions_size(); ++i) {
    const Verdict verdict = verdicts[i];
    v1::Completion* c = group->mutable_completions(i);
    c->set_outcome(ToOutcome(verdict));
    c->set_reward(verdict == Verdict::kCorrect ? options_.reward_correct
                                               : options_.reward_incorrect);
    completions_.at(static_cast<size_t>(verdict))->Increment();
  }

  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  group->set_verifier_id(options_.verifier_id);
  group->set_verify_seconds(seconds);
  score_seconds_->Observe(seconds);
  threads_stuck_->Set(pool_->Stuck());
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

GroupLimits VerifierLimitsFor(const Config& config) {
  GroupLimits limits = DefaultVerifierLimits();
  const ActorConfig& actor = config.actor;
  // What an actor of this config can send: responses up to max_new_tokens, prompts up
  // to its slot context (engine/generation_engine.h) less the response. Never tighter
  // than the defaults: a verifier started without an override given only to the actors
  // stays as loose as before instead of rejecting every group.
  const int64_t context = actor.max_context > 0 ? actor.max_context : 512 + actor.max_new_tokens;
  limits.max_response_tokens = std::max(limits.max_response_tokens, actor.max_new_tokens);
  limits.max_prompt_tokens = std::max(limits.max_prompt_tokens, context - actor.max_new_tokens);
  return limits;
}

// ------------------------------------------------------------------ service

namespace {

// One actor stream's Learner.SubmitGroups stream, opened on first use. Not thread-safe:
// it belongs to the forwarding thread of one actor stream.
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
    // The learner's status may echo what the actor sent.
    spdlog::warn("verifier: learner stream to {} broke ({}); reopening", target_,
                 QuoteUntrusted(ack.status().ToString()));
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
      spdlog::debug("verifier: learner stream to {} ended: {}", target_,
                    QuoteUntrusted(status.error_message()));
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
      scorer_(options_.scorer, metrics),
      learner_channel_(MakeChannel(options_.learner)),
      learner_stub_(v1::Learner::NewStub(learner_channel_)) {
  rejected_unauthenticated_ =
      &metrics->Counter("pmdrl_verifier_rejected_total", "Calls and groups rejected, by reason.",
                        {{"reason", "unauthenticated"}});
  rejected_invalid_ =
      &metrics->Counter("pmdrl_verifier_rejected_total", "Calls and groups rejected, by reason.",
                        {{"reason", "invalid"}});
  forwarded_ = &metrics->Counter("pmdrl_verifier_groups_forwarded_total",
                                 "Scored groups the learner acknowledged (any ack status).");
  failed_ = &metrics->Counter("pmdrl_verifier_groups_failed_total",
                              "Scored groups that could not be delivered to the learner.");
  streams_active_ = &metrics->Gauge("pmdrl_verifier_streams_active", "Actor streams being served.");
}

VerifierService::~VerifierService() = default;

bool VerifierService::ScoreOne(v1::Group* group, const std::string& peer, v1::GroupAck* ack) {
  ack->set_lease_id(group->lease_id());
  GroupLimits limits = options_.limits;
  if (limits.group_size == 0) limits.group_size = group->completions_size();
  absl::Status valid = group->completions_size() == 0
                           ? absl::InvalidArgumentError(absl::StrCat(
                                 "group of lease ", group->lease_id(), " has no completions"))
                           : ValidateGroup(*group, limits, /*scored=*/false);
  if (valid.ok()) valid = scorer_.Score(group);
  if (!valid.ok()) {
    rejected_invalid_->Increment();
    spdlog::warn("verifier: rejected group of lease {} from {}: {}",
                 QuoteUntrusted(group->lease_id()), peer, QuoteUntrusted(valid.message()));
    ack->set_status(v1::ACK_REJECTED);
    ack->set_message(std::string(valid.message()));
    return false;
  }
  return true;
}

namespace {

// One group of an actor stream between its arrival and its ack. `grading` fills
// `group` and `ack`; only the stream's forwarder joins it, and only then reads them.
struct InFlight {
  v1::Group group;
  v1::GroupAck ack;
  bool graded = false;  // valid and scored: to be forwarded (else `ack` is the rejection)
  std::thread grading;
};

}  // namespace

grpc::Status VerifierService::ScoreGroups(
    grpc::ServerContext* context, grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) {
  if (grpc::Status auth = CheckBearer(*context, options_.token); !auth.ok()) {
    rejected_unauthenticated_->Increment();
    spdlog::warn("verifier: rejected stream from {}: {}", context->peer(),
                 QuoteUntrusted(auth.error_message()));
    return auth;
  }
  ActiveStream active(*streams_active_);
  const std::string peer = context->peer();

  // This thread reads groups and starts grading each at once on a thread of its own (the
  // checks themselves run on the scorer's shared pools); the forwarder takes them in
  // arrival order, waits for each one's grading, forwards it and writes its ack. A slow
  // group thus delays its successors' forwarding, never their grading, and acks leave
  // in the order the groups came. At most kStreamQueue groups are between read and ack:
  // beyond that this thread stops reading, and gRPC flow control holds the actor back.
  std::mutex mu;
  std::condition_variable changed;
  std::deque<std::unique_ptr<InFlight>> queue;  // guarded by mu; owned here
  bool reading_done = false;                    // guarded by mu

  std::thread forwarder([&] {
    LearnerLink learner(learner_stub_.get(), options_.learner, options_.token);
    bool actor_gone = false;
    while (true) {
      InFlight* item = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu);
        changed.wait(lock, [&] { return !queue.empty() || reading_done; });
        if (queue.empty()) break;
        item = queue.front().get();  // stays until popped below; only this thread pops
      }
      if (item->grading.joinable()) item->grading.join();
      v1::GroupAck& ack = item->ack;
      // Once the actor is gone nothing more is forwarded: it resends unacked groups
      // elsewhere, and the learner would only see them twice.
      if (!actor_gone && item->graded) {
        if (absl::StatusOr<v1::GroupAck> learner_ack = learner.Forward(item->group);
            learner_ack.ok()) {
          forwarded_->Increment();
          ack = *std::move(learner_ack);
        } else {
          failed_->Increment();
          spdlog::warn("verifier: group of lease {} not delivered: {}",
                       QuoteUntrusted(item->group.lease_id()),
                       QuoteUntrusted(learner_ack.status().message()));
          ack.set_status(v1::ACK_UNKNOWN);
          ack.set_message(std::string(learner_ack.status().message()));
        }
      }
      if (!actor_gone && !stream->Write(ack)) {
        actor_gone = true;
        context->TryCancel();  // unblocks the reader's Read
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        queue.pop_front();
      }
      changed.notify_all();
    }
    learner.Close();
  });

  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu);
      changed.wait(lock, [&] { return queue.size() < kStreamQueue; });
    }
    auto item = std::make_unique<InFlight>();
    if (!stream->Read(&item->group)) break;
    InFlight* raw = item.get();
    try {
      raw->grading =
          std::thread([this, raw, &peer] { raw->graded = ScoreOne(&raw->group, peer, &raw->ack); });
    } catch (const std::system_error& e) {
      // Out of threads (a pod's process limit): grade this one here, in order, rather
      // than let the exception end the verifier with the forwarder still running.
      spdlog::warn("verifier: no thread for grading ({}); grading inline", e.what());
      raw->graded = ScoreOne(&raw->group, peer, &raw->ack);
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(std::move(item));
    }
    changed.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reading_done = true;
  }
  changed.notify_all();
  forwarder.join();  // every group read is graded and answered (or the actor is gone)
  return grpc::Status::OK;
}

}  // namespace pmdrl
