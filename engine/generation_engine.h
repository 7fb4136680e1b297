// The rollout engine: continuous batching of completions over a fixed pool of row slots
// with a preallocated KV cache. Torch-free header (pimpl), so the actor's service code
// compiles without Torch.
#ifndef PMDRL_ENGINE_GENERATION_ENGINE_H_
#define PMDRL_ENGINE_GENERATION_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/wire_dtype.h"

namespace pmdrl {

struct EngineOptions {
  std::string device = "cpu";     // cpu | cuda | cuda:N
  std::string dtype = "float32";  // float32 | bfloat16 | float16: weights, activations, KV
  int64_t max_rows = 16;          // row slots decoded together (bounds memory with max_context)
  int64_t max_context = 0;        // positions per slot, prompt + response; 0: 512 + max_new_tokens
  double temperature = 1.0;       // <= 0: greedy
  double top_p = 1.0;
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // a row ends on one (included in its tokens)
  uint64_t seed = 0;
  // CPU threads (0: leave the process's settings alone). One pool does the work, so the
  // two never spin against each other: float32 matrix products run in OpenBLAS's threads
  // with Torch's OpenMP pool at 1 thread; bfloat16/float16 products run in oneDNN on
  // Torch's pool with OpenBLAS at 1 thread. Process-wide (the actor has one engine).
  int64_t threads = 0;
  // Decode steps between looks at the sampled tokens on the host (finished rows, slot
  // changes). 0: 1 on the CPU (free there), 4 on CUDA (each look is a device sync).
  int64_t sync_every = 0;
};

// One completion (Torch-free).
struct RolloutSample {
  std::vector<int32_t> tokens;  // response tokens, ending with the stop token if stopped
  std::vector<float> logprobs;  // log-prob of each token under the sampling policy (float32)
  bool stopped = false;         // ended on a stop token (else cut at max_new_tokens)
};

// A prompt to complete n times.
struct GroupRequest {
  uint64_t id = 0;  // the caller's handle, returned with the result
  std::vector<int32_t> prompt;
  int64_t n = 1;
};

// The n completions of one request, all sampled with the weights of `version`.
struct FinishedGroup {
  uint64_t id = 0;
  uint64_t version = 0;
  std::vector<RolloutSample> samples;
  double seconds = 0;  // from its first row's admission to its last row's end
};

// A tensor of a weight version, borrowed from the caller for the duration of a call.
struct WeightView {
  std::string name;  // Hugging Face name
  std::vector<int64_t> shape;
  const void* data = nullptr;  // host memory, shape's element count in `dtype`
  WireDtype dtype = WireDtype::kFloat32;
};

struct EngineStats {
  int64_t steps = 0;           // decode steps run
  int64_t row_steps = 0;       // sum over steps of the rows decoded
  int64_t tokens = 0;          // response tokens returned
  int64_t prefill_tokens = 0;  // prompt tokens run through the model
  int64_t prefills = 0;        // prompts prefilled (once per admitted group part)
  double decode_seconds = 0, prefill_seconds = 0;
  double sample_seconds = 0;  // of decode_seconds: drawing tokens from the logits
};

// Promises: every row slot decodes one token per step while it has work; a row that ends
// frees its slot for the next waiting completion at the next step, so a long row never
// holds others back. A group's prompt is prefilled once and its keys/values copied to the
// group's rows admitted with it. Each group is sampled entirely by one weight version:
// LoadWeights is refused while rows are active (drain first). Holds the weights once, in
// `dtype`, on `device`. Not thread-safe: one caller drives Submit/Step/LoadWeights.
class GenerationEngine {
 public:
  // Checks the options (errors name the actor.* key they come from) and allocates the
  // model and the KV pool. No weights are loaded: Step refuses until LoadWeights.
  static absl::StatusOr<std::unique_ptr<GenerationEngine>> Create(const ModelConfig& config,
                                                                  const EngineOptions& options);
  ~GenerationEngine();
  GenerationEngine(const GenerationEngine&) = delete;
  GenerationEngine& operator=(const GenerationEngine&) = delete;

  // Copies a whole weight version into the model (names and shapes exactly the model's;
  // converted to `dtype`). FailedPrecondition while rows are active or waiting. On an
  // error the engine holds no version until the next successful load.
  absl::Status LoadWeights(uint64_t version, const std::vector<WeightView>& weights);
  uint64_t version() const;
  bool has_weights() const;

  // Queues a group. InvalidArgument (naming the request) for an empty prompt, a token
  // outside the vocabulary, n < 1, or a prompt that leaves no room for max_new_tokens in
  // a slot: nothing of it is queued, so the caller can return it.
  absl::Status Submit(GroupRequest request);

  // Admits waiting rows into free slots (prefilling their prompts), then decodes
  // sync_every steps for every active row. Returns the groups completed by it.
  absl::StatusOr<std::vector<FinishedGroup>> Step();

  // Drops every group, active or waiting (their requests are the caller's to return).
  void Cancel();

  bool idle() const;            // nothing active or waiting
  int64_t active_rows() const;  // rows in slots
  int64_t waiting_rows() const;
  int64_t max_rows() const;
  int64_t longest_prompt() const;  // the longest prompt Submit accepts
  int64_t weight_bytes() const;
  int64_t kv_bytes() const;
  const EngineStats& stats() const;
  std::string description() const;  // device, dtype, slots, context: for logs

 private:
  struct Impl;
  explicit GenerationEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Parses actor.dtype / device names; exposed for config checks and tools.
absl::Status CheckEngineOptions(const EngineOptions& options);

}  // namespace pmdrl

#endif  // PMDRL_ENGINE_GENERATION_ENGINE_H_
