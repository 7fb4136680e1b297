#include "engine/kv_pool.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace pmdrl {
namespace {

// Softmax attention of grouped queries q [B,KV,Q,hd] over keys/values [B,KV,S,hd], with
// `blocked` [B or 1, 1, Q or 1, S] true where a key may not be read. Scores and softmax in
// float32. One batched matrix product per factor: query heads that share a key/value
// head are rows of the same product, so no key/value is expanded.
//
// On the CPU a batched product runs one small GEMM per (row, head): with few query rows
// per head (decode without much grouping) that per-call cost dominates (measured: 18 ms
// per step for 128 rows of the 2-layer demo model), so there the contraction is a
// broadcast multiply and sum instead, whose temporaries are the size of the keys read.
at::Tensor GroupedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& blocked) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const bool broadcast = q.device().is_cpu() && q.size(-2) <= 2;
  at::Tensor scores =
      broadcast ? (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1, /*keepdim=*/false, at::kFloat)
                : at::matmul(q, k.transpose(-2, -1)).to(at::kFloat);
  scores.mul_(scale).masked_fill_(blocked, -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  if (broadcast) return (probs.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2);
  return at::matmul(probs, v);
}

}  // namespace

KvPool::KvPool(const ModelConfig& config, int64_t slots, int64_t capacity, at::ScalarType dtype,
               at::Device device)
    : slots_(slots),
      capacity_(capacity),
      kv_heads_(config.num_key_value_heads),
      heads_(config.num_attention_heads),
      head_dim_(config.HeadDim()) {
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    keys_.push_back(at::zeros({slots, kv_heads_, capacity, head_dim_}, opts));
    values_.push_back(at::zeros({slots, kv_heads_, capacity, head_dim_}, opts));
  }
}

int64_t KvPool::bytes() const {
  int64_t total = 0;
  for (const at::Tensor& t : keys_) total += t.numel() * t.element_size();
  for (const at::Tensor& t : values_) total += t.numel() * t.element_size();
  return total;
}

void KvPool::BeginPrefill(const std::vector<int64_t>& slots, int64_t length) {
  TORCH_CHECK(!slots.empty() && length > 0 && length <= capacity_, "KvPool: prefill of ", length,
              " positions (", slots_, " slots of ", capacity_, ")");
  for (int64_t slot : slots) {
    TORCH_CHECK(slot >= 0 && slot < slots_, "KvPool: prefill into slot ", slot, " of ", slots_);
  }
  mode_ = Mode::kPrefill;
  prefill_slots_ = at::tensor(slots, at::TensorOptions().dtype(at::kLong)).to(keys_[0].device());
  prefill_rows_ = static_cast<int64_t>(slots.size());
  prefill_length_ = length;
}

void KvPool::BeginDecode(const at::Tensor& slots, const at::Tensor& positions,
                         const std::vector<int64_t>& host_slots, int64_t max_position) {
  TORCH_CHECK(max_position >= 0 && max_position < capacity_, "KvPool: position ", max_position,
              " is past the slot capacity ", capacity_);
  mode_ = Mode::kDecode;
  decode_slots_ = slots;
  decode_positions_ = positions;
  first_slot_ = host_slots.empty() ? -1 : host_slots.front();
  for (size_t i = 1; i < host_slots.size() && first_slot_ >= 0; ++i) {
    if (host_slots[i] != first_slot_ + static_cast<int64_t>(i)) first_slot_ = -1;
  }
  span_ = max_position + 1;
  // Row b may read positions 0..positions[b]; built once per step, shared by the layers.
  at::Tensor cols = at::arange(span_, positions.options());
  decode_mask_ = cols.unsqueeze(0).gt(positions.unsqueeze(1)).view({-1, 1, 1, span_});
}

void KvPool::CopySlot(int64_t from, int64_t to, int64_t length) {
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l]
        .select(0, to)
        .narrow(1, 0, length)
        .copy_(keys_[l].select(0, from).narrow(1, 0, length));
    values_[l]
        .select(0, to)
        .narrow(1, 0, length)
        .copy_(values_[l].select(0, from).narrow(1, 0, length));
  }
}

at::Tensor KvPool::Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(keys_.size()), "KvPool: layer ", layer);
  switch (mode_) {
    case Mode::kPrefill:
      return AttendPrefill(layer, q, k, v);
    case Mode::kDecode:
      return AttendDecode(layer, q, k, v);
    case Mode::kNone:
      break;
  }
  TORCH_CHECK(false, "KvPool: Attend before BeginPrefill/BeginDecode");
}

at::Tensor KvPool::AttendPrefill(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v) {
  const int64_t p = prefill_rows_, t = prefill_length_, rep = heads_ / kv_heads_;
  TORCH_CHECK(q.size(0) == p && q.size(2) == t, "KvPool: prefill expects [", p, ",H,", t, ",hd]");
  keys_[layer].narrow(2, 0, t).index_copy_(0, prefill_slots_, k);
  values_[layer].narrow(2, 0, t).index_copy_(0, prefill_slots_, v);
  // Query heads h = g*rep + r read key/value head g (HF repeat_kv): as rows of one product.
  at::Tensor qg = q.reshape({p, kv_heads_, rep * t, head_dim_});
  at::Tensor pos = at::arange(t, q.options().dtype(at::kLong));
  at::Tensor causal = pos.unsqueeze(0).gt(pos.unsqueeze(1));  // [T,T] true above the diagonal
  at::Tensor blocked = causal.repeat({rep, 1}).view({1, 1, rep * t, t});
  return GroupedAttention(qg, k, v, blocked).reshape({p, heads_, t, head_dim_});
}

at::Tensor KvPool::AttendDecode(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                const at::Tensor& v) {
  const int64_t b = q.size(0), rep = heads_ / kv_heads_;
  TORCH_CHECK(q.size(2) == 1 && decode_slots_.size(0) == b, "KvPool: decode expects [", b,
              ",H,1,hd]");
  at::Tensor& keys = keys_[layer];
  at::Tensor& values = values_[layer];
  using at::indexing::Slice;
  keys.index_put_({decode_slots_, Slice(), decode_positions_}, k.squeeze(2));
  values.index_put_({decode_slots_, Slice(), decode_positions_}, v.squeeze(2));
  at::Tensor rows_k, rows_v;
  if (first_slot_ >= 0) {  // the usual case once the pool is full: a view, no copy
    rows_k = keys.narrow(0, first_slot_, b).narrow(2, 0, span_);
    rows_v = values.narrow(0, first_slot_, b).narrow(2, 0, span_);
  } else {
    rows_k = keys.narrow(2, 0, span_).index_select(0, decode_slots_);
    rows_v = values.narrow(2, 0, span_).index_select(0, decode_slots_);
  }
  at::Tensor qg = q.reshape({b, kv_heads_, rep, head_dim_});
  return GroupedAttention(qg, rows_k, rows_v, decode_mask_).reshape({b, heads_, 1, head_dim_});
}

}  // namespace pmdrl
