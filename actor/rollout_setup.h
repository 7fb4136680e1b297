// What an actor builds from the coordinator's answer to RegisterActor: the policy's model
// config (from the config.json text it sends), the tokenizer it names (char, or hf with
// the tokenizer.json it sends), the stop ids (its own, else the model's EOS) and a
// generation engine that samples with the actor's settings.
// Ownership: the returned Rollout owns the tokenizer and the engine; the caller owns the
// Rollout. Nothing here talks to the network.
#ifndef PMDRL_ACTOR_ROLLOUT_SETUP_H_
#define PMDRL_ACTOR_ROLLOUT_SETUP_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "engine/generation_engine.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

struct Rollout {
  ModelConfig model_config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<GenerationEngine> engine;
};

// Builds the rollout side for `registration` with the sampling, device and engine
// settings of `config` (the `actor` section) and sampling seed `seed`; logs what it
// built. Errors: a model config that does not parse, an unsupported tokenizer, a
// tokenizer larger than the model's vocabulary, a stop id outside it, or an engine that
// cannot be created.
absl::StatusOr<Rollout> BuildRollout(const v1::RegisterActorResponse& registration,
                                     const ActorConfig& config, uint64_t seed);

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_ROLLOUT_SETUP_H_
