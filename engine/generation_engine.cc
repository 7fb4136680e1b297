#include "engine/generation_engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/nn/device.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "engine/kv_pool.h"
#include "engine/token_sampler.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

// Upper bounds that catch a misplaced value rather than limit a real workload.
constexpr int64_t kMaxRows = 65536;
constexpr int64_t kMaxContext = 1 << 20;
constexpr int64_t kDefaultPromptRoom = 512;
// Padded prompt tokens per prefill forward: bounds its activations (and attention scores).
constexpr int64_t kPrefillTokens = 4096;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  absl::StatusOr<at::ScalarType> dtype = DtypeFromName(name);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.dtype=", name, ": expected float32, bfloat16 or float16"));
  }
  return dtype;
}

int64_t ContextOf(const EngineOptions& o) {
  return o.max_context > 0 ? o.max_context : kDefaultPromptRoom + o.max_new_tokens;
}

// See EngineOptions::threads. OpenBLAS is found at run time: a LibTorch built on
// another BLAS (MKL in pip's wheels) simply has no such symbol. Applied before every
// step, not once: LibTorch re-initialises thread settings lazily (measured: set once at
// construction, prefill ran at a third of the speed).
// `sampling`: the token sampler's element-wise passes over [rows, vocab] logits, which
// only Torch's pool parallelises; no BLAS product runs meanwhile, so Torch gets the
// threads for that phase (measured on the 0.5B shape at 64 rows: sampling was 31% of a
// float32 step on one Torch thread).
void ApplyThreads(int64_t threads, at::ScalarType dtype, bool sampling = false) {
  if (threads <= 0) return;
  using SetThreads = void (*)(int);
  using GetThreads = int (*)();
  static const auto set_blas =
      reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  static const auto get_blas =
      reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  const bool blas_products = dtype == at::kFloat && set_blas != nullptr;
  const int torch_threads = blas_products && !sampling ? 1 : static_cast<int>(threads);
  const int blas_threads = blas_products ? static_cast<int>(threads) : 1;
  if (at::get_num_threads() != torch_threads) at::set_num_threads(torch_threads);
  if (set_blas != nullptr && (get_blas == nullptr || get_blas() != blas_threads)) {
    set_blas(blas_threads);
  }
}

}  // namespace

absl::Status CheckEngineOptions(const EngineOptions& o) {
  if (absl::StatusOr<at::ScalarType> d = ParseDtype(o.dtype); !d.ok()) return d.status();
  if (o.max_rows < 1 || o.max_rows > kMaxRows) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.max_rows=", o.max_rows, ": must be in [1, ", kMaxRows, "]"));
  }
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.max_new_tokens=", o.max_new_tokens, ": must be >= 1"));
  }
  if (o.max_context < 0 || o.max_context > kMaxContext) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.max_context=", o.max_context, ": must be in [0, ", kMaxContext, "]"));
  }
  if (o.threads < 0 || o.threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.threads=", o.threads, ": must be in [1, 1024]"));
  }
  if (o.sync_every < 0 || o.sync_every > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("sync_every=", o.sync_every, ": must be in [0, 64]"));
  }
  if (o.top_p <= 0 || o.top_p > 1) {
    return absl::InvalidArgumentError(absl::StrCat("actor.top_p=", o.top_p, ": must be in (0, 1]"));
  }
  const int64_t sync = o.sync_every > 0 ? o.sync_every : 4;
  if (ContextOf(o) < o.max_new_tokens + sync + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "actor.max_context=", o.max_context, ": leaves no room for a prompt beside ",
        "actor.max_new_tokens=", o.max_new_tokens, " (needs > ", o.max_new_tokens + sync, ")"));
  }
  return absl::OkStatus();
}

struct GenerationEngine::Impl {
  // A completion: waiting for a slot, or decoding in one.
  struct Row {
    uint64_t group = 0;    // key into groups
    int64_t index = 0;     // which of the group's n completions
    int64_t position = 0;  // where its last sampled token goes as the next input
    RolloutSample sample;
  };
  struct Group {
    GroupRequest request;
    std::vector<RolloutSample> samples;
    int64_t remaining = 0;  // rows not finished
    bool started = false;
    Clock::time_point start;
  };

  Impl(const ModelConfig& c, const EngineOptions& o, at::ScalarType dtype, c10::Device dev)
      : config(c),
        options(o),
        device(dev),
        dtype(dtype),
        sync_every(o.sync_every > 0 ? o.sync_every : (dev.is_cpu() ? 1 : 4)),
        model(c, CausalLMOptions{dtype, dev, /*random_init=*/false}),
        pool(c, o.max_rows, ContextOf(o), dtype, dev),
        sampler(TokenSamplerOptions{o.temperature, o.top_p, NeverSampledTokens(c), o.seed}, dev),
        rows(o.max_rows),
        free_slots() {
    model->eval();
    for (int64_t s = o.max_rows - 1; s >= 0; --s) free_slots.push_back(s);
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(dev);
    next_token = at::zeros({o.max_rows}, long_opts);
    next_position = at::zeros({o.max_rows}, long_opts);
  }

  int64_t LongestPrompt() const { return pool.capacity() - options.max_new_tokens - sync_every; }
  bool IsStop(int32_t token) const {
    const std::vector<int64_t>& stop = options.stop_tokens;
    return std::find(stop.begin(), stop.end(), token) != stop.end();
  }

  // Appends one sampled token to the row in `slot`; true when the row is complete.
  bool Append(Row& row, int32_t token, float logprob) {
    row.sample.tokens.push_back(token);
    row.sample.logprobs.push_back(logprob);
    ++stats.tokens;
    if (IsStop(token)) {
      row.sample.stopped = true;
      return true;
    }
    return static_cast<int64_t>(row.sample.tokens.size()) >= options.max_new_tokens;
  }

  // Moves a complete row out of its slot into its group; returns the group when done.
  void Finish(int64_t slot, std::vector<FinishedGroup>* out) {
    Row& row = *rows[slot];
    Group& g = groups.at(row.group);
    g.samples[row.index] = std::move(row.sample);
    const uint64_t id = row.group;
    rows[slot].reset();
    free_slots.push_back(slot);
    if (--g.remaining == 0) {
      FinishedGroup done;
      done.id = g.request.id;
      done.version = version;
      done.samples = std::move(g.samples);
      done.seconds = SecondsSince(g.start);
      out->push_back(std::move(done));
      groups.erase(id);
    }
  }

  // The rows of one group taken into slots together: one prompt, prefilled once.
  struct Admission {
    uint64_t group = 0;
    std::vector<Row> rows;
    std::vector<int64_t> slots;
  };

  // Takes waiting rows into free slots and prefills their prompts, several prompts per
  // forward pass (right-padded to the longest, at most kPrefillTokens padded tokens).
  void Admit(std::vector<FinishedGroup>* out) {
    while (!free_slots.empty() && !waiting.empty()) {
      std::vector<Admission> batch;
      int64_t longest = 0;
      while (!free_slots.empty() && !waiting.empty()) {
        const uint64_t gid = waiting.front().group;
        const int64_t len = static_cast<int64_t>(groups.at(gid).request.prompt.size());
        const int64_t padded = std::max(longest, len) * (static_cast<int64_t>(batch.size()) + 1);
        if (!batch.empty() && padded > kPrefillTokens) break;
        longest = std::max(longest, len);
        Admission a;
        a.group = gid;
        while (!free_slots.empty() && !waiting.empty() && waiting.front().group == gid) {
          a.rows.push_back(std::move(waiting.front()));
          waiting.pop_front();
          a.slots.push_back(free_slots.back());
          free_slots.pop_back();
        }
        batch.push_back(std::move(a));
      }
      Prefill(batch, longest, out);
    }
  }

  void Prefill(std::vector<Admission>& batch, int64_t longest, std::vector<FinishedGroup>* out) {
    const auto t0 = Clock::now();
    const int64_t p = static_cast<int64_t>(batch.size());
    std::vector<int64_t> ids(p * longest, 0), lengths, first_slots, row_prompt;
    for (int64_t i = 0; i < p; ++i) {
      Group& g = groups.at(batch[i].group);
      if (!g.started) {
        g.started = true;
        g.start = t0;
      }
      const std::vector<int32_t>& prompt = g.request.prompt;
      std::copy(prompt.begin(), prompt.end(), ids.begin() + i * longest);
      lengths.push_back(static_cast<int64_t>(prompt.size()));
      first_slots.push_back(batch[i].slots[0]);
      for (size_t r = 0; r < batch[i].slots.size(); ++r) row_prompt.push_back(i);
      stats.prefill_tokens += lengths.back();
      ++stats.prefills;
    }
    const auto long_opts = at::TensorOptions().dtype(at::kLong);
    at::Tensor input = at::tensor(ids, long_opts).to(device).view({p, longest});
    at::Tensor positions = at::arange(longest, input.options()).expand({p, longest});
    // Right padding: a prompt's own positions come first, so causal attention never lets
    // them see padding; the padding's keys land past the prompt in its slot, where the
    // first decode steps overwrite them before anything reads them.
    pool.BeginPrefill(first_slots, longest);
    at::Tensor hidden = model->ForwardHidden(input, positions, pool);  // [P,L,D]
    const at::Tensor prompt_lengths = at::tensor(lengths, long_opts).to(device);
    at::Tensor last = prompt_lengths - 1;
    at::Tensor logits = model->Logits(
        hidden.gather(1, last.view({p, 1, 1}).expand({p, 1, hidden.size(2)})).squeeze(1));
    std::vector<int64_t> all_slots;
    for (int64_t i = 0; i < p; ++i) {
      for (size_t r = 1; r < batch[i].slots.size(); ++r) {
        pool.CopySlot(batch[i].slots[0], batch[i].slots[r], lengths[i]);
      }
      all_slots.insert(all_slots.end(), batch[i].slots.begin(), batch[i].slots.end());
    }
    // One draw per row: rows of a prompt share its logits.
    at::Tensor which = at::tensor(row_prompt, long_opts).to(device);
    auto [tokens, logprobs] = sampler.Sample(logits.index_select(0, which));
    at::Tensor slot_index = at::tensor(all_slots, long_opts).to(device);
    next_token.index_copy_(0, slot_index, tokens);
    next_position.index_copy_(0, slot_index, prompt_lengths.index_select(0, which));
    tokens = tokens.cpu();
    logprobs = logprobs.cpu();
    auto tok = tokens.accessor<int64_t, 1>();
    auto lp = logprobs.accessor<float, 1>();
    int64_t k = 0;
    for (int64_t i = 0; i < p; ++i) {
      for (size_t r = 0; r < batch[i].slots.size(); ++r, ++k) {
        const int64_t s = batch[i].slots[r];
        rows[s] = std::move(batch[i].rows[r]);
        rows[s]->position = lengths[i];
        if (Append(*rows[s], static_cast<int32_t>(tok[k]), lp[k])) Finish(s, out);
      }
    }
    stats.prefill_seconds += SecondsSince(t0);
  }

  // sync_every decode steps over the active rows, then one look at their tokens.
  void Decode(std::vector<FinishedGroup>* out) {
    std::vector<int64_t> active;
    int64_t max_position = 0;
    for (int64_t s = 0; s < options.max_rows; ++s) {
      if (rows[s]) {
        active.push_back(s);
        max_position = std::max(max_position, rows[s]->position);
      }
    }
    if (active.empty()) return;
    const auto t0 = Clock::now();
    const int64_t b = static_cast<int64_t>(active.size());
    at::Tensor slot_index = at::tensor(active, at::TensorOptions().dtype(at::kLong)).to(device);
    std::vector<at::Tensor> step_tokens, step_logprobs;
    for (int64_t step = 0; step < sync_every; ++step) {
      at::Tensor ids = next_token.index_select(0, slot_index);
      at::Tensor positions = next_position.index_select(0, slot_index);
      pool.BeginDecode(slot_index, positions, active, max_position + step);
      at::Tensor hidden = model->ForwardHidden(ids.view({b, 1}), positions.view({b, 1}), pool);
      at::Tensor logits = model->Logits(hidden.select(1, 0));  // [B,V]
      const auto t_sample = Clock::now();
      // A few rows sample faster than the pool switch costs.
      const bool wide = b >= 8;
      if (wide) ApplyThreads(options.threads, dtype, /*sampling=*/true);
      auto [tokens, logprobs] = sampler.Sample(logits);
      if (wide) ApplyThreads(options.threads, dtype);
      stats.sample_seconds += SecondsSince(t_sample);
      next_token.index_copy_(0, slot_index, tokens);
      next_position.index_add_(0, slot_index, at::ones_like(positions));
      step_tokens.push_back(tokens);
      step_logprobs.push_back(logprobs);
      ++stats.steps;
      stats.row_steps += b;
    }
    at::Tensor tokens = at::stack(step_tokens, 1).cpu();  // [B, steps]
    at::Tensor logprobs = at::stack(step_logprobs, 1).cpu();
    auto tok = tokens.accessor<int64_t, 2>();
    auto lp = logprobs.accessor<float, 2>();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t s = active[i];
      Row& row = *rows[s];
      row.position += sync_every;
      for (int64_t step = 0; step < sync_every; ++step) {
        if (Append(row, static_cast<int32_t>(tok[i][step]), lp[i][step])) {
          Finish(s, out);
          break;
        }
      }
    }
    stats.decode_seconds += SecondsSince(t0);
  }

  const ModelConfig config;
  const EngineOptions options;
  const c10::Device device;
  const at::ScalarType dtype;
  const int64_t sync_every;
  CausalLM model;
  KvPool pool;
  TokenSampler sampler;

  std::vector<std::optional<Row>> rows;  // by slot
  std::vector<int64_t> free_slots;       // a stack: low slots first, so active rows stay packed
  std::deque<Row> waiting;
  std::map<uint64_t, Group> groups;  // by internal id
  uint64_t next_group = 0;
  at::Tensor next_token, next_position;  // [max_rows] on the device, by slot

  uint64_t version = 0;
  bool has_weights = false;
  EngineStats stats;
};

GenerationEngine::GenerationEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GenerationEngine::~GenerationEngine() = default;

absl::StatusOr<std::unique_ptr<GenerationEngine>> GenerationEngine::Create(
    const ModelConfig& config, const EngineOptions& options) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  if (absl::Status s = CheckEngineOptions(options); !s.ok()) return s;
  absl::StatusOr<c10::Device> device = TorchDevice("actor.device", options.device);
  if (!device.ok()) return device.status();
  const at::ScalarType dtype = *ParseDtype(options.dtype);
  for (int64_t id : options.stop_tokens) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop token ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  ApplyThreads(options.threads, dtype);
  try {
    return std::unique_ptr<GenerationEngine>(
        new GenerationEngine(std::make_unique<Impl>(config, options, dtype, *device)));
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("building the policy model and a KV pool of ", options.max_rows, " rows x ",
                     ContextOf(options), " positions failed: ", e.what_without_backtrace()));
  }
}

absl::Status GenerationEngine::LoadWeights(uint64_t version,
                                           const std::vector<WeightView>& weights) {
  Impl& m = *impl_;
  if (!m.groups.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weights version ", version, " arrived while ", m.groups.size(),
        " groups are in the engine: drain it first (a group is sampled by one version)"));
  }
  m.has_weights = false;
  m.version = 0;
  try {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    tensors.reserve(weights.size());
    for (const WeightView& w : weights) {
      if (w.data == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("weight '", w.name, "' has no data"));
      }
      // A view of the caller's memory: pmdrl::LoadWeights copies (and converts) it.
      const at::ScalarType dtype = w.dtype == WireDtype::kBfloat16 ? at::kBFloat16 : at::kFloat;
      tensors.emplace_back(w.name, at::from_blob(const_cast<void*>(w.data), w.shape,
                                                 at::TensorOptions().dtype(dtype)));
    }
    absl::Status status = pmdrl::LoadWeights(m.model, tensors);
    if (!status.ok()) {
      return absl::Status(
          status.code(), absl::StrCat("loading weights version ", version, ": ", status.message()));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading weights version ", version, ": ", e.what()));
  }
  m.version = version;
  m.has_weights = true;
  return absl::OkStatus();
}

uint64_t GenerationEngine::version() const { return impl_->version; }
bool GenerationEngine::has_weights() const { return impl_->has_weights; }

absl::Status GenerationEngine::Submit(GroupRequest request) {
  Impl& m = *impl_;
  const auto where = [&] { return absl::StrCat("request ", request.id, ": "); };
  if (request.n < 1 || request.n > kMaxRows) {
    return absl::InvalidArgumentError(
        absl::StrCat(where(), "n = ", request.n, " (must be 1..", kMaxRows, ")"));
  }
  if (request.prompt.empty())
    return absl::InvalidArgumentError(absl::StrCat(where(), "empty prompt"));
  const int64_t len = static_cast<int64_t>(request.prompt.size());
  if (len > m.LongestPrompt()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where(), "prompt of ", len, " tokens does not fit a slot of ", m.pool.capacity(),
        " positions with room for ", m.options.max_new_tokens,
        " new tokens (longest prompt: ", m.LongestPrompt(), "; raise actor.max_context)"));
  }
  for (int64_t t = 0; t < len; ++t) {
    const int32_t id = request.prompt[t];
    if (id < 0 || id >= m.config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "prompt token ", t, " = ", id,
                                                     " is outside [0, ", m.config.vocab_size, ")"));
    }
  }
  const uint64_t gid = m.next_group++;
  Impl::Group& g = m.groups[gid];
  g.samples.resize(request.n);
  g.remaining = request.n;
  for (int64_t i = 0; i < request.n; ++i) {
    Impl::Row row;
    row.group = gid;
    row.index = i;
    m.waiting.push_back(std::move(row));
  }
  g.request = std::move(request);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<FinishedGroup>> GenerationEngine::Step() {
  Impl& m = *impl_;
  if (!m.has_weights) {
    return absl::FailedPreconditionError("no policy weights loaded: nothing to sample from");
  }
  std::vector<FinishedGroup> out;
  try {
    ApplyThreads(m.options.threads, m.dtype);
    torch::NoGradGuard no_grad;
    m.Admit(&out);
    m.Decode(&out);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("generation step failed: ", e.what()));
  }
  return out;
}

void GenerationEngine::Cancel() {
  Impl& m = *impl_;
  m.waiting.clear();
  m.groups.clear();
  m.free_slots.clear();
  for (int64_t s = m.options.max_rows - 1; s >= 0; --s) {
    m.rows[s].reset();
    m.free_slots.push_back(s);
  }
}

bool GenerationEngine::idle() const { return impl_->groups.empty(); }
int64_t GenerationEngine::active_rows() const {
  return impl_->options.max_rows - static_cast<int64_t>(impl_->free_slots.size());
}
int64_t GenerationEngine::waiting_rows() const {
  return static_cast<int64_t>(impl_->waiting.size());
}
int64_t GenerationEngine::max_rows() const { return impl_->options.max_rows; }
int64_t GenerationEngine::longest_prompt() const { return impl_->LongestPrompt(); }
int64_t GenerationEngine::weight_bytes() const {
  int64_t total = 0;
  for (const at::Tensor& p : impl_->model->parameters()) total += p.numel() * p.element_size();
  return total;
}
int64_t GenerationEngine::kv_bytes() const { return impl_->pool.bytes(); }
const EngineStats& GenerationEngine::stats() const { return impl_->stats; }
std::string GenerationEngine::description() const {
  const Impl& m = *impl_;
  return absl::StrFormat("%s %s, %d rows x %d positions (KV %.1f MB), sync every %d step(s)",
                         m.device.str(), m.options.dtype, m.options.max_rows, m.pool.capacity(),
                         m.pool.bytes() / 1e6, m.sync_every);
}

}  // namespace pmdrl
