#include "verifier/verifier_service.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
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
    const Verdict verdict = result ? result->verdict : Verdict::kTimeout;
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

grpc::Status VerifierService::ScoreGroups(
    grpc::ServerContext* context, grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) {
  if (grpc::Status auth = CheckBearer(*context, options_.token); !auth.ok()) {
    rejected_unauthenticated_->Increment();
    spdlog::warn("verifier: rejected stream from {}: {}", context->peer(),
                 QuoteUntrusted(auth.error_message()));
    return auth;
  }
  ActiveStream active(*streams_active_);
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
      rejected_invalid_->Increment();
      spdlog::warn("verifier: rejected group of lease {} from {}: {}",
                   QuoteUntrusted(group.lease_id()), context->peer(),
                   QuoteUntrusted(valid.message()));
      ack.set_status(v1::ACK_REJECTED);
      ack.set_message(std::string(valid.message()));
    } else if (absl::StatusOr<v1::GroupAck> learner_ack = learner.Forward(group);
               learner_ack.ok()) {
      forwarded_->Increment();
      ack = *std::move(learner_ack);
    } else {
      failed_->Increment();
      spdlog::warn("verifier: group of lease {} not delivered: {}",
                   QuoteUntrusted(group.lease_id()),
                   QuoteUntrusted(learner_ack.status().message()));
      ack.set_status(v1::ACK_UNKNOWN);
      ack.set_message(std::string(learner_ack.status().message()));
    }
    if (!stream->Write(ack)) break;  // the actor went away
  }
  learner.Close();
  return grpc::Status::OK;
}

}  // namespace pmdrl
