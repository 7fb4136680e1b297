// `pmdrl logits`: one forward pass of a model directory over given token ids, logits to a
// safetensors file. The C++ side of scripts/gpu/hf_parity.py's comparison with
// transformers.
#ifndef PMDRL_CLI_LOGITS_H_
#define PMDRL_CLI_LOGITS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// argv starts at the sub-command's name. Writes "logits" (float32 [batch, T, vocab], rows
// right-padded to the longest; padded positions hold meaningless values) and "lengths"
// (int64 [batch]). Returns a process exit code (0 ok, 1 failure, 2 usage).
int RunLogits(int argc, char** argv);

// "1,2,3;4,5" -> {{1,2,3},{4,5}}. Rows must be non-empty; ids non-negative.
absl::StatusOr<std::vector<std::vector<int64_t>>> ParseIdRows(const std::string& text);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOGITS_H_
