#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace pmdrl {
namespace {

// One configuration key: how to parse a value into the struct and print it back.
// The table below is the single list of keys, so YAML loading, flag overrides, help
// and the effective-config dump cannot drift apart.
struct Field {
  std::string key;
  std::string help;
  std::function<absl::Status(Config&, const std::string&)> set;
  std::function<std::string(const Config&)> get;
};

absl::Status BadValue(const std::string& key, const std::string& value, absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("config key '", key, "': bad value '", value, "' (want ", want, ")"));
}

template <typename T>
Field Make(std::string key, std::string help, T Config::*section, auto member) {
  Field f;
  f.key = key;
  f.help = std::move(help);
  using V = std::remove_reference_t<decltype(std::declval<T&>().*member)>;
  f.set = [key, section, member](Config& c, const std::string& raw) -> absl::Status {
    V& dst = (c.*section).*member;
    std::string v(absl::StripAsciiWhitespace(absl::string_view(raw)));
    if constexpr (std::is_same_v<V, std::string>) {
      dst = v;
    } else if constexpr (std::is_same_v<V, bool>) {
      std::string l = absl::AsciiStrToLower(v);
      if (l == "true" || l == "yes" || l == "1" || l == "on") {
        dst = true;
      } else if (l == "false" || l == "no" || l == "0" || l == "off") {
        dst = false;
      } else {
        return BadValue(key, raw, "true or false");
      }
    } else if constexpr (std::is_same_v<V, double>) {
      double d;
      if (!absl::SimpleAtod(v, &d) || !std::isfinite(d)) return BadValue(key, raw, "a number");
      dst = d;
    } else if constexpr (std::is_same_v<V, int64_t>) {
      int64_t i;
      if (!absl::SimpleAtoi(v, &i)) return BadValue(key, raw, "an integer");
      dst = i;
    } else if constexpr (std::is_same_v<V, uint64_t>) {
      uint64_t u;
      if (!absl::SimpleAtoi(v, &u)) return BadValue(key, raw, "a non-negative integer");
      dst = u;
    } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
      dst.clear();
      for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
        dst.emplace_back(absl::StripAsciiWhitespace(part));
      }
    } else if constexpr (std::is_enum_v<V>) {
      absl::StatusOr<V> e = ParseConfigEnum<V>(v);
      if (!e.ok()) return e.status();
      dst = *e;
    } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
      dst.clear();
      for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
        int64_t i;
        if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &i)) {
          return BadValue(key, raw, "comma-separated integers");
        }
        dst.push_back(i);
      }
    } else {
      static_assert(sizeof(V) == 0, "unsupported config field type");
    }
    return absl::OkStatus();
  };
  f.get = [section, member](const Config& c) -> std::string {
    const V& v = (c.*section).*member;
    if constexpr (std::is_same_v<V, std::string>) {
      return v;
    } else if constexpr (std::is_enum_v<V>) {
      return std::string(Name(v));
    } else if constexpr (std::is_same_v<V, bool>) {
      return v ? "true" : "false";
    } else if constexpr (std::is_same_v<V, double>) {
      std::ostringstream os;
      os << v;
      return os.str();
    } else if constexpr (std::is_same_v<V, std::vector<std::string>> ||
                         std::is_same_v<V, std::vector<int64_t>>) {
      return absl::StrJoin(v, ",");
    } else {
      return std::to_string(v);
    }
  };
  return f;
}

const std::vector<Field>& Fields() {
  static const std::vector<Field> fields = [] {
    using C = Config;
    std::vector<Field> f;
    // run
    f.push_back(
        Make("run.dir", "run directory: checkpoints, metrics.csv, logs", &C::run, &RunConfig::dir));
    f.push_back(Make("run.seed", "seed of data order, initialisation and sampling", &C::run,
                     &RunConfig::seed));
    f.push_back(Make("run.token_file", "file holding the bearer token (else $PMDRL_TOKEN)", &C::run,
                     &RunConfig::token_file));
    f.push_back(Make("run.metrics_host",
                     "address the /metrics and /healthz servers bind (0.0.0.0 in containers)",
                     &C::run, &RunConfig::metrics_host));
    f.push_back(Make("run.tls_cert",
                     "PEM certificate (chain) of every gRPC server and, with run.tls_ca, client "
                     "('': plaintext)",
                     &C::run, &RunConfig::tls_cert));
    f.push_back(
        Make("run.tls_key", "PEM private key of run.tls_cert", &C::run, &RunConfig::tls_key));
    f.push_back(Make("run.tls_ca",
                     "PEM CA for mutual TLS: servers require client certificates it signed, "
                     "clients verify servers with it ('': servers ask no client certificate)",
                     &C::run, &RunConfig::tls_ca));
    // model
    f.push_back(Make("model.path",
                     "Hugging Face model directory to start from (empty: random init)", &C::model,
                     &ModelSection::path));
    f.push_back(Make("model.architecture", "llama | qwen2 | qwen3 (random init only)", &C::model,
                     &ModelSection::architecture));
    f.push_back(Make("model.hidden_size", "d_model (random init only)", &C::model,
                     &ModelSection::hidden_size));
    f.push_back(Make("model.intermediate_size", "MLP width (random init only)", &C::model,
                     &ModelSection::intermediate_size));
    f.push_back(Make("model.num_layers", "decoder layers (random init only)", &C::model,
                     &ModelSection::num_layers));
    f.push_back(Make("model.num_heads", "attention heads (random init only)", &C::model,
                     &ModelSection::num_heads));
    f.push_back(Make("model.num_kv_heads", "key/value heads (random init only)", &C::model,
                     &ModelSection::num_kv_heads));
    f.push_back(Make("model.max_position", "longest sequence (random init only)", &C::model,
                     &ModelSection::max_position));
    f.push_back(Make("model.rope_theta", "RoPE base (random init only)", &C::model,
                     &ModelSection::rope_theta));
    f.push_back(Make("model.tie_embeddings", "share input and output embeddings (random init only)",
                     &C::model, &ModelSection::tie_embeddings));
    // task
    f.push_back(Make("task.name", "arith (built-in generator) | math (JSONL files)", &C::task,
                     &TaskConfig::name));
    f.push_back(Make("task.digits", "operand digits, 1..6", &C::task, &TaskConfig::digits));
    f.push_back(Make("task.ops", "operators drawn from, any of +-*", &C::task, &TaskConfig::ops));
    f.push_back(Make("task.eval_size", "held-out problems", &C::task, &TaskConfig::eval_size));
    f.push_back(
        Make("task.eval_seed", "seed fixing the held-out split", &C::task, &TaskConfig::eval_seed));
    f.push_back(Make("task.train_file", "math: training problems, JSONL (one object a line)",
                     &C::task, &TaskConfig::train_file));
    f.push_back(Make("task.eval_file",
                     "math: held-out problems, JSONL ('': hold out task.eval_size of train_file)",
                     &C::task, &TaskConfig::eval_file));
    f.push_back(Make("task.prompt_field", "math: JSON field of the problem (GSM8K: question)",
                     &C::task, &TaskConfig::prompt_field));
    f.push_back(Make("task.answer_field",
                     "math: JSON field of the reference answer (MATH: solution)", &C::task,
                     &TaskConfig::answer_field));
    f.push_back(Make("task.prompt_template", "math: the user turn; {problem} is the problem",
                     &C::task, &TaskConfig::prompt_template));
    f.push_back(Make("task.system_prompt", "math: system turn ('': none)", &C::task,
                     &TaskConfig::system_prompt));
    f.push_back(Make("task.chat",
                     "math: auto (the model's chat format if it has one) | on | off (plain text)",
                     &C::task, &TaskConfig::chat));
    // sft
    f.push_back(Make("sft.output", "where `pmdrl sft` writes the base policy", &C::sft,
                     &SftConfig::output));
    f.push_back(Make("sft.max_steps", "most supervised steps", &C::sft, &SftConfig::max_steps));
    f.push_back(Make("sft.batch_size", "sequences per step", &C::sft, &SftConfig::batch_size));
    f.push_back(Make("sft.lr", "AdamW learning rate", &C::sft, &SftConfig::lr));
    f.push_back(
        Make("sft.eval_every", "steps between held-out checks", &C::sft, &SftConfig::eval_every));
    f.push_back(Make("sft.target_greedy", "stop once greedy accuracy >= this ...", &C::sft,
                     &SftConfig::target_greedy));
    f.push_back(Make("sft.target_pass_ratio", "... and pass@k >= this times greedy", &C::sft,
                     &SftConfig::target_pass_ratio));
    f.push_back(Make("sft.pass_k", "k of pass@k", &C::sft, &SftConfig::pass_k));
    f.push_back(Make("sft.threads", "Torch threads", &C::sft, &SftConfig::threads));
    // actor
    f.push_back(Make("actor.name", "this actor's name", &C::actor, &ActorConfig::name));
    f.push_back(Make("actor.coordinator", "coordinator address host:port", &C::actor,
                     &ActorConfig::coordinator));
    f.push_back(Make("actor.verifiers", "verifier addresses, comma-separated (round robin)",
                     &C::actor, &ActorConfig::verifiers));
    f.push_back(Make("actor.prompts_per_batch", "prompts leased and sampled together", &C::actor,
                     &ActorConfig::prompts_per_batch));
    f.push_back(
        Make("actor.temperature", "sampling temperature", &C::actor, &ActorConfig::temperature));
    f.push_back(Make("actor.top_p", "nucleus sampling mass", &C::actor, &ActorConfig::top_p));
    f.push_back(
        Make("actor.max_new_tokens", "longest response", &C::actor, &ActorConfig::max_new_tokens));
    f.push_back(Make("actor.seed", "sampling seed (0: from run.seed and actor.name)", &C::actor,
                     &ActorConfig::seed));
    f.push_back(
        Make("actor.threads", "CPU threads for sampling", &C::actor, &ActorConfig::threads));
    f.push_back(Make("actor.dtype", "engine precision: float32, bfloat16 or float16", &C::actor,
                     &ActorConfig::dtype));
    f.push_back(Make("actor.max_rows",
                     "completions decoded together (row slots of the engine's KV pool)", &C::actor,
                     &ActorConfig::max_rows));
    f.push_back(Make("actor.send_window",
                     "groups per verifier stream queued or unacked before generation waits",
                     &C::actor, &ActorConfig::send_window));
    f.push_back(Make("actor.max_context",
                     "positions per row slot, prompt + response (0: 512 + max_new_tokens)",
                     &C::actor, &ActorConfig::max_context));
    f.push_back(Make("actor.device",
                     "where the policy samples: cpu, cuda (GPU 0 of those visible) or cuda:N",
                     &C::actor, &ActorConfig::device));
    f.push_back(Make("actor.metrics_port", "HTTP port of /metrics and /healthz (0: none)",
                     &C::actor, &ActorConfig::metrics_port));
    // verifier
    f.push_back(Make("verifier.name", "this verifier's name", &C::verifier, &VerifierConfig::name));
    f.push_back(
        Make("verifier.listen", "gRPC address to serve on", &C::verifier, &VerifierConfig::listen));
    f.push_back(Make("verifier.learner", "learner address host:port", &C::verifier,
                     &VerifierConfig::learner));
    f.push_back(Make("verifier.timeout_ms", "hard time limit of one answer check", &C::verifier,
                     &VerifierConfig::timeout_ms));
    f.push_back(Make("verifier.reward_correct", "reward of a correct answer", &C::verifier,
                     &VerifierConfig::reward_correct));
    f.push_back(Make("verifier.reward_incorrect",
                     "reward of a wrong or unparsable answer (timed out: see timeout_reward)",
                     &C::verifier, &VerifierConfig::reward_incorrect));
    f.push_back(Make("verifier.metrics_port", "HTTP port of /metrics and /healthz (0: none)",
                     &C::verifier, &VerifierConfig::metrics_port));
    f.push_back(Make("verifier.grader_processes",
                     "worker processes for symbolic (math) checks, each killed and replaced when "
                     "a check overruns timeout_ms (0: one per core, at least 2)",
                     &C::verifier, &VerifierConfig::grader_processes));
    f.push_back(Make("verifier.timeout_reward",
                     "what the learner makes of answers whose check timed out: requeue (their "
                     "group's place is issued again once, untrained; the next time they score "
                     "reward_incorrect) or a number (their reward, trained at once)",
                     &C::verifier, &VerifierConfig::timeout_reward));
    // learner
    f.push_back(Make("learner.listen", "gRPC address of the coordinator and learner services",
                     &C::learner, &LearnerConfig::listen));
    f.push_back(Make("learner.metrics_port", "HTTP port of /metrics and /healthz (0: none)",
                     &C::learner, &LearnerConfig::metrics_port));
    f.push_back(Make("learner.threads", "Torch threads", &C::learner, &LearnerConfig::threads));
    f.push_back(Make("learner.loss",
                     "pmd_mean | pmd_part (soft-max baseline of the other completions) | grpo "
                     "(token PPO-clip, group-normalised advantages) | gspo (sequence-ratio clip)",
                     &C::learner, &LearnerConfig::loss));
    f.push_back(Make("learner.baseline",
                     "mean | loo (pmd_mean only; pmd_part, grpo, gspo ignore it)", &C::learner,
                     &LearnerConfig::baseline));
    f.push_back(Make("learner.length_norm",
                     "token (divide by L_j) | max (by the longest response); pmd_mean, pmd_part",
                     &C::learner, &LearnerConfig::length_norm));
    f.push_back(Make("learner.old_logprobs", "actor (recorded while sampling) | recompute",
                     &C::learner, &LearnerConfig::old_logprobs));
    f.push_back(Make("learner.clip_eps", "grpo: token ratio clipped to [1-eps, 1+eps], 0 < eps < 1",
                     &C::learner, &LearnerConfig::clip_eps));
    f.push_back(Make("learner.seq_clip_eps",
                     "gspo: sequence ratio clipped to [1-eps, 1+eps], 0 < eps < 1", &C::learner,
                     &LearnerConfig::seq_clip_eps));
    f.push_back(Make("learner.importance_weights",
                     "none | truncated: weight each completion's loss by min(is_cap, "
                     "pi_old/pi_actor) of its sequence, pi_old recomputed by the learner, for "
                     "stale samples (needs old_logprobs recompute)",
                     &C::learner, &LearnerConfig::importance_weights));
    f.push_back(Make("learner.is_cap", "truncation of the importance weights, > 0", &C::learner,
                     &LearnerConfig::is_cap));
    f.push_back(Make("learner.tau", "PMD regularisation strength tau > 0 (pmd_mean, pmd_part)",
                     &C::learner, &LearnerConfig::tau));
    f.push_back(Make("learner.group_size", "completions per prompt k", &C::learner,
                     &LearnerConfig::group_size));
    f.push_back(Make("learner.prompts_per_update", "prompts per rollout batch B", &C::learner,
                     &LearnerConfig::prompts_per_update));
    f.push_back(Make("learner.mini_batches", "optimizer steps per rollout batch", &C::learner,
                     &LearnerConfig::mini_batches));
    f.push_back(Make("learner.max_staleness", "largest learner version - sampling version used",
                     &C::learner, &LearnerConfig::max_staleness));
    f.push_back(Make("learner.lr", "AdamW learning rate", &C::learner, &LearnerConfig::lr));
    f.push_back(Make("learner.warmup_steps", "linear learning-rate warm-up steps", &C::learner,
                     &LearnerConfig::warmup_steps));
    f.push_back(Make("learner.weight_decay", "AdamW weight decay", &C::learner,
                     &LearnerConfig::weight_decay));
    f.push_back(Make("learner.grad_clip", "gradient norm clip (0: off)", &C::learner,
                     &LearnerConfig::grad_clip));
    f.push_back(
        Make("learner.updates", "policy updates in the run", &C::learner, &LearnerConfig::updates));
    f.push_back(Make("learner.max_seconds",
                     "stop after this many seconds of training (0: no limit)", &C::learner,
                     &LearnerConfig::max_seconds));
    f.push_back(Make("learner.eval_every", "updates between held-out evaluations", &C::learner,
                     &LearnerConfig::eval_every));
    f.push_back(Make("learner.eval_last", "final accuracy = mean of the last this-many evaluations",
                     &C::learner, &LearnerConfig::eval_last));
    f.push_back(Make("learner.eval_k",
                     "samples per held-out problem at actor temperature/top_p for avg@k and "
                     "pass@k (0: greedy only)",
                     &C::learner, &LearnerConfig::eval_k));
    f.push_back(Make("learner.checkpoint_every", "updates between checkpoints (0: only at the end)",
                     &C::learner, &LearnerConfig::checkpoint_every));
    f.push_back(Make("learner.keep_checkpoints",
                     "complete checkpoints kept in run.dir, the newest by update; older ones "
                     "are removed after each checkpoint (0: keep all)",
                     &C::learner, &LearnerConfig::keep_checkpoints));
    f.push_back(Make("learner.resume",
                     "'' | auto (latest checkpoint in run.dir) | a checkpoint directory",
                     &C::learner, &LearnerConfig::resume));
    f.push_back(Make("learner.lease_ttl_seconds",
                     "a lease not heartbeated for this long is re-issued", &C::learner,
                     &LearnerConfig::lease_ttl_seconds));
    f.push_back(Make("learner.rank", "this learner's rank, 0..world_size-1 (rank 0 serves actors)",
                     &C::learner, &LearnerConfig::rank));
    f.push_back(Make("learner.world_size", "data-parallel learner ranks", &C::learner,
                     &LearnerConfig::world_size));
    f.push_back(Make("learner.rendezvous",
                     "host:port of the store rank 0 serves for the collectives", &C::learner,
                     &LearnerConfig::rendezvous));
    f.push_back(Make("learner.device",
                     "where the learner trains: cpu | cuda (GPU rank % visible GPUs) | cuda:N",
                     &C::learner, &LearnerConfig::device));
    f.push_back(Make("learner.backend",
                     "collectives: auto (gloo on cpu, nccl on cuda) | gloo | nccl", &C::learner,
                     &LearnerConfig::backend));
    f.push_back(Make("learner.overlap_allreduce",
                     "all-reduce gradient buckets while the backward pass still runs", &C::learner,
                     &LearnerConfig::overlap_allreduce));
    f.push_back(Make("learner.bucket_mb", "all-reduce bucket size in MiB", &C::learner,
                     &LearnerConfig::bucket_mb));
    f.push_back(Make("learner.micro_batch_tokens",
                     "tokens (prompt + response) per packed forward/backward; gradients "
                     "accumulate over them (0: a rank's whole share at once)",
                     &C::learner, &LearnerConfig::micro_batch_tokens));
    f.push_back(Make("learner.activation_checkpointing",
                     "keep only each decoder layer's input, recompute the layer in backward",
                     &C::learner, &LearnerConfig::activation_checkpointing));
    f.push_back(Make("learner.logprob_chunk_tokens",
                     "response tokens per lm_head + log-softmax chunk (bounds the logits' memory)",
                     &C::learner, &LearnerConfig::logprob_chunk_tokens));
    f.push_back(Make("learner.dtype",
                     "compute dtype: float32 | bfloat16 (float32 master weights and AdamW state)",
                     &C::learner, &LearnerConfig::dtype));
    f.push_back(Make("learner.zero_stage",
                     "0 | 1: shard the AdamW state across ranks | 2: also reduce-scatter the "
                     "gradients (float32 only)",
                     &C::learner, &LearnerConfig::zero_stage));
    f.push_back(Make("learner.weight_dtype",
                     "dtype of the weights sent to the actors: auto (bfloat16 when actor.dtype is "
                     "bfloat16, else float32) | float32 | bfloat16",
                     &C::learner, &LearnerConfig::weight_dtype));
    f.push_back(Make("learner.weight_delta",
                     "after an actor's first full push, send each version as a zstd-compressed XOR "
                     "against the one it holds (the actor keeps one more copy of the weights)",
                     &C::learner, &LearnerConfig::weight_delta));
    f.push_back(Make("learner.weight_chunk_bytes", "largest weight chunk on the wire, in bytes",
                     &C::learner, &LearnerConfig::weight_chunk_bytes));
    f.push_back(Make("learner.collective_timeout_seconds",
                     "a collective waiting longer than this fails (a dead rank)", &C::learner,
                     &LearnerConfig::collective_timeout_seconds));
    f.push_back(Make("learner.checksum_every",
                     "updates between cross-rank weight checksums (0: never)", &C::learner,
                     &LearnerConfig::checksum_every));
    // local
    f.push_back(Make("local.learners", "learner ranks `pmdrl local` starts", &C::local,
                     &LocalConfig::learners));
    f.push_back(
        Make("local.actors", "actors `pmdrl local` starts", &C::local, &LocalConfig::actors));
    f.push_back(Make("local.verifiers", "verifiers `pmdrl local` starts", &C::local,
                     &LocalConfig::verifiers));
    f.push_back(Make("local.base_port", "first port of the local cluster (0: free ports)",
                     &C::local, &LocalConfig::base_port));
    f.push_back(Make("local.tls",
                     "`pmdrl local`: mutual TLS with a throw-away CA and certificate made with "
                     "openssl in <run.dir>/tls (unless run.tls_* name files; false: plaintext)",
                     &C::local, &LocalConfig::tls));
    f.push_back(
        Make("local.restarts",
             "`pmdrl local`: children killed by a signal that it starts again, in all "
             "(the learner resumes from its last checkpoint; a killed learner rank restarts "
             "every rank); 0: none",
             &C::local, &LocalConfig::restarts));
    // compare
    f.push_back(Make("compare.variants",
                     "`pmdrl compare` runs: loss names (pmd_mean, pmd_part, grpo, gspo), each "
                     "optionally with :section.key=value overrides",
                     &C::compare, &CompareConfig::variants));
    f.push_back(Make("compare.seeds", "run.seed of each variant's runs", &C::compare,
                     &CompareConfig::seeds));
    f.push_back(Make("compare.output", "folder of the runs, results.md/csv and curves.svg",
                     &C::compare, &CompareConfig::output));
    f.push_back(Make("compare.target_gain",
                     "eval accuracy gain over the base that counts as reaching the target",
                     &C::compare, &CompareConfig::target_gain));
    f.push_back(Make("compare.reuse",
                     "keep runs that finished before with the same command, config and base model",
                     &C::compare, &CompareConfig::reuse));
    return f;
  }();
  return fields;
}

const Field* FindField(const std::string& key) {
  for (const Field& f : Fields()) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

absl::Status SetKey(Config& c, const std::string& key, const std::string& value,
                    absl::string_view where) {
  const Field* f = FindField(key);
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown config key '", key, "' (", where, "); see --help for the keys"));
  }
  absl::Status s = f->set(c, value);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(s.message(), " (", where, ")"));
  return absl::OkStatus();
}

// Flattens a YAML mapping into dotted keys; sequences become comma-joined values.
absl::Status ApplyYaml(Config& c, const YAML::Node& node, const std::string& prefix,
                       const std::string& file) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": ", prefix.empty() ? "top level" : "key '" + prefix + "'", " must be a mapping"));
  }
  for (const auto& kv : node) {
    std::string name = kv.first.as<std::string>();
    std::string key = prefix.empty() ? name : prefix + "." + name;
    const YAML::Node& v = kv.second;
    if (prefix.empty()) {
      if (v.IsNull()) continue;  // an empty section
      // Sections must be mappings; an unknown section is an unknown key.
      bool known_section = false;
      for (const Field& f : Fields()) {
        if (absl::StartsWith(f.key, key + ".")) known_section = true;
      }
      if (!known_section) {
        return absl::InvalidArgumentError(absl::StrCat(file, ": unknown config key '", key, "'"));
      }
      absl::Status s = ApplyYaml(c, v, key, file);
      if (!s.ok()) return s;
      continue;
    }
    std::string value;
    if (v.IsSequence()) {
      std::vector<std::string> parts;
      for (const auto& item : v) parts.push_back(item.as<std::string>());
      value = absl::StrJoin(parts, ",");
    } else if (v.IsScalar()) {
      value = v.as<std::string>();
    } else if (v.IsNull()) {
      value = "";
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": config key '", key, "' must be a value, not a mapping"));
    }
    absl::Status s = SetKey(c, key, value, file);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Config> LoadConfig(const std::string& yaml_path,
                                  const std::vector<std::string>& overrides) {
  Config c;
  if (!yaml_path.empty()) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(yaml_path);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read config ", yaml_path, ": ", e.what()));
    }
    if (!root.IsNull()) {
      try {
        absl::Status s = ApplyYaml(c, root, "", yaml_path);
        if (!s.ok()) return s;
      } catch (const YAML::Exception& e) {
        return absl::InvalidArgumentError(absl::StrCat(yaml_path, ": ", e.what()));
      }
    }
  }
  for (const std::string& o : overrides) {
    size_t eq = o.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("override '", o, "' must look like section.key=value"));
    }
    absl::Status s = SetKey(c, o.substr(0, eq), o.substr(eq + 1), "command line");
    if (!s.ok()) return s;
  }
  absl::Status s = ValidateConfig(c);
  if (!s.ok()) return s;
  return c;
}

absl::StatusOr<Config> ConfigFromArgs(int argc, char** argv, std::vector<std::string>* positional) {
  std::string config_path;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") return absl::NotFoundError(ConfigHelp());
    if (!absl::StartsWith(a, "--")) {
      if (positional) positional->push_back(a);
      continue;
    }
    std::string body = a.substr(2);
    std::string key = body, value;
    size_t eq = body.find('=');
    bool has_value = eq != std::string::npos;
    if (has_value) {
      key = body.substr(0, eq);
      value = body.substr(eq + 1);
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", key, " needs a value"));
      }
      value = argv[++i];
    }
    if (key == "config") {
      config_path = value;
    } else {
      overrides.push_back(key + "=" + value);
    }
  }
  return LoadConfig(config_path, overrides);
}

absl::StatusOr<std::optional<double>> TimeoutRewardValue(const std::string& value) {
  if (value == "requeue") return std::nullopt;
  double d = 0;
  if (!absl::SimpleAtod(value, &d) || !std::isfinite(d)) {
    return BadValue("verifier.timeout_reward", value, "requeue or a number");
  }
  return d;
}

std::string ConfigToYaml(const Config& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  for (const Field& f : Fields()) {
    size_t dot = f.key.find('.');
    std::string s = f.key.substr(0, dot);
    if (s != section) {
      if (!section.empty()) out << YAML::EndMap;
      section = s;
      out << YAML::Key << s << YAML::Value << YAML::BeginMap;
    }
    out << YAML::Key << f.key.substr(dot + 1) << YAML::Value << f.get(c);
  }
  if (!section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string ConfigHelp() {
  Config defaults;
  std::string h =
      "Configuration: --config FILE (YAML) and any key as --section.key=VALUE.\n"
      "Keys (default in brackets):\n";
  for (const Field& f : Fields()) {
    absl::StrAppend(&h, "  --", f.key, " [", f.get(defaults), "]\n      ", f.help, "\n");
  }
  return h;
}

}  // namespace pmdrl
