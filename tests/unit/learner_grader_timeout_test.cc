// Answers whose check timed out in the verifier (OUTCOME_TIMEOUT) never train silently
// (issue 15, "the grader"): the learner counts them and, by verifier.timeout_reward,
// releases the group's place once ("requeue", the default) and then trains the timed-out
// answers at reward_incorrect, or trains them at once at a given reward.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/metrics.h"
#include "common/tokenizer.h"
#include "learner/coordinator/coordinator.h"
#include "learner/coordinator/lease_table.h"
#include "learner/coordinator/prompt_source.h"
#include "learner/learner_setup.h"
#include "tests/fake_prompt_source.h"
#include "tests/tiny_model_config.h"

namespace pmdrl {
namespace {

using std::chrono::milliseconds;

struct Released {
  std::string lease_id;
  std::string reason;
};

struct Harness {
  explicit Harness(bool requeue, float timeout_reward)
      : coordinator(MakeOptions(requeue, timeout_reward), &source, LeaseTable(0), &metrics) {
    v1::RegisterActorRequest r;
    r.set_name("actor");
    actor = coordinator.RegisterActor(r).actor_id();
  }

  CoordinatorOptions MakeOptions(bool requeue, float timeout_reward) {
    CoordinatorOptions o;
    o.group_size = 2;
    o.prompts_per_update = 1;
    o.max_staleness = 1;
    o.lease_ttl_ms = 3'600'000;  // no lease expires during a test
    o.limits = GroupLimits{.vocab_size = CharTokenizer::kVocabSize,
                           .max_prompt_tokens = 16,
                           .max_response_tokens = 4,
                           .group_size = 2};
    o.requeue_timeouts = requeue;
    o.timeout_reward = timeout_reward;
    o.on_group = [this](const v1::Group& g, v1::AckStatus status, uint64_t) {
      if (status == v1::ACK_ACCEPTED) accepted_rewards.push_back(g.completions(1).reward());
    };
    o.on_released = [this](const v1::Group& g, std::string_view reason, uint64_t) {
      released.push_back({g.lease_id(), std::string(reason)});
    };
    return o;
  }

  v1::Lease LeaseOne() {
    v1::LeasePromptsRequest r;
    r.set_actor_id(actor);
    r.set_max_prompts(1);
    absl::StatusOr<v1::LeasePromptsResponse> leased = coordinator.LeasePrompts(r);
    EXPECT_TRUE(leased.ok()) << leased.status();
    EXPECT_EQ(leased->leases_size(), 1);
    return leased->leases(0);
  }

  // A group for `lease`: completion 0 correct, completion 1 timed out in the verifier
  // (the verifier's placeholder reward is -1; 0.5 here shows the learner sets its own).
  v1::Group TimedOut(const v1::Lease& lease) const {
    v1::Group g;
    g.set_lease_id(lease.lease_id());
    g.set_epoch(lease.epoch());
    g.set_index(lease.index());
    g.set_actor_id(actor);
    g.set_policy_version(0);
    g.mutable_prompt_tokens()->CopyFrom(lease.prompt_tokens());
    g.set_reference(lease.reference());
    for (int i = 0; i < 2; ++i) {
      v1::Completion* c = g.add_completions();
      c->add_tokens(5);
      c->add_logprobs(-0.5f);
      c->set_reward(i == 0 ? 1.0f : 0.5f);
      c->set_outcome(i == 0 ? v1::OUTCOME_CORRECT : v1::OUTCOME_TIMEOUT);
    }
    return g;
  }

  double Metric(const std::string& needle) {
    // The sample line (not "# HELP name ..."): at a line start.
    const std::string text = "\n" + metrics.Serialize();
    size_t at = text.find("\n" + needle + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + needle.size() + 2));
  }

  FakeSource source;
  MetricsRegistry metrics{"learner"};
  std::vector<float> accepted_rewards;
  std::vector<Released> released;
  Coordinator coordinator;
  std::string actor;
};

StreamPosition Place(const v1::Lease& l) {
  return {static_cast<int64_t>(l.epoch()), static_cast<int64_t>(l.index())};
}

TEST(GraderTimeoutTest, RequeueReleasesThePlaceOnceThenTrainsTimeoutsAsIncorrect) {
  Harness h(/*requeue=*/true, /*timeout_reward=*/-1.0f);
  const v1::Lease first = h.LeaseOne();
  absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.TimedOut(first));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_RELEASED);
  EXPECT_NE(ack->message().find("timed out"), std::string::npos) << ack->message();
  EXPECT_EQ(h.Metric("pmdrl_learner_grader_timeouts_total"), 1);
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_released_total{reason="grader_timeout"})"), 1);
  ASSERT_EQ(h.released.size(), 1u);  // the groups.csv row RELEASED_GRADER_TIMEOUT
  EXPECT_EQ(h.released[0].lease_id, first.lease_id());
  EXPECT_EQ(h.released[0].reason, "grader_timeout");
  EXPECT_TRUE(h.accepted_rewards.empty());
  EXPECT_EQ(h.coordinator.counts().accepted, 0u);
  EXPECT_EQ(h.coordinator.ActorStatuses().at(0).leases_in_flight(), 0u)
      << "the released group's lease must be retired";
  EXPECT_FALSE(h.coordinator.PopBatch(0, milliseconds(0)).has_value()) << "nothing to train";

  // The same group resent before the place is leased again (its ack was lost): the same
  // answer, not the place's second chance, and no timeout counted twice.
  ack = h.coordinator.Submit(h.TimedOut(first));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_RELEASED);
  EXPECT_EQ(h.Metric("pmdrl_learner_grader_timeouts_total"), 1);
  EXPECT_EQ(h.released.size(), 1u);
  EXPECT_EQ(h.coordinator.counts().accepted, 0u);

  // The place comes back; its next group, timed out again, trains, its timeout scored
  // reward_incorrect.
  const v1::Lease second = h.LeaseOne();
  EXPECT_EQ(Place(second), Place(first));
  ack = h.coordinator.Submit(h.TimedOut(second));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
  EXPECT_EQ(h.Metric("pmdrl_learner_grader_timeouts_total"), 2);
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_released_total{reason="grader_timeout"})"), 1);
  std::optional<std::vector<v1::Group>> batch = h.coordinator.PopBatch(0, milliseconds(0));
  ASSERT_TRUE(batch.has_value());
  ASSERT_EQ(batch->size(), 1u);
  EXPECT_FLOAT_EQ(batch->at(0).completions(0).reward(), 1.0f);   // graded answers untouched
  EXPECT_FLOAT_EQ(batch->at(0).completions(1).reward(), -1.0f);  // the timeout: incorrect
  EXPECT_EQ(batch->at(0).completions(1).outcome(), v1::OUTCOME_TIMEOUT);
  ASSERT_EQ(h.accepted_rewards.size(), 1u);  // groups.csv logs the group as trained
  EXPECT_FLOAT_EQ(h.accepted_rewards[0], -1.0f);

  // A late resend of the released group finds its place accepted: a duplicate.
  ack = h.coordinator.Submit(h.TimedOut(first));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_DUPLICATE);
}

TEST(GraderTimeoutTest, NumericTimeoutRewardTrainsAtOnceWithThatReward) {
  Harness h(/*requeue=*/false, /*timeout_reward=*/0.0f);
  const v1::Lease lease = h.LeaseOne();
  absl::StatusOr<v1::GroupAck> ack = h.coordinator.Submit(h.TimedOut(lease));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status(), v1::ACK_ACCEPTED);
  EXPECT_EQ(h.Metric("pmdrl_learner_grader_timeouts_total"), 1);
  EXPECT_EQ(h.Metric(R"(pmdrl_learner_places_released_total{reason="grader_timeout"})"), 0);
  EXPECT_TRUE(h.released.empty());
  std::optional<std::vector<v1::Group>> batch = h.coordinator.PopBatch(0, milliseconds(0));
  ASSERT_TRUE(batch.has_value());
  EXPECT_FLOAT_EQ(batch->at(0).completions(1).reward(), 0.0f);
}

TEST(GraderTimeoutTest, ConfigChoosesTheRule) {
  EXPECT_FALSE(TimeoutRewardValue("requeue")->has_value());
  EXPECT_EQ(TimeoutRewardValue("-0.5")->value(), -0.5);
  EXPECT_FALSE(TimeoutRewardValue("drop").ok());
  EXPECT_FALSE(TimeoutRewardValue("nan").ok());
  absl::StatusOr<Config> bad = LoadConfig("", {"verifier.timeout_reward=sometimes"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("verifier.timeout_reward"), std::string::npos);

  absl::StatusOr<Config> config = LoadConfig("", {"verifier.reward_incorrect=-2"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->verifier.timeout_reward, "requeue");  // the default
  absl::StatusOr<CoordinatorOptions> o = MakeCoordinatorOptions(*config, TinyModelConfig("llama"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->requeue_timeouts);
  EXPECT_FLOAT_EQ(o->timeout_reward, -2.0f);

  config = LoadConfig("", {"verifier.timeout_reward=0.25"});
  ASSERT_TRUE(config.ok()) << config.status();
  o = MakeCoordinatorOptions(*config, TinyModelConfig("llama"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->requeue_timeouts);
  EXPECT_FLOAT_EQ(o->timeout_reward, 0.25f);
}

}  // namespace
}  // namespace pmdrl
