// The generation engine's KV cache: keys and values for a fixed number of sequence
// slots, allocated once, read and written in place by the model's attention.
#ifndef PMDRL_ENGINE_KV_POOL_H_
#define PMDRL_ENGINE_KV_POOL_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "common/nn/model.h"

namespace pmdrl {

// Per layer, keys and values [slots, kv_heads, capacity, head_dim] in the model's dtype,
// allocated at construction: no step allocates or concatenates cache memory. A slot holds
// one sequence (prompt + response) at positions 0..capacity-1. Before each forward the
// caller says which slot every batch row belongs to and where its tokens go (Begin*);
// Attend then stores the new keys/values there and attends over positions 0..its own.
// Not thread-safe; owned by the engine.
class KvPool : public AttentionBackend {
 public:
  KvPool(const ModelConfig& config, int64_t slots, int64_t capacity, at::ScalarType dtype,
         at::Device device);

  int64_t slots() const { return slots_; }
  int64_t capacity() const { return capacity_; }
  int64_t bytes() const;  // of every key and value buffer

  // The next forward is the prompts of several sequences, right-padded: input [P,
  // length], positions 0..length-1, row i written into slots[i]. Each query attends
  // causally within its row.
  void BeginPrefill(const std::vector<int64_t>& slots, int64_t length);
  // The next forward is one token per row: row b writes position positions[b] of slot
  // slots[b] and reads positions 0..positions[b]. `slots`/`positions` are int64 [B] on the
  // pool's device; `host_slots` the same slot ids on the host (contiguous runs skip a
  // gather); `max_position` = max(positions).
  void BeginDecode(const at::Tensor& slots, const at::Tensor& positions,
                   const std::vector<int64_t>& host_slots, int64_t max_position);
  // Copies positions [0, length) of slot `from` into slot `to` (a prompt prefilled once
  // shared by the rows of its group).
  void CopySlot(int64_t from, int64_t to, int64_t length);

  at::Tensor Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v) override;

 private:
  at::Tensor AttendPrefill(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                           const at::Tensor& v);
  at::Tensor AttendDecode(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v);

  const int64_t slots_, capacity_, kv_heads_, heads_, head_dim_;
  std::vector<at::Tensor> keys_, values_;  // per layer [slots, kv_heads, capacity, head_dim]

  // Set by Begin*, read by Attend.
  enum class Mode { kNone, kPrefill, kDecode } mode_ = Mode::kNone;
  at::Tensor prefill_slots_;  // [P] int64 on the device
  int64_t prefill_rows_ = 0, prefill_length_ = 0;
  at::Tensor decode_slots_, decode_positions_;
  int64_t first_slot_ = -1;  // >= 0: the rows are slots first_slot_.. in order
  int64_t span_ = 0;         // positions read this step: max_position + 1
  at::Tensor decode_mask_;   // [B,1,1,span] true where a key may not be read
};

}  // namespace pmdrl

#endif  // PMDRL_ENGINE_KV_POOL_H_
