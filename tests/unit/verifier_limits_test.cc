// The verifier's group limits come from the run's config, and config validation turns
// down an actor.max_new_tokens that no engine (actor or learner evaluator) could hold,
// so a run never samples groups that are then rejected without end (issue 15).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "common/config.h"
#include "verifier/verifier_service.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

TEST(VerifierLimitsTest, ValidationRejectsMaxNewTokensBeyondTheEngineContext) {
  Config c;
  c.actor.max_new_tokens = (1 << 20) - 512;  // 512 + this = the engine's 1 Mi positions
  EXPECT_TRUE(ValidateConfig(c).ok()) << ValidateConfig(c);

  c.actor.max_new_tokens = (1 << 20) - 511;
  absl::Status s = ValidateConfig(c);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("actor.max_new_tokens"));

  c.actor.max_new_tokens = int64_t{1} << 40;
  EXPECT_FALSE(ValidateConfig(c).ok());

  // With an explicit context the existing bound applies: room for a prompt beside it.
  c.actor.max_context = 1 << 20;
  c.actor.max_new_tokens = (1 << 20) - 16;
  EXPECT_TRUE(ValidateConfig(c).ok()) << ValidateConfig(c);
  c.actor.max_new_tokens = 1 << 20;
  EXPECT_FALSE(ValidateConfig(c).ok());
}

TEST(VerifierLimitsTest, LimitsFollowTheActorConfigAndNeverShrinkBelowTheDefaults) {
  Config c;  // max_new_tokens 6: the loose defaults stand
  GroupLimits limits = VerifierLimitsFor(c);
  EXPECT_EQ(limits.max_response_tokens, DefaultVerifierLimits().max_response_tokens);
  EXPECT_EQ(limits.max_prompt_tokens, DefaultVerifierLimits().max_prompt_tokens);
  EXPECT_EQ(limits.group_size, 0);

  // Before issue 15 the verifier rejected every response over 8192 tokens.
  c.actor.max_new_tokens = 20000;
  limits = VerifierLimitsFor(c);
  EXPECT_EQ(limits.max_response_tokens, 20000);
  EXPECT_GE(limits.max_prompt_tokens, 8192);

  c.actor.max_context = 60000;
  limits = VerifierLimitsFor(c);
  EXPECT_EQ(limits.max_response_tokens, 20000);
  EXPECT_EQ(limits.max_prompt_tokens, 40000);
}

}  // namespace
}  // namespace pmdrl
