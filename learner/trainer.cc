#include "learner/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "common/nn/sampler.h"
#include "learner/pmd_mean_loss.h"
#include "verifier/grader.h"

namespace pmdrl {

ModelConfig ModelConfigFromConfig(const Config& config, const Tokenizer& tokenizer) {
  ModelConfig m;
  m.architecture = config.model.architecture;
  m.vocab_size = tokenizer.VocabSize();
  m.hidden_size = config.model.hidden_size;
  m.intermediate_size = config.model.intermediate_size;
  m.num_hidden_layers = config.model.num_layers;
  m.num_attention_heads = config.model.num_heads;
  m.num_key_value_heads = config.model.num_kv_heads;
  m.max_position_embeddings = config.model.max_position;
  m.rope_theta = config.model.rope_theta;
  m.tie_word_embeddings = config.model.tie_embeddings;
  m.attention_bias = config.model.architecture == "qwen2";
  m.qk_norm = config.model.architecture == "qwen3";
  m.bos_token_id = tokenizer.BosId();
  m.eos_token_id = tokenizer.EosId();
  m.pad_token_id = tokenizer.PadId();
  return m;
}

namespace {

// A batch of (prompt ++ response) rows, right-padded, with the response positions marked
// in the shifted frame: column t of `response_mask` says whether token t+1 of the row is
// a response token, i.e. whether logits at t score a response token.
struct PackedRows {
  torch::Tensor input;          // [N, T] int64
  torch::Tensor positions;      // [N, T] int64
  torch::Tensor valid;          // [N, T] bool
  torch::Tensor response_mask;  // [N, T-1] float
  int64_t tokens = 0;
};

PackedRows Pack(const std::vector<const std::vector<int32_t>*>& prompts,
                const std::vector<const std::vector<int32_t>*>& responses, int64_t pad) {
  const int64_t n = static_cast<int64_t>(prompts.size());
  int64_t t_max = 0;
  for (int64_t i = 0; i < n; ++i) {
    t_max = std::max<int64_t>(t_max, prompts[i]->size() + responses[i]->size());
  }
  PackedRows p;
  p.input = torch::full({n, t_max}, pad, torch::kInt64);
  p.positions = torch::zeros({n, t_max}, torch::kInt64);
  p.valid = torch::zeros({n, t_max}, torch::kBool);
  p.response_mask = torch::zeros({n, std::max<int64_t>(t_max - 1, 1)}, torch::kFloat32);
  auto in = p.input.accessor<int64_t, 2>();
  auto pos = p.positions.accessor<int64_t, 2>();
  auto val = p.valid.accessor<bool, 2>();
  auto rm = p.response_mask.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t np = static_cast<int64_t>(prompts[i]->size());
    const int64_t nr = static_cast<int64_t>(responses[i]->size());
    for (int64_t t = 0; t < np + nr; ++t) {
      in[i][t] = t < np ? (*prompts[i])[t] : (*responses[i])[t - np];
      pos[i][t] = t;
      val[i][t] = true;
    }
    for (int64_t t = np - 1; t < np + nr - 1; ++t) rm[i][t] = 1.0f;
    p.tokens += np + nr;
  }
  return p;
}

// Per-token log-probs of each row's next token: [N, T-1]. Positions outside the
// response are set to 0: they would otherwise hold log p(PAD) = -inf, and -inf * 0 is NaN.
torch::Tensor NextTokenLogProbs(const torch::Tensor& logp, const torch::Tensor& input,
                                const torch::Tensor& response_mask) {
  const int64_t t = input.size(1);
  torch::Tensor lp = logp.narrow(1, 0, t - 1);
  torch::Tensor next = input.narrow(1, 1, t - 1).unsqueeze(-1);
  torch::Tensor token_lp = lp.gather(2, next).squeeze(-1);
  return torch::where(response_mask > 0, token_lp, torch::zeros_like(token_lp));
}

}  // namespace

struct Trainer::Impl {
  Config config;
  CausalLM model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  int64_t steps = 0;
  Baseline baseline = Baseline::kMean;
  LengthNorm norm = LengthNorm::kTokens;
  std::vector<int64_t> never_sampled;
  double temperature = 1.0;
  Sampler eval_sampler{0};

  void SetLr(double lr) {
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
  }

  double ScheduledLr() const {
    const double base = config.learner.lr;
    const int64_t w = config.learner.warmup_steps;
    if (w <= 0 || steps >= w) return base;
    return base * static_cast<double>(steps + 1) / static_cast<double>(w);
  }

  double ClipAndNorm(double clip) {
    std::vector<torch::Tensor> params = model->parameters();
    double max_norm = clip > 0 ? clip : std::numeric_limits<double>::infinity();
    return torch::nn::utils::clip_grad_norm_(params, max_norm);
  }
};

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& config,
                                                         const Tokenizer& tokenizer,
                                                         const std::string& model_dir) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  torch::set_num_threads(static_cast<int>(config.learner.threads));
  if (!model_dir.empty()) {
    absl::StatusOr<CausalLM> m = LoadModelDir(model_dir);
    if (!m.ok()) return m.status();
    impl->model = *std::move(m);
    if (impl->model->config().vocab_size != tokenizer.VocabSize()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model ", model_dir, " has vocab_size ", impl->model->config().vocab_size,
                       " but the task's tokenizer has ", tokenizer.VocabSize()));
    }
  } else {
    ModelConfig mc = ModelConfigFromConfig(config, tokenizer);
    absl::Status s = ValidateModelConfig(mc);
    if (!s.ok()) return s;
    torch::manual_seed(config.run.seed);
    impl->model = CausalLM(mc);
  }
  impl->model->train();
  impl->optimizer = std::make_unique<torch::optim::AdamW>(
      impl->model->parameters(),
      torch::optim::AdamWOptions(config.learner.lr).weight_decay(config.learner.weight_decay));
  absl::StatusOr<Baseline> b = ParseBaseline(config.learner.baseline);
  if (!b.ok()) return b.status();
  absl::StatusOr<LengthNorm> n = ParseLengthNorm(config.learner.length_norm);
  if (!n.ok()) return n.status();
  impl->baseline = *b;
  impl->norm = *n;
  impl->never_sampled = NeverSampledTokens(impl->model->config());
  impl->temperature = config.actor.temperature > 0 ? config.actor.temperature : 1.0;
  impl->eval_sampler = Sampler(config.run.seed ^ 0x5eed5eedULL);
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

absl::StatusOr<UpdateStats> Trainer::Update(const std::vector<v1::Group>& groups,
                                            uint64_t version) {
  auto start = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  UpdateStats stats;
  if (groups.empty()) return absl::InvalidArgumentError("Update: empty rollout batch");

  // Per-completion inputs, in group order.
  struct Row {
    const std::vector<int32_t>* prompt;
    const v1::Completion* completion;
    std::vector<int32_t> response;
    double logp_old = 0;
    double advantage = 0;
    bool sampled_now = false;  // sampled by the weights the learner holds now
  };
  std::vector<std::vector<int32_t>> prompts(groups.size());
  std::vector<std::vector<Row>> rows(groups.size());
  double reward_sum = 0, staleness_sum = 0;
  int64_t mixed = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const v1::Group& group = groups[g];
    prompts[g].assign(group.prompt_tokens().begin(), group.prompt_tokens().end());
    std::vector<double> rewards;
    for (const v1::Completion& c : group.completions()) rewards.push_back(c.reward());
    absl::StatusOr<std::vector<double>> adv = GroupAdvantages(rewards, m.baseline);
    if (!adv.ok()) return adv.status();
    if (AllRewardsEqual(rewards)) {
      stats.equal_reward_groups++;
    } else {
      mixed++;
    }
    staleness_sum += static_cast<double>(version - group.policy_version());
    for (int c = 0; c < group.completions_size(); ++c) {
      const v1::Completion& comp = group.completions(c);
      Row r;
      r.prompt = &prompts[g];
      r.completion = &comp;
      r.response.assign(comp.tokens().begin(), comp.tokens().end());
      for (float lp : comp.logprobs()) r.logp_old += lp;
      r.advantage = (*adv)[c];
      r.sampled_now = group.policy_version() == version;
      reward_sum += comp.reward();
      rows[g].push_back(std::move(r));
      stats.completions++;
      stats.response_tokens += comp.tokens_size();
    }
  }
  stats.mean_reward = reward_sum / static_cast<double>(stats.completions);
  stats.mixed_fraction = static_cast<double>(mixed) / static_cast<double>(groups.size());
  stats.staleness_mean = staleness_sum / static_cast<double>(groups.size());

  try {
    m.model->train();
    const int64_t n_mini =
        std::min<int64_t>(m.config.learner.mini_batches, static_cast<int64_t>(groups.size()));
    const bool recompute = m.config.learner.old_logprobs == "recompute";
    double mismatch_sum = 0, delta_sum = 0, entropy_sum = 0;
    int64_t mismatch_tokens = 0, delta_count = 0, entropy_tokens = 0;

    // Slices of the groups: mini-batch k holds groups [bounds[k], bounds[k+1]).
    std::vector<size_t> bounds;
    for (int64_t k = 0; k <= n_mini; ++k) bounds.push_back(groups.size() * k / n_mini);
    auto gather_rows = [&](size_t lo, size_t hi) {
      std::vector<Row*> out;
      for (size_t g = lo; g < hi; ++g) {
        for (Row& r : rows[g]) out.push_back(&r);
      }
      return out;
    };
    auto pack = [&](const std::vector<Row*>& rs) {
      std::vector<const std::vector<int32_t>*> p, r;
      for (Row* row : rs) {
        p.push_back(row->prompt);
        r.push_back(&row->response);
      }
      return Pack(p, r, m.model->config().pad_token_id >= 0 ? m.model->config().pad_token_id : 0);
    };
    // Mean |learner - actor| token log-prob, over rows sampled by the current weights:
    // nonzero means the sampler and the learner disagree about the policy.
    auto mismatch = [&](const std::vector<Row*>& rs, const torch::Tensor& token_lp) {
      auto lp = token_lp.accessor<float, 2>();
      for (size_t i = 0; i < rs.size(); ++i) {
        if (!rs[i]->sampled_now) continue;
        const int64_t np = static_cast<int64_t>(rs[i]->prompt->size());
        for (int t = 0; t < rs[i]->completion->logprobs_size(); ++t) {
          mismatch_sum += std::abs(lp[i][np - 1 + t] - rs[i]->completion->logprobs(t));
          mismatch_tokens++;
        }
      }
    };

    if (recompute) {
      torch::NoGradGuard no_grad;
      std::vector<Row*> all = gather_rows(0, groups.size());
      PackedRows packed = pack(all);
      torch::Tensor logits = m.model->forward(packed.input, packed.positions, packed.valid);
      torch::Tensor token_lp =
          NextTokenLogProbs(SamplingLogProbs(logits, m.temperature, m.never_sampled), packed.input,
                            packed.response_mask);
      mismatch(all, token_lp);
      torch::Tensor sums = (token_lp * packed.response_mask).sum(1);
      auto s = sums.accessor<float, 1>();
      for (size_t i = 0; i < all.size(); ++i) all[i]->logp_old = s[i];
    }

    double loss_sum = 0, norm_sum = 0;
    for (int64_t k = 0; k < n_mini; ++k) {
      std::vector<Row*> rs = gather_rows(bounds[k], bounds[k + 1]);
      PackedRows packed = pack(rs);
      stats.trained_tokens += packed.tokens;
      torch::Tensor logits = m.model->forward(packed.input, packed.positions, packed.valid);
      torch::Tensor logp = SamplingLogProbs(logits, m.temperature, m.never_sampled);
      torch::Tensor token_lp = NextTokenLogProbs(logp, packed.input, packed.response_mask);
      if (k == 0 && !recompute) mismatch(rs, token_lp.detach());
      {
        torch::NoGradGuard no_grad;
        torch::Tensor lp = logp.narrow(1, 0, logp.size(1) - 1);
        torch::Tensor p = lp.exp();
        torch::Tensor ent = -(p * lp.masked_fill(torch::isinf(lp), 0)).sum(-1);
        entropy_sum += (ent * packed.response_mask).sum().item<double>();
        entropy_tokens += static_cast<int64_t>(packed.response_mask.sum().item<double>());
      }
      torch::Tensor logp_new = (token_lp * packed.response_mask).sum(1);
      std::vector<float> old_v, adv_v, len_v;
      double max_len = 0;
      for (Row* r : rs) {
        old_v.push_back(static_cast<float>(r->logp_old));
        adv_v.push_back(static_cast<float>(r->advantage));
        len_v.push_back(static_cast<float>(r->response.size()));
        max_len = std::max<double>(max_len, static_cast<double>(r->response.size()));
      }
      PmdMeanInputs in;
      in.logp_new = logp_new;
      in.logp_old = torch::tensor(old_v);
      in.advantages = torch::tensor(adv_v);
      in.lengths = torch::tensor(len_v);
      {
        torch::NoGradGuard no_grad;
        delta_sum += (logp_new.detach() - in.logp_old).abs().sum().item<double>();
        delta_count += static_cast<int64_t>(rs.size());
      }
      torch::Tensor loss =
          PmdMeanLoss(in, m.config.learner.tau, m.norm, max_len, static_cast<int64_t>(rs.size()));
      m.optimizer->zero_grad();
      loss.backward();
      double norm = m.ClipAndNorm(m.config.learner.grad_clip);
      if (!std::isfinite(norm)) {
        return absl::InternalError(
            absl::StrCat("non-finite gradient norm at optimizer step ", m.steps));
      }
      m.SetLr(m.ScheduledLr());
      m.optimizer->step();
      m.steps++;
      loss_sum += loss.item<double>();
      norm_sum += norm;
    }
    stats.loss = loss_sum / static_cast<double>(n_mini);
    stats.grad_norm = norm_sum / static_cast<double>(n_mini);
    stats.logprob_mismatch =
        mismatch_tokens > 0 ? mismatch_sum / static_cast<double>(mismatch_tokens) : 0.0;
    stats.mean_abs_delta = delta_count > 0 ? delta_sum / static_cast<double>(delta_count) : 0.0;
    stats.entropy = entropy_tokens > 0 ? entropy_sum / static_cast<double>(entropy_tokens) : 0.0;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("update failed: ", e.what_without_backtrace()));
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

EvalResult Trainer::Evaluate(const std::vector<PromptItem>& items, int64_t max_new_tokens,
                             int64_t pass_k) {
  Impl& m = *impl_;
  EvalResult result;
  auto grader = GraderForTask("arith");
  std::vector<std::vector<int32_t>> prompts;
  for (const PromptItem& it : items) prompts.push_back(it.tokens);
  SamplingParams params;
  params.max_new_tokens = max_new_tokens;
  params.stop_tokens = {m.model->config().eos_token_id};
  params.temperature = 0;
  CharTokenizer tokenizer;
  auto correct = [&](const Sample& s, const PromptItem& it) {
    std::string text = tokenizer.Decode(s.tokens, /*skip_special=*/true);
    Deadline deadline(std::chrono::milliseconds(1000));
    return (*grader)(text, it.reference, deadline).verdict == Verdict::kCorrect;
  };
  // Chunks keep the KV cache small.
  constexpr size_t kChunk = 256;
  int64_t greedy_ok = 0, pass_ok = 0;
  for (size_t lo = 0; lo < prompts.size(); lo += kChunk) {
    size_t hi = std::min(prompts.size(), lo + kChunk);
    std::vector<std::vector<int32_t>> chunk(prompts.begin() + lo, prompts.begin() + hi);
    auto greedy = m.eval_sampler.Generate(m.model, chunk, 1, params);
    for (size_t i = 0; i < chunk.size(); ++i) greedy_ok += correct(greedy[i][0], items[lo + i]);
    if (pass_k > 0) {
      SamplingParams sp = params;
      sp.temperature = m.temperature;
      sp.top_p = m.config.actor.top_p;
      auto samples = m.eval_sampler.Generate(m.model, chunk, pass_k, sp);
      for (size_t i = 0; i < chunk.size(); ++i) {
        bool any = false;
        for (const Sample& s : samples[i]) any = any || correct(s, items[lo + i]);
        pass_ok += any;
      }
    }
  }
  m.model->train();
  result.greedy_accuracy = static_cast<double>(greedy_ok) / static_cast<double>(items.size());
  if (pass_k > 0)
    result.pass_at_k = static_cast<double>(pass_ok) / static_cast<double>(items.size());
  return result;
}

std::shared_ptr<const WeightSnapshot> Trainer::Snapshot(uint64_t version) {
  auto snap = std::make_shared<WeightSnapshot>();
  snap->version = version;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : NamedWeights(impl_->model)) {
    torch::Tensor c = t.detach().to(torch::kFloat32).contiguous().cpu();
    snap->names.push_back(name);
    snap->shapes.emplace_back(c.sizes().begin(), c.sizes().end());
    snap->data.emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  return snap;
}

const ModelConfig& Trainer::model_config() const { return impl_->model->config(); }

absl::Status Trainer::Save(const std::string& dir) {
  absl::Status s = SaveModelDir(impl_->model, dir);
  if (!s.ok()) return s;
  try {
    torch::save(*impl_->optimizer, (std::filesystem::path(dir) / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("saving optimizer state to ", dir, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::LoadOptimizer(const std::string& dir) {
  std::string path = (std::filesystem::path(dir) / "optimizer.pt").string();
  try {
    torch::load(*impl_->optimizer, path);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading optimizer state ", path, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

int64_t Trainer::optimizer_steps() const { return impl_->steps; }
void Trainer::set_optimizer_steps(int64_t steps) { impl_->steps = steps; }

absl::StatusOr<double> Trainer::SupervisedStep(const std::vector<std::vector<int32_t>>& prompts,
                                               const std::vector<std::vector<int32_t>>& targets,
                                               double lr) {
  Impl& m = *impl_;
  try {
    m.model->train();
    std::vector<const std::vector<int32_t>*> p, r;
    for (size_t i = 0; i < prompts.size(); ++i) {
      p.push_back(&prompts[i]);
      r.push_back(&targets[i]);
    }
    PackedRows packed =
        Pack(p, r, m.model->config().pad_token_id >= 0 ? m.model->config().pad_token_id : 0);
    torch::Tensor logits = m.model->forward(packed.input, packed.positions, packed.valid);
    torch::Tensor token_lp = NextTokenLogProbs(SamplingLogProbs(logits, 1.0, m.never_sampled),
                                               packed.input, packed.response_mask);
    torch::Tensor loss = -(token_lp * packed.response_mask).sum() / packed.response_mask.sum();
    m.optimizer->zero_grad();
    loss.backward();
    m.ClipAndNorm(1.0);
    m.SetLr(lr);
    m.optimizer->step();
    m.steps++;
    return loss.item<double>();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("supervised step: ", e.what_without_backtrace()));
  }
}

}  // namespace pmdrl
