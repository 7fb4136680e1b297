#include <cmath>
#include <limits>
#include <string>

#include "common/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

constexpr GroupLimits kLimits{.vocab_size = 17,
                              .max_prompt_tokens = 8,
                              .max_response_tokens = 6,
                              .group_size = 4,
                              .max_text_bytes = 32};

// A group that passes both the unscored and the scored check.
v1::Group ValidGroup() {
  v1::Group group;
  group.set_lease_id("lease-7");
  group.set_epoch(0);
  group.set_index(3);
  group.set_actor_id("actor-0");
  group.set_policy_version(2);
  for (int t : {1, 5, 16}) group.add_prompt_tokens(t);
  group.set_prompt_text("1+2=");
  group.set_reference("3");
  for (int i = 0; i < kLimits.group_size; ++i) {
    v1::Completion* c = group.add_completions();
    for (int t : {4, 0, 2}) {
      c->add_tokens(t);
      c->add_logprobs(-0.5f);
    }
    c->set_stopped(true);
    c->set_text("3");
    c->set_reward(i % 2);
    c->set_outcome(i % 2 ? v1::OUTCOME_CORRECT : v1::OUTCOME_INCORRECT);
  }
  group.set_generate_seconds(0.25);
  return group;
}

// Expects INVALID_ARGUMENT with `needle` in the message.
void ExpectInvalid(const v1::Group& group, bool scored, const std::string& needle) {
  const absl::Status status = ValidateGroup(group, kLimits, scored);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
}

TEST(ValidateGroupTest, ValidGroupPasses) {
  EXPECT_TRUE(ValidateGroup(ValidGroup(), kLimits, /*scored=*/false).ok());
  EXPECT_TRUE(ValidateGroup(ValidGroup(), kLimits, /*scored=*/true).ok());
}

TEST(ValidateGroupTest, UnscoredGroupPassesOnlyTheUnscoredCheck) {
  v1::Group group = ValidGroup();
  for (auto& c : *group.mutable_completions()) {
    c.set_reward(0);
    c.set_outcome(v1::OUTCOME_UNSCORED);
  }
  EXPECT_TRUE(ValidateGroup(group, kLimits, /*scored=*/false).ok());
  ExpectInvalid(group, /*scored=*/true, "completions[0].outcome is OUTCOME_UNSCORED");
}

TEST(ValidateGroupTest, LeaseIdMustBeSet) {
  v1::Group group = ValidGroup();
  group.clear_lease_id();
  ExpectInvalid(group, false, "lease_id is empty");
}

TEST(ValidateGroupTest, CompletionCountMustEqualGroupSize) {
  v1::Group group = ValidGroup();
  group.mutable_completions()->RemoveLast();
  ExpectInvalid(group, false, "completions has 3 entries, expected group_size 4");
  group = ValidGroup();
  *group.add_completions() = group.completions(0);
  ExpectInvalid(group, false, "completions has 5 entries, expected group_size 4");
}

TEST(ValidateGroupTest, TokenIdsMustBeInVocabulary) {
  v1::Group group = ValidGroup();
  group.mutable_completions(3)->add_tokens(99);
  group.mutable_completions(3)->add_logprobs(-1);
  ExpectInvalid(group, false, "completions[3].tokens[3] = 99 is out of range [0, 17)");

  group = ValidGroup();
  group.mutable_completions(1)->set_tokens(0, -1);
  ExpectInvalid(group, false, "completions[1].tokens[0] = -1 is out of range [0, 17)");

  group = ValidGroup();
  group.set_prompt_tokens(2, 17);
  ExpectInvalid(group, false, "prompt_tokens[2] = 17 is out of range [0, 17)");
}

TEST(ValidateGroupTest, LengthsMustBeWithinLimits) {
  v1::Group group = ValidGroup();
  group.clear_prompt_tokens();
  ExpectInvalid(group, false, "prompt_tokens is empty");

  group = ValidGroup();
  for (int i = 0; i < 6; ++i) group.add_prompt_tokens(1);  // 9 > 8
  ExpectInvalid(group, false, "prompt_tokens has 9 tokens, more than the limit 8");

  group = ValidGroup();
  group.mutable_completions(2)->clear_tokens();
  group.mutable_completions(2)->clear_logprobs();
  ExpectInvalid(group, false, "completions[2].tokens is empty");

  group = ValidGroup();
  for (int i = 0; i < 4; ++i) {  // 7 > 6
    group.mutable_completions(0)->add_tokens(1);
    group.mutable_completions(0)->add_logprobs(-1);
  }
  ExpectInvalid(group, false, "completions[0].tokens has 7 tokens, more than the limit 6");
}

TEST(ValidateGroupTest, ExactlyMaxLengthsPass) {
  v1::Group group = ValidGroup();
  for (int i = 0; i < 5; ++i) group.add_prompt_tokens(0);  // 8
  for (int i = 0; i < 3; ++i) {                            // 6
    group.mutable_completions(0)->add_tokens(16);
    group.mutable_completions(0)->add_logprobs(0.0f);
  }
  group.set_prompt_text(std::string(32, 'x'));
  EXPECT_TRUE(ValidateGroup(group, kLimits, true).ok());
}

TEST(ValidateGroupTest, LogprobsMustMatchTokensAndBeFiniteNonPositive) {
  v1::Group group = ValidGroup();
  group.mutable_completions(1)->add_logprobs(-1);
  ExpectInvalid(group, false, "completions[1].logprobs has 4 entries but tokens has 3");

  group = ValidGroup();
  group.mutable_completions(2)->set_logprobs(1, std::numeric_limits<float>::quiet_NaN());
  ExpectInvalid(group, false, "completions[2].logprobs[1] = nan");

  group = ValidGroup();
  group.mutable_completions(2)->set_logprobs(0, -std::numeric_limits<float>::infinity());
  ExpectInvalid(group, false, "completions[2].logprobs[0] = -inf");

  group = ValidGroup();
  group.mutable_completions(0)->set_logprobs(2, 0.5f);
  ExpectInvalid(group, false, "completions[0].logprobs[2] = 0.5 is not a finite value <= 0");

  // Rounding just above zero is tolerated.
  group = ValidGroup();
  group.mutable_completions(0)->set_logprobs(2, 5e-5f);
  EXPECT_TRUE(ValidateGroup(group, kLimits, false).ok());
}

TEST(ValidateGroupTest, TextsMustBeWithinLimit) {
  v1::Group group = ValidGroup();
  group.mutable_completions(1)->set_text(std::string(33, 'a'));
  ExpectInvalid(group, false, "completions[1].text has 33 bytes, more than the limit 32");

  group = ValidGroup();
  group.set_prompt_text(std::string(40, 'p'));
  ExpectInvalid(group, false, "prompt_text has 40 bytes");

  group = ValidGroup();
  group.set_reference(std::string(40, 'r'));
  ExpectInvalid(group, false, "reference has 40 bytes");

  group = ValidGroup();
  group.set_task(std::string(40, 't'));
  ExpectInvalid(group, false, "task has 40 bytes");

  group = ValidGroup();
  group.set_lease_id(std::string(40, 'l'));
  ExpectInvalid(group, false, "lease_id has 40 bytes");
}

TEST(ValidateGroupTest, ScoredGroupsNeedFiniteRewards) {
  v1::Group group = ValidGroup();
  group.mutable_completions(3)->set_reward(std::numeric_limits<float>::infinity());
  EXPECT_TRUE(ValidateGroup(group, kLimits, /*scored=*/false).ok());
  ExpectInvalid(group, /*scored=*/true, "completions[3].reward = inf is not finite");
  group.mutable_completions(3)->set_reward(std::nanf(""));
  ExpectInvalid(group, /*scored=*/true, "completions[3].reward = nan is not finite");
}

TEST(ValidateGroupTest, UnknownOutcomeIsRejected) {
  v1::Group group = ValidGroup();
  group.mutable_completions(0)->set_outcome(static_cast<v1::Outcome>(42));
  ExpectInvalid(group, false, "completions[0].outcome = 42 is not a known Outcome");
}

TEST(ValidateGroupTest, TimingsMustBeFiniteAndNonNegative) {
  v1::Group group = ValidGroup();
  group.set_generate_seconds(-1);
  ExpectInvalid(group, false, "generate_seconds = -1");
  group = ValidGroup();
  group.set_verify_seconds(std::numeric_limits<double>::quiet_NaN());
  ExpectInvalid(group, true, "verify_seconds = nan");
}

}  // namespace
}  // namespace pmdrl
