#include "learner/training/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/nn/device.h"
#include "common/nn/logprobs.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "common/nn/weight_snapshot.h"
#include "common/process.h"
#include "learner/training/chunked_logprobs.h"
#include "learner/training/communicator.h"
#include "learner/training/gradient_reducer.h"
#include "learner/training/micro_batch.h"
#include "learner/training/policy_loss.h"
#include "learner/training/sequence_logprobs.h"
#include "learner/training/sharded_adamw.h"
#include "learner/training/trainer_impl.h"

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

ScoredTokens Trainer::Impl::Score(const PackedSequences& packed, PackedSequenceAttention& attention,
                                  bool entropy) {
  torch::Tensor hidden = compute->ForwardHidden(packed.input, packed.positions, attention,
                                                config.learner.activation_checkpointing);
  hidden = hidden.squeeze(0).index_select(0, packed.score_positions);
  ChunkedLogProbs lp =
      ChunkedTokenLogProbs(hidden, compute->LmHeadWeight(), packed.score_targets, temperature,
                           never_sampled, config.learner.logprob_chunk_tokens);
  const PackedRows& frame = packed.frame;
  ScoredTokens out;
  out.token_logp = torch::zeros({frame.response_mask.numel()}, lp.logp.options())
                       .scatter(0, packed.frame_index, lp.logp)
                       .view(frame.response_mask.sizes());
  if (entropy) {
    out.entropy_sum = lp.entropy.sum().item<double>();
    out.entropy_tokens = static_cast<double>(lp.entropy.numel());
  }
  return out;
}

void Trainer::Impl::GradientsToMaster() {
  if (!mixed_precision()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> master = model->parameters(), low = compute->parameters();
  for (size_t i = 0; i < master.size(); ++i) {
    const torch::Tensor& g = low[i].grad();
    master[i].mutable_grad() = g.defined() ? g.to(torch::kFloat) : torch::zeros_like(master[i]);
  }
}

void Trainer::Impl::MasterToCompute() {
  if (!mixed_precision()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> master = model->parameters(), low = compute->parameters();
  for (size_t i = 0; i < master.size(); ++i) low[i].copy_(master[i]);
}

double Trainer::Impl::ClipAndNorm(double clip) {
  std::vector<torch::Tensor> params = model->parameters();
  double max_norm = clip > 0 ? clip : std::numeric_limits<double>::infinity();
  return torch::nn::utils::clip_grad_norm_(params, max_norm);
}

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& config,
                                                         const Tokenizer& tokenizer,
                                                         const std::string& model_dir) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  absl::StatusOr<torch::Device> device =
      TorchDevice("learner.device", config.learner.device, config.learner.rank);
  if (!device.ok()) return device.status();
  impl->device = *device;
  torch::set_num_threads(static_cast<int>(config.learner.threads));
  if (!model_dir.empty()) {
    absl::StatusOr<CausalLM> m = LoadModelDir(model_dir);
    if (!m.ok()) return m.status();
    impl->model = *std::move(m);
    // Checkpoints often pad the embedding table past the tokenizer (Qwen3: 151936 rows
    // for 151669 tokens); the extra rows are never produced by encoding.
    if (impl->model->config().vocab_size < tokenizer.VocabSize()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model ", model_dir, " has vocab_size ", impl->model->config().vocab_size,
                       " but the task's tokenizer has ", tokenizer.VocabSize(), " tokens"));
    }
  } else {
    ModelConfig mc = ModelConfigFromConfig(config, tokenizer);
    absl::Status s = ValidateModelConfig(mc);
    if (!s.ok()) return s;
    torch::manual_seed(config.run.seed);
    impl->model = CausalLM(mc);
  }
  try {
    impl->model->to(impl->device);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("moving the model to ", impl->device.str(), ": ", e.what_without_backtrace()));
  }
  impl->model->train();
  impl->compute = impl->model;
  if (config.learner.dtype == LearnerDtype::kBfloat16) {
    try {
      CausalLMOptions low;
      low.dtype = torch::kBFloat16;
      low.device = impl->device;
      low.random_init = false;
      impl->compute = CausalLM(impl->model->config(), low);
      impl->compute->train();
      impl->MasterToCompute();
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("learner.dtype bfloat16: ", e.what_without_backtrace()));
    }
  }
  impl->optimizer = std::make_unique<torch::optim::AdamW>(
      impl->model->parameters(),
      torch::optim::AdamWOptions(config.learner.lr).weight_decay(config.learner.weight_decay));
  impl->never_sampled = NeverSampledTokens(impl->model->config());
  impl->temperature = config.actor.temperature > 0 ? config.actor.temperature : 1.0;
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

absl::StatusOr<UpdateStats> Trainer::Update(const std::vector<v1::Group>& groups, uint64_t version,
                                            Communicator* comm) {
  auto start = std::chrono::steady_clock::now();
  UpdateStats batch;
  absl::StatusOr<std::vector<v1::RankShare>> shares =
      PlanUpdate(groups, version, comm == nullptr ? 1 : comm->world_size(), &batch);
  if (!shares.ok()) return shares.status();
  if (comm != nullptr) {
    std::vector<std::string> payloads;
    for (v1::RankShare& s : *shares) {
      s.set_update(version + 1);
      payloads.push_back(s.SerializeAsString());
    }
    absl::StatusOr<std::string> own = comm->Scatter(payloads);
    if (!own.ok()) return own.status();
  }
  absl::StatusOr<UpdateStats> stats = TrainShare((*shares)[0], comm);
  if (!stats.ok()) return stats.status();
  stats->mean_reward = batch.mean_reward;
  stats->mixed_fraction = batch.mixed_fraction;
  stats->equal_reward_groups = batch.equal_reward_groups;
  stats->staleness_mean = batch.staleness_mean;
  stats->completions = batch.completions;
  stats->response_tokens = batch.response_tokens;
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

absl::StatusOr<std::vector<v1::RankShare>> Trainer::PlanUpdate(const std::vector<v1::Group>& groups,
                                                               uint64_t version, int world_size,
                                                               UpdateStats* stats) const {
  const Impl& m = *impl_;
  if (groups.empty()) return absl::InvalidArgumentError("Update: empty rollout batch");
  if (world_size < 1) return absl::InvalidArgumentError("PlanUpdate: world_size < 1");
  *stats = UpdateStats();
  // Rows in group order, with their advantages.
  std::vector<std::vector<v1::TrainRow>> rows(groups.size());
  double reward_sum = 0, staleness_sum = 0;
  int64_t mixed = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const v1::Group& group = groups[g];
    std::vector<double> rewards;
    for (const v1::Completion& c : group.completions()) rewards.push_back(c.reward());
    absl::StatusOr<std::vector<double>> adv = LossAdvantages(
        rewards, m.config.learner.loss, m.config.learner.baseline, m.config.learner.tau);
    if (!adv.ok()) return adv.status();
    if (AllRewardsEqual(rewards)) {
      stats->equal_reward_groups++;
    } else {
      mixed++;
    }
    staleness_sum += static_cast<double>(version - group.policy_version());
    for (int c = 0; c < group.completions_size(); ++c) {
      const v1::Completion& comp = group.completions(c);
      v1::TrainRow r;
      *r.mutable_prompt_tokens() = group.prompt_tokens();
      *r.mutable_response_tokens() = comp.tokens();
      *r.mutable_actor_logprobs() = comp.logprobs();
      r.set_advantage((*adv)[c]);
      r.set_sampled_now(group.policy_version() == version);
      reward_sum += comp.reward();
      rows[g].push_back(std::move(r));
      stats->completions++;
      stats->response_tokens += comp.tokens_size();
    }
  }
  stats->mean_reward = reward_sum / static_cast<double>(stats->completions);
  stats->mixed_fraction = static_cast<double>(mixed) / static_cast<double>(groups.size());
  stats->staleness_mean = staleness_sum / static_cast<double>(groups.size());

  // Mini-batch k holds groups [bounds[k], bounds[k+1]); within it, rows go to the
  // least-loaded rank by tokens, longest first (ties by row order: deterministic).
  const int64_t n_mini =
      std::min<int64_t>(m.config.learner.mini_batches, static_cast<int64_t>(groups.size()));
  std::vector<v1::RankShare> shares(world_size);
  for (v1::RankShare& s : shares) s.set_version(version);
  for (int64_t k = 0; k < n_mini; ++k) {
    size_t lo = groups.size() * k / n_mini, hi = groups.size() * (k + 1) / n_mini;
    std::vector<const v1::TrainRow*> mb;
    double max_len = 0;
    for (size_t g = lo; g < hi; ++g) {
      for (const v1::TrainRow& r : rows[g]) {
        mb.push_back(&r);
        max_len = std::max<double>(max_len, r.response_tokens_size());
      }
    }
    std::vector<size_t> order(mb.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto tokens = [&](size_t i) {
      return mb[i]->prompt_tokens_size() + mb[i]->response_tokens_size();
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return tokens(a) > tokens(b); });
    std::vector<int64_t> load(world_size, 0);
    std::vector<std::vector<size_t>> assigned(world_size);
    for (size_t i : order) {
      int best = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      load[best] += tokens(i);
      assigned[best].push_back(i);
    }
    for (int r = 0; r < world_size; ++r) {
      std::sort(assigned[r].begin(), assigned[r].end());  // keep row order within a share
      v1::MiniBatchShare* share = shares[r].add_mini_batches();
      share->set_global_count(static_cast<int64_t>(mb.size()));
      share->set_global_max_length(max_len);
      for (size_t i : assigned[r]) *share->add_rows() = *mb[i];
    }
  }
  return shares;
}

absl::StatusOr<UpdateStats> Trainer::TrainShare(const v1::RankShare& share, Communicator* comm) {
  auto start = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  UpdateStats stats;
  const int64_t pad = m.model->config().pad_token_id >= 0 ? m.model->config().pad_token_id : 0;
  const bool recompute = m.config.learner.old_logprobs == OldLogprobs::kRecompute;
  const bool truncated_is = m.config.learner.importance_weights == ImportanceWeights::kTruncated;
  // One forward pass before the first step serves both π_old (recompute) and the
  // learner's side of the importance weights.
  const bool pre_forward = recompute || truncated_is;
  const bool need_actor_logprobs = !recompute || truncated_is;
  // Per-rank sums, combined across ranks at the end: loss, grad norm, mismatch
  // sum/tokens, |delta| sum/count, entropy sum/tokens, tokens, importance weight sum/count,
  // oversize rows.
  double loss_sum = 0, norm_sum = 0, mismatch_sum = 0, delta_sum = 0, entropy_sum = 0;
  double mismatch_tokens = 0, delta_count = 0, entropy_tokens = 0, trained_tokens = 0;
  double weight_sum = 0, weight_count = 0, oversize = 0;

  // A micro-batch: some rows of a mini-batch, packed into one row of sequences, with
  // what stays fixed through the update (π_old's token log-probs, importance weights).
  struct MicroBatch {
    std::vector<int> rows;  // indices into the mini-batch's rows
    PackedSequences packed;
    torch::Tensor token_old, weights;  // [n, T-1] in packed.frame; [n] or undefined
  };
  auto pack = [&](const v1::MiniBatchShare& mb, const std::vector<int>& rows) {
    std::vector<std::vector<int32_t>> prompts, responses;
    std::vector<const std::vector<int32_t>*> p, r;
    for (int i : rows) {
      const v1::TrainRow& row = mb.rows(i);
      prompts.emplace_back(row.prompt_tokens().begin(), row.prompt_tokens().end());
      responses.emplace_back(row.response_tokens().begin(), row.response_tokens().end());
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      p.push_back(&prompts[i]);
      r.push_back(&responses[i]);
    }
    PackedSequences packed = PackSequences(p, r, pad);
    packed.To(m.device);
    return packed;
  };
  // The actor's per-token log-probs of a micro-batch in its frame, on the device.
  auto actor_token_logprobs = [&](int k, const v1::MiniBatchShare& mb,
                                  const MicroBatch& micro) -> absl::StatusOr<torch::Tensor> {
    std::vector<std::vector<float>> values;
    for (int i : micro.rows) {
      values.emplace_back(mb.rows(i).actor_logprobs().begin(), mb.rows(i).actor_logprobs().end());
    }
    absl::StatusOr<at::Tensor> t = ResponseTokenValues(micro.packed.frame, values);
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("mini-batch ", k, ": actor log-probs: ", t.status().message()));
    }
    return t->to(m.device);
  };
  // Mean |learner - actor| token log-prob over rows sampled by the current weights:
  // nonzero means the sampler and the learner disagree about the policy.
  auto mismatch = [&](const v1::MiniBatchShare& mb, const MicroBatch& micro,
                      const torch::Tensor& token_lp_any) {
    torch::Tensor token_lp = token_lp_any.to(torch::kCPU);
    auto lp = token_lp.accessor<float, 2>();
    for (size_t j = 0; j < micro.rows.size(); ++j) {
      const v1::TrainRow& row = mb.rows(micro.rows[j]);
      if (!row.sampled_now()) continue;
      const int64_t np = row.prompt_tokens_size();
      for (int t = 0; t < row.actor_logprobs_size(); ++t) {
        mismatch_sum += std::abs(lp[j][np - 1 + t] - row.actor_logprobs(t));
        mismatch_tokens++;
      }
    }
  };

  // The products run on the calling thread: OpenBLAS gets the learner's threads.
  SetBlasThreads(static_cast<int>(m.config.learner.threads));
  try {
    m.compute->train();
    const int n_mini = share.mini_batches_size();
    // Every mini-batch is planned and packed once, here, and trained from the same
    // tensors below. Per micro-batch, fixed before any step: π_old's token log-probs (the
    // actor's, or the learner's own) and, with importance_weights truncated, the weights
    // w_j = min(is_cap, exp(Σ_t lp_learner − Σ_t lp_actor)).
    std::vector<std::vector<MicroBatch>> micro_batches(n_mini);
    for (int k = 0; k < n_mini; ++k) {
      const v1::MiniBatchShare& mb = share.mini_batches(k);
      std::vector<int64_t> row_tokens;
      for (const v1::TrainRow& row : mb.rows()) {
        row_tokens.push_back(row.prompt_tokens_size() + row.response_tokens_size());
      }
      MicroBatchPlan plan = PlanMicroBatches(row_tokens, m.config.learner.micro_batch_tokens);
      oversize += static_cast<double>(plan.oversize_rows);
      for (std::vector<int>& rows : plan.batches) {
        MicroBatch micro;
        micro.packed = pack(mb, rows);
        micro.rows = std::move(rows);
        torch::Tensor actor_lp;
        if (need_actor_logprobs) {
          absl::StatusOr<torch::Tensor> a = actor_token_logprobs(k, mb, micro);
          if (!a.ok()) return a.status();
          actor_lp = *std::move(a);
        }
        micro.token_old = actor_lp;
        if (pre_forward) {
          torch::NoGradGuard no_grad;
          PackedSequenceAttention attention(micro.packed.starts);
          ScoredTokens scored = m.Score(micro.packed, attention, /*entropy=*/false);
          if (k == 0) mismatch(mb, micro, scored.token_logp);
          if (recompute) micro.token_old = scored.token_logp;
          if (truncated_is) {
            const torch::Tensor& mask = micro.packed.frame.response_mask;
            torch::Tensor log_w = MaskedRowSums(scored.token_logp, mask).to(torch::kFloat64) -
                                  MaskedRowSums(actor_lp, mask).to(torch::kFloat64);
            micro.weights = log_w.exp().clamp_max(m.config.learner.is_cap);
            weight_sum += micro.weights.sum().item<double>();
            weight_count += static_cast<double>(micro.rows.size());
          }
        }
        micro_batches[k].push_back(std::move(micro));
      }
    }

    if (absl::Status s = m.ShardOptimizer(comm); !s.ok()) return s;
    std::vector<torch::Tensor> params = m.compute->parameters();
    std::unique_ptr<GradientReducer> reducer;
    // ZeRO-2 sums the gradients itself, with a reduce-scatter in its step.
    const bool zero2 = m.sharded != nullptr && m.config.learner.zero_stage == 2;
    if (comm != nullptr && !zero2) {
      reducer = std::make_unique<GradientReducer>(params, comm, m.config.learner.bucket_mb << 20,
                                                  m.config.learner.overlap_allreduce);
    }
    for (int k = 0; k < n_mini; ++k) {
      const v1::MiniBatchShare& mb = share.mini_batches(k);
      if (m.sharded != nullptr) {
        m.sharded->ZeroGrad();
      } else {
        m.optimizer->zero_grad();
      }
      if (m.mixed_precision()) m.compute->zero_grad();
      if (reducer != nullptr) reducer->Begin();
      double loss_value = 0;
      for (size_t j = 0; j < micro_batches[k].size(); ++j) {
        const MicroBatch& micro = micro_batches[k][j];
        const PackedRows& frame = micro.packed.frame;
        trained_tokens += static_cast<double>(micro.packed.tokens);
        // The reducer sends gradients during the last micro-batch's backward only: the
        // earlier ones accumulate locally.
        if (reducer != nullptr) reducer->SetFinalPass(j + 1 == micro_batches[k].size());
        PackedSequenceAttention attention(micro.packed.starts);  // lives through backward
        ScoredTokens scored = m.Score(micro.packed, attention, /*entropy=*/true);
        if (k == 0 && !pre_forward) mismatch(mb, micro, scored.token_logp.detach());
        entropy_sum += scored.entropy_sum;
        entropy_tokens += scored.entropy_tokens;
        std::vector<float> adv_v, len_v;
        for (int i : micro.rows) {
          adv_v.push_back(static_cast<float>(mb.rows(i).advantage()));
          len_v.push_back(static_cast<float>(mb.rows(i).response_tokens_size()));
        }
        PolicyLossInputs in;
        in.token_logp_new = scored.token_logp;
        in.token_logp_old = micro.token_old;
        in.mask = frame.response_mask;
        in.advantages = torch::tensor(adv_v).to(m.device);
        in.lengths = torch::tensor(len_v).to(m.device);
        in.weights = micro.weights;
        PolicyLossOptions opt;
        opt.kind = m.config.learner.loss;
        opt.tau = m.config.learner.tau;
        opt.norm = m.config.learner.length_norm;
        opt.max_length = mb.global_max_length();
        opt.clip_eps = m.config.learner.clip_eps;
        opt.seq_clip_eps = m.config.learner.seq_clip_eps;
        opt.global_count = mb.global_count();
        if (absl::Status s = ValidatePolicyLossInputs(in, opt); !s.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("mini-batch ", k, " of update ", share.update(), ": ", s.message()));
        }
        {
          torch::NoGradGuard no_grad;
          delta_sum += (MaskedRowSums(scored.token_logp.detach(), frame.response_mask) -
                        MaskedRowSums(in.token_logp_old, frame.response_mask))
                           .abs()
                           .sum()
                           .item<double>();
          delta_count += static_cast<double>(micro.rows.size());
        }
        torch::Tensor loss = PolicyLoss(in, opt);
        loss.backward();
        loss_value += loss.item<double>();
      }
      // The buckets went out during the last backward; a rank with no rows still joins
      // every all-reduce, with zero gradients.
      if (reducer != nullptr) {
        if (absl::Status s = reducer->Finish(); !s.ok()) return s;
      } else {
        for (torch::Tensor& t : params) {
          if (!t.grad().defined()) t.mutable_grad() = torch::zeros_like(t);
        }
      }
      double norm = 0;
      if (m.sharded != nullptr) {
        absl::StatusOr<double> n = m.sharded->Step(m.ScheduledLr(), m.config.learner.grad_clip);
        if (!n.ok()) return n.status();
        norm = *n;
      } else {
        m.GradientsToMaster();
        norm = m.ClipAndNorm(m.config.learner.grad_clip);
      }
      if (!std::isfinite(norm)) {
        return absl::InternalError(
            absl::StrCat("non-finite gradient norm at optimizer step ", m.steps));
      }
      if (m.sharded == nullptr) {
        m.SetLr(m.ScheduledLr());
        m.optimizer->step();
        m.MasterToCompute();
      }
      m.steps++;
      loss_sum += loss_value;
      norm_sum += norm;
    }
    // The gradients are not needed until the next update's backward: freeing them here
    // keeps a model's worth of memory out of everything between updates (the weight
    // snapshot for the actors, evaluation, checkpoints).
    if (m.sharded != nullptr) m.sharded->ReleaseGradients();
    for (torch::Tensor& p : m.model->parameters()) p.mutable_grad().reset();
    if (m.mixed_precision()) {
      for (torch::Tensor& p : params) p.mutable_grad().reset();
    }
    // Combine the per-rank metrics: the loss parts add up to the global mini-batch loss.
    torch::Tensor sums =
        torch::tensor({loss_sum, mismatch_sum, mismatch_tokens, delta_sum, delta_count, entropy_sum,
                       entropy_tokens, trained_tokens, weight_sum, weight_count, oversize},
                      torch::kFloat64)
            .to(m.device);
    if (comm != nullptr) {
      std::vector<torch::Tensor> v = {sums};
      if (absl::Status s = comm->AllReduce(v, /*average=*/false); !s.ok()) return s;
    }
    sums = sums.to(torch::kCPU);
    auto a = sums.accessor<double, 1>();
    const double n_steps = std::max(1, n_mini);
    stats.loss = a[0] / n_steps;
    stats.grad_norm = norm_sum / n_steps;
    stats.logprob_mismatch = a[2] > 0 ? a[1] / a[2] : 0.0;
    stats.mean_abs_delta = a[4] > 0 ? a[3] / a[4] : 0.0;
    stats.entropy = a[6] > 0 ? a[5] / a[6] : 0.0;
    stats.trained_tokens = static_cast<int64_t>(a[7]);
    stats.importance_weight_mean = a[9] > 0 ? a[8] / a[9] : 1.0;
    stats.oversize_sequences = static_cast<int64_t>(a[10]);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("update failed: ", e.what_without_backtrace()));
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

std::shared_ptr<const WeightVersion> Trainer::Snapshot(uint64_t version, WireDtype dtype) {
  return SnapshotWeights(impl_->model, version, dtype);
}

absl::Status Trainer::BroadcastWeights(Communicator* comm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> params;
  for (auto& p : impl_->model->parameters()) params.push_back(p.data());
  absl::Status s = comm->Broadcast(params, /*root=*/0);
  impl_->MasterToCompute();
  return s;
}

absl::Status Trainer::CheckReplicas(Communicator* comm, int64_t update) {
  // FNV-1a over the parameter bytes: any bit that differs shows.
  uint64_t h = 1469598103934665603ULL;
  for (auto& p : impl_->model->parameters()) {
    torch::Tensor c = p.detach().contiguous().cpu();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    for (size_t i = 0; i < n; ++i) {
      h ^= bytes[i];
      h *= 1099511628211ULL;
    }
  }
  // Halves of 32 bits are exact in a double, so a sum-all-reduce of one slot per rank
  // hands every rank every hash.
  const int world = comm->world_size(), rank = comm->rank();
  torch::Tensor slots = torch::zeros({2 * world}, torch::kFloat64);
  slots[2 * rank] = static_cast<double>(h >> 32);
  slots[2 * rank + 1] = static_cast<double>(h & 0xffffffffULL);
  slots = slots.to(impl_->device);
  std::vector<torch::Tensor> v = {slots};
  if (absl::Status s = comm->AllReduce(v, /*average=*/false); !s.ok()) return s;
  slots = slots.to(torch::kCPU);
  auto a = slots.accessor<double, 1>();
  for (int r = 1; r < world; ++r) {
    if (a[2 * r] != a[0] || a[2 * r + 1] != a[1]) {
      return absl::DataLossError(absl::StrCat("learner rank ", r,
                                              " holds weights that differ from rank 0 at update ",
                                              update, ": the replicas diverged"));
    }
  }
  return absl::OkStatus();
}

const ModelConfig& Trainer::model_config() const { return impl_->model->config(); }

CausalLM& Trainer::model() { return impl_->model; }

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
    packed.To(m.device);
    torch::Tensor logits = m.model->forward(packed.input, packed.positions, packed.valid);
    torch::Tensor token_lp = NextTokenLogProbs(SamplingLogProbs(logits, 1.0, m.never_sampled),
                                               packed.input, packed.response_mask);
    torch::Tensor loss = -(token_lp * packed.response_mask).sum() / packed.response_mask.sum();
    m.optimizer->zero_grad();
    loss.backward();
    m.ClipAndNorm(1.0);
    m.SetLr(lr);
    m.optimizer->step();
    m.MasterToCompute();  // SFT trains the float32 weights directly
    m.steps++;
    return loss.item<double>();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("supervised step: ", e.what_without_backtrace()));
  }
}

}  // namespace pmdrl
