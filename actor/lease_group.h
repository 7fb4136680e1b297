// The actor's translation between the coordinator's protocol and the generation engine:
// a lease's prompt checked before it becomes an engine request, and an engine's finished
// group turned into the v1::Group sent for grading. Pure functions; they own nothing.
#ifndef PMDRL_ACTOR_LEASE_GROUP_H_
#define PMDRL_ACTOR_LEASE_GROUP_H_

#include <cstdint>
#include <string>

#include "common/tokenizer.h"
#include "engine/generation_engine.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// What makes `lease` unusable (an empty lease_id or prompt, a prompt token outside
// [0, vocab_size)), or "" when it can be sampled.
std::string LeaseProblem(const v1::Lease& lease, int64_t vocab_size);

// The group of `lease` from the engine's `done`, stamped with the sampling version,
// `actor_id` and `task`; completions are decoded with `tokenizer` (special tokens
// skipped). Sets *tokens to the number of response tokens in it.
v1::Group GroupFromFinished(const v1::Lease& lease, const FinishedGroup& done,
                            const std::string& actor_id, const std::string& task,
                            const Tokenizer& tokenizer, int64_t* tokens);

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_LEASE_GROUP_H_
