// Where the coordinator's prompts come from: a place in the data stream (epoch, index)
// maps to one problem. Implementations are immutable and thread-safe.
#ifndef PMDRL_LEARNER_PROMPT_SOURCE_H_
#define PMDRL_LEARNER_PROMPT_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/tokenizer.h"

namespace pmdrl {

struct PromptItem {
  std::vector<int32_t> tokens;
  std::string text;
  std::string reference;
};

class PromptSource {
 public:
  virtual ~PromptSource() = default;
  virtual PromptItem Get(int64_t epoch, int64_t index) const = 0;
  // Items per epoch; 0 for an endless stream.
  virtual int64_t ItemsPerEpoch() const = 0;
  // The fixed held-out split, as prompts with references.
  virtual const std::vector<PromptItem>& HeldOut() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual std::string task() const = 0;            // grader name: "arith"
  virtual std::string tokenizer_name() const = 0;  // "char"
};

// The built-in arithmetic task (task.name = arith): an endless stream seeded by run.seed
// that never yields a held-out problem.
absl::StatusOr<std::unique_ptr<PromptSource>> MakePromptSource(const Config& config);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_PROMPT_SOURCE_H_
