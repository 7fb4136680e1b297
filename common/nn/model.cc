#include "common/nn/model.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {
namespace internal {

// x W^T + b. One float32 row on the CPU (a batch-1 decode step) goes to BLAS's
// matrix-vector product: at::linear sends it to SGEMM, which re-packs the whole weight
// matrix on every call (measured on this model's shapes: ~13 GB/s through SGEMM against
// ~35 GB/s through SGEMV). Same sums in another order.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
      x.numel() == x.size(-1) && !at::GradMode::is_enabled()) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.size(0);
    at::Tensor y = at::mv(weight, x.reshape({x.size(-1)}));
    if (bias.defined()) y.add_(bias);
    return y.view(shape);
  }
  return at::linear(x, weight, bias);
}

namespace {

// rotate_half convention of HF Llama: x = [x1, x2] -> x*cos + [-x2, x1]*sin.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  return x * cos + at::cat({-x2, x1}, -1) * sin;
}

}  // namespace
}  // namespace internal

at::Tensor MaskedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask) {
  if (q.size(2) == 1 && q.device().is_cpu()) {
    // One query per row (a decode step): CPU bmm over B*H tiny matrices runs a slow
    // per-matrix loop, so contract with broadcast multiply-sum instead; the temporaries are
    // the size of the cache, which the step reads anyway.
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
    at::Tensor scores = (q * k).sum(-1, /*keepdim=*/false, at::kFloat) * scale;  // [B,H,S]
    scores =
        scores.masked_fill(mask.squeeze(2).logical_not(), -std::numeric_limits<float>::infinity());
    at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
    return (probs.unsqueeze(-1) * v).sum(-2, /*keepdim=*/true);  // [B,H,1,hd]
  }
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0,
                                          /*is_causal=*/false);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);
#endif
}

at::Tensor ExpandKvHeads(const at::Tensor& kv, int64_t heads) {
  const int64_t b = kv.size(0), kv_heads = kv.size(1), s = kv.size(2), hd = kv.size(3);
  if (kv_heads == heads) return kv;
  // Query head h reads kv head h / rep (HF repeat_kv).
  const int64_t rep = heads / kv_heads;
  return kv.unsqueeze(2).expand({b, kv_heads, rep, s, hd}).reshape({b, heads, s, hd});
}

namespace internal {

class ProjImpl : public torch::nn::Module {
 public:
  ProjImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& opts) {
    weight = register_parameter("weight", torch::empty({out, in}, opts));
    if (bias) this->bias = register_parameter("bias", torch::zeros({out}, opts));
  }
  at::Tensor forward(const at::Tensor& x) { return Linear(x, weight, bias); }
  at::Tensor weight, bias;
};
TORCH_MODULE(Proj);

class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t dim, double eps, const at::TensorOptions& opts) : eps_(eps) {
    weight = register_parameter("weight", torch::ones({dim}, opts));
  }
  // As HF LlamaRMSNorm: normalise in float32, cast back, then scale.
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
    xf = xf * at::rsqrt(var + eps_);
    return weight * xf.to(x.scalar_type());
  }
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RmsNorm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& opts) {
    weight = register_parameter("weight", torch::empty({vocab, dim}, opts));
  }
  at::Tensor forward(const at::Tensor& ids) { return at::embedding(weight, ids); }
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(const ModelConfig& c, const at::TensorOptions& o)
      : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.HeadDim()) {
    // Registration order = HF's __init__ order, so named_parameters() matches HF's.
    const bool bias = c.attention_bias;
    q_proj = register_module("q_proj", Proj(c.hidden_size, heads_ * head_dim_, bias, o));
    k_proj = register_module("k_proj", Proj(c.hidden_size, kv_heads_ * head_dim_, bias, o));
    v_proj = register_module("v_proj", Proj(c.hidden_size, kv_heads_ * head_dim_, bias, o));
    // transformers' Qwen2 hard-codes o_proj without bias; Llama and Qwen3 follow the flag.
    o_proj = register_module(
        "o_proj", Proj(heads_ * head_dim_, c.hidden_size, bias && c.architecture != "qwen2", o));
    if (c.qk_norm) {
      q_norm = register_module("q_norm", RmsNorm(head_dim_, c.rms_norm_eps, o));
      k_norm = register_module("k_norm", RmsNorm(head_dim_, c.rms_norm_eps, o));
    }
  }

  // q [B,H,T,hd], k and v [B,KV,T,hd] of x [B,T,D], RoPE applied.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> Project(const at::Tensor& x, const at::Tensor& cos,
                                                         const at::Tensor& sin) {
    const int64_t b = x.size(0), t = x.size(1);
    at::Tensor q = q_proj(x).view({b, t, heads_, head_dim_});
    at::Tensor k = k_proj(x).view({b, t, kv_heads_, head_dim_});
    at::Tensor v = v_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
    if (q_norm) {
      q = q_norm(q);
      k = k_norm(k);
    }
    q = ApplyRope(q.transpose(1, 2), cos, sin);
    k = ApplyRope(k.transpose(1, 2), cos, sin).contiguous();
    return {q, k, v.contiguous()};
  }

  // The same layer with keys/values kept by `backend` (layer index `layer`).
  at::Tensor ForwardWith(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         AttentionBackend& backend, int64_t layer) {
    const int64_t b = x.size(0), t = x.size(1);
    auto [q, k, v] = Project(x, cos, sin);
    at::Tensor o = backend.Attend(layer, q, k, v);
    return o_proj(o.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
  }

  // x [B,T,D]; cos/sin [B,1,T,hd]; mask [B,1,T,S]. cache_k/cache_v: this layer's cache
  // entries (or null), extended in place.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& mask, at::Tensor* cache_k, at::Tensor* cache_v) {
    const int64_t b = x.size(0), t = x.size(1);
    auto [q, k, v] = Project(x, cos, sin);
    if (cache_k != nullptr) {
      if (cache_k->defined() && cache_k->size(2) > 0) {
        k = at::cat({*cache_k, k}, 2);
        v = at::cat({*cache_v, v}, 2);
      }
      *cache_k = k;
      *cache_v = v;
    }
    at::Tensor o = MaskedAttention(q, ExpandKvHeads(k, heads_), ExpandKvHeads(v, heads_), mask);
    return o_proj(o.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
  }

  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(SelfAttention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& c, const at::TensorOptions& o) {
    gate_proj = register_module("gate_proj", Proj(c.hidden_size, c.intermediate_size, false, o));
    up_proj = register_module("up_proj", Proj(c.hidden_size, c.intermediate_size, false, o));
    down_proj = register_module("down_proj", Proj(c.intermediate_size, c.hidden_size, false, o));
  }
  at::Tensor forward(const at::Tensor& x) { return down_proj(at::silu(gate_proj(x)) * up_proj(x)); }
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& c, const at::TensorOptions& o) {
    self_attn = register_module("self_attn", SelfAttention(c, o));
    mlp = register_module("mlp", Mlp(c, o));
    input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps, o));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps, o));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& mask, at::Tensor* cache_k, at::Tensor* cache_v) {
    at::Tensor h = x + self_attn(input_layernorm(x), cos, sin, mask, cache_k, cache_v);
    return h + mlp(post_attention_layernorm(h));
  }
  at::Tensor ForwardWith(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         AttentionBackend& backend, int64_t layer) {
    at::Tensor h = x + self_attn->ForwardWith(input_layernorm(x), cos, sin, backend, layer);
    return h + mlp(post_attention_layernorm(h));
  }
  SelfAttention self_attn{nullptr};
  Mlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

class DecoderStackImpl : public torch::nn::Module {
 public:
  DecoderStackImpl(const ModelConfig& c, const at::TensorOptions& o) {
    embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, o));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      DecoderLayer layer(c, o);
      layers->push_back(layer);
      typed_layers.push_back(layer);
    }
    norm = register_module("norm", RmsNorm(c.hidden_size, c.rms_norm_eps, o));
  }
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<DecoderLayer> typed_layers;  // the same modules as `layers`, typed
  RmsNorm norm{nullptr};
};

}  // namespace internal

int64_t KvCache::Length() const { return valid.defined() ? valid.size(1) : 0; }

at::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  // Each line mirrors transformers' Python expression; a Python scalar meeting a float32
  // tensor becomes a float32 operand, as the ATen Scalar overloads do here.
  const int64_t dim = c.HeadDim();
  // `1.0 / (base ** x)` is Tensor.__rtruediv__ too.
  at::Tensor inv_freq =
      at::pow(c.rope_theta, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / dim).reciprocal();
  const RopeScaling& r = c.rope_scaling;
  if (r.rope_type != "llama3") return inv_freq;
  const double factor = r.factor, low = r.low_freq_factor, high = r.high_freq_factor;
  const double old_context_len = static_cast<double>(r.original_max_position_embeddings > 0
                                                         ? r.original_max_position_embeddings
                                                         : c.max_position_embeddings);
  const double low_freq_wavelen = old_context_len / low;
  const double high_freq_wavelen = old_context_len / high;
  // `2 * math.pi / inv_freq` is Tensor.__rtruediv__: reciprocal() * scalar.
  at::Tensor wavelen = inv_freq.reciprocal() * (2 * std::numbers::pi);
  at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
  at::Tensor smooth_factor = (wavelen.reciprocal() * old_context_len - low) / (high - low);
  at::Tensor smoothed_inv_freq =
      (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama;
  at::Tensor is_medium_freq =
      (wavelen < high_freq_wavelen).logical_not() * (wavelen > low_freq_wavelen).logical_not();
  return at::where(is_medium_freq, smoothed_inv_freq, inv_freq_llama);
}

CausalLMImpl::CausalLMImpl(const ModelConfig& config) : CausalLMImpl(config, CausalLMOptions{}) {}

CausalLMImpl::CausalLMImpl(const ModelConfig& config, const CausalLMOptions& options)
    : config_(config) {
  absl::Status s = ValidateModelConfig(config);
  TORCH_CHECK(s.ok(), "CausalLM: ", std::string(s.message()));
  TORCH_CHECK(at::isFloatingType(options.dtype), "CausalLM: dtype ", c10::toString(options.dtype),
              " is not a floating-point type");
  const auto opts = at::TensorOptions().dtype(options.dtype).device(options.device);
  model_ = register_module("model", std::make_shared<internal::DecoderStackImpl>(config, opts));
  if (!config.tie_word_embeddings) {
    lm_head_ = register_module("lm_head", std::make_shared<internal::ProjImpl>(
                                              config.hidden_size, config.vocab_size, false, opts));
  }
  inv_freq_ = RopeInverseFrequencies(config);
  if (!options.random_init) return;
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    if (absl::EndsWith(name, "norm.weight")) {
      p.fill_(1.0);
    } else if (absl::EndsWith(name, ".bias")) {
      p.zero_();
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

at::Tensor CausalLMImpl::forward(const at::Tensor& input_ids, const at::Tensor& positions,
                                 const at::Tensor& valid, KvCache* cache) {
  TORCH_CHECK(input_ids.dim() == 2, "CausalLM: input_ids must be [B,T]");
  TORCH_CHECK(positions.sizes() == input_ids.sizes() && valid.sizes() == input_ids.sizes(),
              "CausalLM: positions and valid must have input_ids' shape [B,T]");
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  const int64_t layers = config_.num_hidden_layers;
  const auto device = input_ids.device();
  const int64_t past = cache != nullptr ? cache->Length() : 0;
  if (cache != nullptr) {
    if (past == 0) {
      cache->keys.assign(layers, at::Tensor());
      cache->values.assign(layers, at::Tensor());
    }
    TORCH_CHECK(static_cast<int64_t>(cache->keys.size()) == layers &&
                    static_cast<int64_t>(cache->values.size()) == layers,
                "KvCache: has ", cache->keys.size(), " layers, model has ", layers);
    TORCH_CHECK(past == 0 || cache->valid.size(0) == b, "KvCache: batch ", cache->valid.size(0),
                " != input batch ", b);
  }

  // Which keys each query may read: causal over (cache + input), valid keys only, and
  // always itself, so that a padding query's softmax has a finite row.
  at::Tensor query_valid = valid.to(at::kBool);
  at::Tensor key_valid = past > 0 ? at::cat({cache->valid, query_valid}, 1) : query_valid;
  const int64_t s = past + t;
  auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qi = at::arange(past, s, long_opts).view({t, 1});
  at::Tensor kj = at::arange(0, s, long_opts).view({1, s});
  at::Tensor mask = (kj.le(qi).unsqueeze(0) & key_valid.unsqueeze(1)) | kj.eq(qi).unsqueeze(0);
  mask = mask.unsqueeze(1);  // [B,1,T,S]

  auto [cos, sin] = RopeTables(positions);
  at::Tensor h = model_->embed_tokens(input_ids);
  for (int64_t i = 0; i < layers; ++i) {
    h = model_->typed_layers[i](h, cos, sin, mask, cache ? &cache->keys[i] : nullptr,
                                cache ? &cache->values[i] : nullptr);
  }
  if (cache != nullptr) cache->valid = key_valid;
  return Logits(model_->norm(h));
}

std::pair<at::Tensor, at::Tensor> CausalLMImpl::RopeTables(const at::Tensor& positions) {
  // RoPE tables in float32 as HF computes them, cast to the activation dtype. The
  // frequencies are computed once on the CPU, as transformers does at construction, so
  // CPU and CUDA runs use the same bits.
  const auto device = positions.device();
  auto float_opts = at::TensorOptions().dtype(at::kFloat).device(device);
  if (!inv_freq_on_device_.defined() || inv_freq_on_device_.device() != device) {
    inv_freq_on_device_ = inv_freq_.to(device);
  }
  at::Tensor freqs = positions.to(float_opts).unsqueeze(-1) * inv_freq_on_device_;  // [B,T,hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);                        // [B,1,T,hd]
  const auto act_dtype = model_->embed_tokens->weight.scalar_type();
  return {emb.cos().to(act_dtype), emb.sin().to(act_dtype)};
}

namespace {

// Activation checkpointing of one decoder layer: the forward runs without a graph and
// keeps only the layer's input; backward recomputes the layer with a graph and runs a
// nested (reentrant) backward through it, which accumulates the layer's parameter
// gradients directly and hands back the input's. LibTorch has no checkpoint utility (it
// is Python-only in torch.utils.checkpoint), so this is its reentrant variant by hand.
struct LayerRecompute : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> run;
};

class CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<LayerRecompute> layer) {
    ctx->save_for_backward({x});
    at::Tensor y = layer->run(x);
    ctx->saved_data["layer"] = at::IValue::make_capsule(std::move(layer));
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto layer =
        c10::static_intrusive_pointer_cast<LayerRecompute>(ctx->saved_data["layer"].toCapsule());
    at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor y;
    {
      torch::AutoGradMode grad(true);
      y = layer->run(x);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), at::Tensor()};
  }
};

}  // namespace

at::Tensor CausalLMImpl::ForwardHidden(const at::Tensor& input_ids, const at::Tensor& positions,
                                       AttentionBackend& backend, bool checkpoint_layers) {
  TORCH_CHECK(input_ids.dim() == 2, "CausalLM: input_ids must be [B,T]");
  TORCH_CHECK(positions.sizes() == input_ids.sizes(),
              "CausalLM: positions must have input_ids' shape [B,T]");
  auto [cos, sin] = RopeTables(positions);
  at::Tensor h = model_->embed_tokens(input_ids);
  const bool checkpoint = checkpoint_layers && at::GradMode::is_enabled();
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    std::shared_ptr<internal::DecoderLayerImpl> layer = model_->typed_layers[i].ptr();
    if (!checkpoint) {
      h = layer->ForwardWith(h, cos, sin, backend, i);
      continue;
    }
    auto recompute = c10::make_intrusive<LayerRecompute>();
    recompute->run = [layer, cos = cos, sin = sin, &backend, i](const at::Tensor& x) {
      return layer->ForwardWith(x, cos, sin, backend, i);
    };
    h = CheckpointedLayer::apply(h, std::move(recompute));
  }
  return model_->norm(h);
}

at::Tensor CausalLMImpl::LmHeadWeight() const {
  return lm_head_ ? lm_head_->weight : model_->embed_tokens->weight;
}

at::Tensor CausalLMImpl::Logits(const at::Tensor& hidden) {
  return internal::Linear(hidden, LmHeadWeight(), at::Tensor()).to(at::kFloat);
}

std::vector<std::pair<std::string, at::Tensor>> NamedWeights(CausalLM& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

absl::Status LoadWeights(CausalLM& model,
                         const std::vector<std::pair<std::string, at::Tensor>>& weights) {
  try {
    torch::NoGradGuard no_grad;
    std::unordered_map<std::string, const at::Tensor*> by_name;
    for (const auto& [name, tensor] : weights) {
      if (!by_name.emplace(name, &tensor).second) {
        return absl::InvalidArgumentError(absl::StrCat("weights: tensor ", name, " appears twice"));
      }
    }
    auto params = model->named_parameters(/*recurse=*/true);
    for (const auto& item : params) {
      auto it = by_name.find(item.key());
      if (it == by_name.end()) {
        return absl::InvalidArgumentError(absl::StrCat("weights: missing tensor ", item.key()));
      }
      const at::Tensor& src = *it->second;
      if (src.sizes() != item.value().sizes()) {
        return absl::InvalidArgumentError(
            absl::StrCat("weights: tensor ", item.key(), " has shape ", c10::str(src.sizes()),
                         ", the model expects ", c10::str(item.value().sizes())));
      }
    }
    for (const auto& [name, tensor] : weights) {
      if (params.contains(name)) continue;
      const bool tied_head = name == "lm_head.weight" && model->config().tie_word_embeddings;
      if (tied_head || absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
      return absl::InvalidArgumentError(absl::StrCat("weights: unexpected tensor ", name,
                                                     " (not a parameter of this ",
                                                     model->config().architecture, " model)"));
    }
    for (auto& item : params) item.value().copy_(*by_name.at(item.key()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("weights: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace pmdrl
