#include "actor/lease_group.h"

#include "absl/strings/str_cat.h"

namespace pmdrl {

std::string LeaseProblem(const v1::Lease& lease, int64_t vocab_size) {
  std::string problem;
  if (lease.lease_id().empty()) problem = "empty lease_id";
  if (lease.prompt_tokens().empty()) problem = "no prompt tokens";
  for (int i = 0; i < lease.prompt_tokens_size() && problem.empty(); ++i) {
    const int32_t t = lease.prompt_tokens(i);
    if (t < 0 || t >= vocab_size) {
      problem =
          absl::StrCat("prompt_tokens[", i, "] = ", t, " is out of range [0, ", vocab_size, ")");
    }
  }
  return problem;
}

v1::Group GroupFromFinished(const v1::Lease& lease, const FinishedGroup& done,
                            const std::string& actor_id, const std::string& task,
                            const Tokenizer& tokenizer, int64_t* tokens) {
  v1::Group group;
  group.set_lease_id(lease.lease_id());
  group.set_epoch(lease.epoch());
  group.set_index(lease.index());
  group.set_actor_id(actor_id);
  group.set_policy_version(done.version);
  *group.mutable_prompt_tokens() = lease.prompt_tokens();
  group.set_prompt_text(lease.prompt_text());
  group.set_reference(lease.reference());
  group.set_issued_at_version(lease.issued_at_version());
  group.set_task(task);
  group.set_generate_seconds(done.seconds);
  *tokens = 0;
  for (const RolloutSample& s : done.samples) {
    v1::Completion* c = group.add_completions();
    c->set_text(tokenizer.Decode(s.tokens, /*skip_special=*/true));
    c->mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
    c->mutable_logprobs()->Add(s.logprobs.begin(), s.logprobs.end());
    c->set_stopped(s.stopped);
    *tokens += static_cast<int64_t>(s.tokens.size());
  }
  return group;
}

}  // namespace pmdrl
