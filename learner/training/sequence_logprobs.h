// Packing (prompt ++ response) rows into one batch and reading each response token's
// log-prob out of the model's output: the one definition the trainer and the loss tests
// share, so that what the tests check is what the trainer computes.
//
// Tensors are at::Tensor, the same type as torch::Tensor; this header includes only the
// core tensor class so that its users do not pay for <torch/torch.h>.
#ifndef PMDRL_LEARNER_SEQUENCE_LOGPROBS_H_
#define PMDRL_LEARNER_SEQUENCE_LOGPROBS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace pmdrl {

// A batch of (prompt ++ response) rows, right-padded, with the response positions marked
// in the shifted frame: column t of `response_mask` says whether token t+1 of the row is
// a response token, i.e. whether the logits at t score a response token.
struct PackedRows {
  at::Tensor input;                       // [N, T] int64
  at::Tensor positions;                   // [N, T] int64
  at::Tensor valid;                       // [N, T] bool
  at::Tensor response_mask;               // [N, T-1] float32 (T-1 >= 1)
  int64_t tokens = 0;                     // prompt + response tokens over all rows
  std::vector<int64_t> prompt_lengths;    // per row
  std::vector<int64_t> response_lengths;  // per row

  // Moves the four tensors to `device`.
  void To(const at::Device& device);
};

// Packs row i = prompts[i] ++ responses[i], padding with `pad`. Every prompt must hold
// at least one token (the first response token is scored by the logits at the last
// prompt position). On the CPU; call To() to move.
PackedRows Pack(const std::vector<const std::vector<int32_t>*>& prompts,
                const std::vector<const std::vector<int32_t>*>& responses, int64_t pad);

// Per-token log-probs of each row's next token, [N, T-1], from `logp` = [N, T, V]
// log-probs (e.g. SamplingLogProbs of the logits) and the packed `input`. Positions
// outside the response are exactly 0: they would otherwise hold log p(PAD), possibly
// -inf, and -inf * 0 is NaN. Differentiable in `logp`.
at::Tensor NextTokenLogProbs(const at::Tensor& logp, const at::Tensor& input,
                             const at::Tensor& response_mask);

// Σ_t over the response tokens of `token_values` ([N, T-1], masked like
// NextTokenLogProbs): [N]. Entries where mask is 0 are ignored, whatever they hold.
at::Tensor MaskedRowSums(const at::Tensor& token_values, const at::Tensor& mask);

// Per-response-token values (the actor's log-probs: values[i][t] for response token t
// of row i) placed in `packed`'s shifted frame: [N, T-1] float32 on the CPU, 0 outside
// the responses. Error if a row's value count differs from its response length.
absl::StatusOr<at::Tensor> ResponseTokenValues(const PackedRows& packed,
                                               const std::vector<std::vector<float>>& values);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_SEQUENCE_LOGPROBS_H_
