// The actor's generation engine: the policy model at one version, and a sampler that
// draws groups of completions from it with their sampling log-probs (DESIGN.md "Data
// flow" step 2). Torch-free header (pimpl) so the actor's service code compiles without
// Torch.
#ifndef PMDRL_ACTOR_ROLLOUT_ENGINE_H_
#define PMDRL_ACTOR_ROLLOUT_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "actor/weight_receiver.h"
#include "common/model_config.h"

namespace pmdrl {

struct RolloutOptions {
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // e.g. EOS; included in the output when hit
  uint64_t seed = 0;                 // the sampler's RNG seed
  std::string device = "cpu";        // cpu | cuda | cuda:N (actor.device)
};

// One sampled completion (a Torch-free copy of the sampler's Sample).
struct RolloutSample {
  std::vector<int32_t> tokens;  // response tokens, ending with the stop token if stopped
  std::vector<float> logprobs;  // log-prob of each token under the sampling policy
  bool stopped = false;         // ended on a stop token (else cut at max_new_tokens)
};

// Owns the model and the sampler. Holds no weights until the first SetWeights: until
// then (and after a failed SetWeights, which may leave the model half-updated) it has
// version 0 and Generate fails, so nothing is ever sampled from random or mixed
// weights. Not thread-safe: the actor's loop calls it between batches, which is what
// makes a weight swap atomic with respect to a batch.
class RolloutEngine {
 public:
  // `config` must pass ValidateModelConfig. A CUDA `options.device` with no CUDA device
  // visible to this LibTorch is FailedPrecondition, naming actor.device.
  static absl::StatusOr<std::unique_ptr<RolloutEngine>> Create(const ModelConfig& config,
                                                               const RolloutOptions& options);
  ~RolloutEngine();
  RolloutEngine(const RolloutEngine&) = delete;
  RolloutEngine& operator=(const RolloutEngine&) = delete;

  // Loads every tensor of `weights` into the model (names and shapes must match the
  // model exactly) and takes its version.
  absl::Status SetWeights(const WeightSet& weights);

  // Version of the loaded weights.
  uint64_t version() const;
  bool has_weights() const;

  // [prompts.size()][k] completions. Every prompt must be non-empty with token ids in
  // [0, vocab_size) (checked: InvalidArgument naming the prompt).
  absl::StatusOr<std::vector<std::vector<RolloutSample>>> Generate(
      const std::vector<std::vector<int32_t>>& prompts, int64_t k);

 private:
  struct Impl;
  explicit RolloutEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_ROLLOUT_ENGINE_H_
