// Validation of incoming messages (docs/design.md "Security"): every group that reaches
// the verifier or the learner is checked here first, so that malformed or hostile
// input is rejected with INVALID_ARGUMENT instead of crashing or poisoning training.
#ifndef PMDRL_COMMON_VALIDATE_H_
#define PMDRL_COMMON_VALIDATE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// What a receiver accepts; taken from the run's model and sampling configuration.
struct GroupLimits {
  int64_t vocab_size;              // token ids must lie in [0, vocab_size)
  int64_t max_prompt_tokens;       // prompt length in [1, max_prompt_tokens]
  int64_t max_response_tokens;     // each response length in [1, max_response_tokens]
  int64_t group_size;              // completions per group: exactly this many
  int64_t max_text_bytes = 65536;  // each string field at most this many bytes
};

// Checks a group as it arrives at the verifier (scored = false) or learner
// (scored = true):
//   * lease_id non-empty; every string field (lease_id, actor_id, verifier_id,
//     prompt_text, reference, task, completions[i].text) within max_text_bytes;
//   * prompt_tokens non-empty, within max_prompt_tokens, ids in [0, vocab_size);
//   * exactly group_size completions; each with 1..max_response_tokens tokens, ids in
//     [0, vocab_size), as many logprobs as tokens, every logprob finite and <= 0
//     (up to +1e-4 of rounding), and a known outcome value;
//   * generate_seconds and verify_seconds finite and >= 0;
//   * scored: each completion's reward finite and outcome != OUTCOME_UNSCORED.
// Returns the first problem as INVALID_ARGUMENT naming the field and index, e.g.
// "completions[3].tokens[5] = 99 is out of range [0, 17)".
absl::Status ValidateGroup(const v1::Group& group, const GroupLimits& limits, bool scored);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_VALIDATE_H_
