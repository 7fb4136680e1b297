// The policy: a decoder-only transformer with the Llama / Qwen2 / Qwen3 architecture
// (pre-norm RMSNorm, RoPE with HF's rotate_half convention, grouped-query attention,
// SwiGLU MLP, optional q/k/v bias, optional per-head q/k RMSNorm, optional tied
// embeddings). Parameters carry exactly the names Hugging Face transformers gives them,
// so checkpoints move between the two unchanged.
#ifndef PMDRL_COMMON_NN_MODEL_H_
#define PMDRL_COMMON_NN_MODEL_H_

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"

namespace pmdrl {
namespace internal {
class DecoderStackImpl;  // defined in model.cc
class ProjImpl;
}  // namespace internal

// Per-layer keys/values of already-processed positions, for incremental decoding. Owned
// by the caller; CausalLM::forward appends to it. Keys are stored after RoPE, before the
// grouped-query expansion. Rows of one cache must be decoded together.
struct KvCache {
  std::vector<at::Tensor> keys, values;  // per layer [B, n_kv_heads, T_cached, head_dim]
  at::Tensor valid;                      // [B, T_cached] bool: false = padding, never attended
  int64_t Length() const;                // T_cached (0 for an empty cache)
};

// Where a forward pass stores this step's keys/values and reads the earlier ones: the
// generation engine's KV pool implements it (engine/kv_pool.h), so the model code stays
// the one the learner trains while the engine owns cache layout and decode attention.
class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  // q [B,H,T,hd] after RoPE; k, v [B,KV,T,hd] of this call's tokens (after RoPE for k).
  // Stores k and v, then returns the attention output [B,H,T,hd] of each query over the
  // keys its row may read (causal, its own sequence only), softmax in float32.
  virtual at::Tensor Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v) = 0;
};

// How CausalLM allocates its parameters. random_init = false leaves them uninitialised
// (for a caller that overwrites every one, such as LoadModelDir: it saves the time and
// never touches memory twice).
struct CausalLMOptions {
  at::ScalarType dtype = at::kFloat;  // kFloat, kBFloat16 or kHalf
  at::Device device = at::kCPU;
  bool random_init = true;
};

// Parameter names: model.embed_tokens.weight, model.layers.{i}.{input_layernorm,
// self_attn.{q,k,v,o}_proj, [self_attn.{q,k}_norm], post_attention_layernorm,
// mlp.{gate,up,down}_proj}.weight (+ q/k/v .bias), model.norm.weight, lm_head.weight
// (absent when tied), and model.layers.{i}.self_attn.o_proj.bias when attention_bias is set
// for llama / qwen3 (as transformers does). Initialised with normal(0, 0.02) for linears
// and embeddings, ones for norms and zeros for biases, from Torch's global RNG
// (deterministic after manual_seed).
// Not thread-safe: callers serialise forward calls and weight updates.
class CausalLMImpl : public torch::nn::Module {
 public:
  // `config` must pass ValidateModelConfig (checked: throws c10::Error otherwise, so
  // construct through LoadModelDir or after validating).
  explicit CausalLMImpl(const ModelConfig& config);
  // Parameters of options.dtype on options.device, allocated there directly (no float32
  // CPU copy first). With random_init the values are drawn as above, in that dtype.
  CausalLMImpl(const ModelConfig& config, const CausalLMOptions& options);

  // input_ids [B,T] int64; positions [B,T] int64 (RoPE positions); valid [B,T] bool (false
  // for padding tokens). Attention is causal over (cached positions + this input),
  // restricted to valid keys; a padding query attends to itself only, so its (meaningless)
  // row stays finite. If cache != nullptr, this input's keys/values/valid are appended.
  // Computes in the parameters' dtype, except as transformers does: RMSNorm statistics,
  // RoPE tables and attention softmax in float32. Returns float32 logits [B,T,vocab]
  // (the lm_head product in the parameters' dtype, then cast, as transformers does).
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& positions,
                     const at::Tensor& valid, KvCache* cache = nullptr);

  // The decoder stack with the keys/values kept by `backend`: input_ids and positions
  // [B,T] int64. Returns the final-norm hidden states [B,T,D] in the parameters' dtype;
  // Logits() turns the rows that need it into logits. checkpoint_layers (with grad
  // mode on): activation checkpointing per decoder layer, keeping only each layer's
  // input and recomputing the layer in backward (the same gradients, one more forward);
  // `backend` is then called again during backward, so it must outlive it and answer
  // the same way.
  at::Tensor ForwardHidden(const at::Tensor& input_ids, const at::Tensor& positions,
                           AttentionBackend& backend, bool checkpoint_layers = false);
  // Float32 logits [..., vocab] of final-norm hidden states [..., D] (lm_head in the
  // parameters' dtype, then cast, as forward does).
  at::Tensor Logits(const at::Tensor& hidden);
  // The output projection [vocab, D]: lm_head.weight, or the embedding table when tied.
  at::Tensor LmHeadWeight() const;

  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  std::shared_ptr<internal::DecoderStackImpl> model_;  // "model": embed_tokens, layers, norm
  std::shared_ptr<internal::ProjImpl> lm_head_;        // "lm_head"; null when tied
  at::Tensor inv_freq_;            // RoPE inverse frequencies, float32 on the CPU (never cast)
  at::Tensor inv_freq_on_device_;  // inv_freq_ copied to the device of the last forward

  // RoPE cos/sin [B,1,T,hd] in the activation dtype for positions [B,T].
  std::pair<at::Tensor, at::Tensor> RopeTables(const at::Tensor& positions);
};
TORCH_MODULE(CausalLM);

// RoPE inverse frequencies [head_dim / 2], float32 on the CPU, computed with the same
// float32 tensor operations as transformers' _compute_default_rope_parameters and (for
// rope_scaling llama3) _compute_llama3_parameters, so they agree bit for bit.
at::Tensor RopeInverseFrequencies(const ModelConfig& config);

// Attention of q [B,H,T,hd] over k, v [B,H,S,hd] where mask [B,1,T,S] (bool) is true;
// every query row must allow at least one key. Softmax in float32, as HF's eager path.
at::Tensor MaskedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask);
// Grouped-query attention's key/value heads [B,KV,S,hd] repeated to [B,heads,S,hd] (query
// head h reads kv head h / (heads / KV)), as HF's repeat_kv.
at::Tensor ExpandKvHeads(const at::Tensor& kv, int64_t heads);

// HF-named parameters in a stable order (named_parameters order), tied lm_head omitted.
// The tensors are the parameters themselves (not copies).
std::vector<std::pair<std::string, at::Tensor>> NamedWeights(CausalLM& model);

// Copies tensors into the model by exact name; every parameter must be present with the
// exact shape (the error names the tensor). Converts dtype and device to the parameter's.
// Ignores "lm_head.weight" of a tied model and legacy "*.rotary_emb.inv_freq" buffers; any
// other unknown name is an error. Runs under NoGradGuard. On error the model may be
// partially updated.
absl::Status LoadWeights(CausalLM& model,
                         const std::vector<std::pair<std::string, at::Tensor>>& weights);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_MODEL_H_
