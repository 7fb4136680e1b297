// `pmdrl init-model`: writes a small randomly initialised model directory (config.json +
// safetensors, optionally a tokenizer copied from a real checkpoint) in Hugging Face
// layout, for tests, demos and parity checks against transformers.
#ifndef PMDRL_CLI_INIT_MODEL_H_
#define PMDRL_CLI_INIT_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace pmdrl {

// argv starts at the sub-command's name. Returns a process exit code (0 ok, 2 usage).
int RunInitModel(int argc, char** argv);

// Token facts read from a Hugging Face tokenizer directory with JSON alone (no tokenizer
// library): vocab_size = 1 + the largest id in tokenizer.json's model.vocab and
// added_tokens; bos/eos/pad from tokenizer_config.json's *_token strings (looked up in
// those two tables), overridden by generation_config.json's *_token_id (a list keeps its
// first entry). -1 where unknown.
struct TokenizerFacts {
  int64_t vocab_size = 0;
  int64_t bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;
};
absl::StatusOr<TokenizerFacts> ReadTokenizerFacts(const std::string& dir);

}  // namespace pmdrl

#endif  // PMDRL_CLI_INIT_MODEL_H_
