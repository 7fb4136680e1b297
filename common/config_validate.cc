// ValidateConfig: the checks of the whole configuration (value ranges, and keys that
// must agree with each other), run once after every key is parsed (common/config.cc).
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config.h"

namespace pmdrl {
namespace {

absl::Status OneOf(const std::string& key, const std::string& v,
                   std::initializer_list<absl::string_view> allowed) {
  for (absl::string_view a : allowed) {
    if (v == a) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': bad value '", v,
                                                 "' (want one of: ", absl::StrJoin(allowed, ", "),
                                                 ")"));
}

// "cpu", "cuda" or "cuda:N": the device names the learner and actor accept.
bool IsDeviceName(const std::string& d) {
  return d == "cpu" || d == "cuda" ||
         (d.rfind("cuda:", 0) == 0 && d.size() > 5 &&
          d.find_first_not_of("0123456789", 5) == std::string::npos);
}

absl::Status Check(bool ok, const std::string& key, absl::string_view want) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': must be ", want));
}

}  // namespace

absl::Status ValidateConfig(const Config& c) {
  std::vector<absl::Status> checks = {
      Check(!c.run.dir.empty(), "run.dir", "non-empty"),
      Check(c.run.tls_cert.empty() == c.run.tls_key.empty(), "run.tls_cert",
            "set together with run.tls_key (both or neither)"),
      Check(c.run.tls_ca.empty() || !c.run.tls_cert.empty(), "run.tls_ca",
            "empty unless run.tls_cert and run.tls_key are set"),
      OneOf("model.architecture", c.model.architecture, {"llama", "qwen2", "qwen3"}),
      Check(c.model.hidden_size > 0, "model.hidden_size", "> 0"),
      Check(c.model.intermediate_size > 0, "model.intermediate_size", "> 0"),
      Check(c.model.num_layers > 0, "model.num_layers", "> 0"),
      Check(c.model.num_heads > 0 && c.model.hidden_size % c.model.num_heads == 0,
            "model.num_heads", "> 0 and divide model.hidden_size"),
      Check(c.model.num_kv_heads > 0 && c.model.num_heads % c.model.num_kv_heads == 0,
            "model.num_kv_heads", "> 0 and divide model.num_heads"),
      Check(c.model.max_position > 0, "model.max_position", "> 0"),
      Check(c.model.rope_theta > 0, "model.rope_theta", "> 0"),
      Check(c.task.name != TaskName::kMath || !c.task.train_file.empty(), "task.train_file",
            "a JSONL file when task.name is math"),
      Check(c.task.name != TaskName::kMath || !c.model.path.empty(), "model.path",
            "a Hugging Face model directory (with tokenizer.json) when task.name is math"),
      Check(c.task.name != TaskName::kMath || !c.task.prompt_field.empty(), "task.prompt_field",
            "non-empty"),
      Check(c.task.name != TaskName::kMath || !c.task.answer_field.empty(), "task.answer_field",
            "non-empty"),
      Check(c.task.prompt_template.find("{problem}") != std::string::npos, "task.prompt_template",
            "a text containing {problem}"),
      Check(c.task.digits >= 1 && c.task.digits <= 6, "task.digits", "in 1..6"),
      Check(!c.task.ops.empty() && c.task.ops.find_first_not_of("+-*") == std::string::npos,
            "task.ops", "a non-empty string of + - *"),
      Check(c.task.eval_size > 0, "task.eval_size", "> 0"),
      Check(c.sft.max_steps >= 0, "sft.max_steps", ">= 0"),
      Check(c.sft.batch_size > 0, "sft.batch_size", "> 0"),
      Check(c.sft.lr > 0, "sft.lr", "> 0"),
      Check(c.sft.eval_every > 0, "sft.eval_every", "> 0"),
      Check(c.sft.pass_k > 0, "sft.pass_k", "> 0"),
      Check(c.sft.threads > 0, "sft.threads", "> 0"),
      Check(!c.actor.coordinator.empty(), "actor.coordinator", "non-empty"),
      Check(!c.actor.verifiers.empty(), "actor.verifiers", "at least one address"),
      Check(c.actor.prompts_per_batch > 0, "actor.prompts_per_batch", "> 0"),
      Check(c.actor.temperature >= 0, "actor.temperature", ">= 0"),
      Check(c.actor.top_p > 0 && c.actor.top_p <= 1, "actor.top_p", "in (0, 1]"),
      Check(c.actor.max_new_tokens > 0, "actor.max_new_tokens", "> 0"),
      // Without actor.max_context a slot holds 512 + max_new_tokens positions, and no
      // engine (the actors', the learner's evaluator) takes more than 2^20: a larger
      // value would fail every actor at start, or leave groups no one accepts.
      Check(c.actor.max_context != 0 || c.actor.max_new_tokens <= (1 << 20) - 512,
            "actor.max_new_tokens",
            "at most 1048064 when actor.max_context is 0 (512 + max_new_tokens positions per "
            "slot, at most 1048576)"),
      Check(c.actor.threads > 0, "actor.threads", "> 0"),
      Check(c.actor.max_rows >= 1 && c.actor.max_rows <= 65536, "actor.max_rows", "in [1, 65536]"),
      Check(c.actor.send_window >= 1 && c.actor.send_window <= 4096, "actor.send_window",
            "in [1, 4096]"),
      Check(c.actor.max_context >= 0 && c.actor.max_context <= (1 << 20), "actor.max_context",
            "in [0, 1048576] (0: 512 + max_new_tokens)"),
      Check(c.actor.max_context == 0 || c.actor.max_context > c.actor.max_new_tokens + 4,
            "actor.max_context", "larger than actor.max_new_tokens + 4 (room for a prompt)"),
      Check(IsDeviceName(c.actor.device), "actor.device", "cpu, cuda or cuda:N"),
      Check(c.actor.metrics_port >= 0 && c.actor.metrics_port < 65536, "actor.metrics_port",
            "a port number"),
      Check(c.verifier.timeout_ms > 0, "verifier.timeout_ms", "> 0"),
      Check(c.verifier.grader_processes >= 0 && c.verifier.grader_processes <= 256,
            "verifier.grader_processes", "in 0..256 (0: one per core, at least 2)"),
      TimeoutRewardValue(c.verifier.timeout_reward).status(),
      Check(c.verifier.metrics_port >= 0 && c.verifier.metrics_port < 65536,
            "verifier.metrics_port", "a port number"),
      Check(c.learner.metrics_port >= 0 && c.learner.metrics_port < 65536, "learner.metrics_port",
            "a port number"),
      Check(c.learner.threads > 0, "learner.threads", "> 0"),
      Check(c.learner.tau > 0, "learner.tau", "> 0"),
      Check(c.learner.clip_eps > 0 && c.learner.clip_eps < 1, "learner.clip_eps", "in (0, 1)"),
      Check(c.learner.seq_clip_eps > 0 && c.learner.seq_clip_eps < 1, "learner.seq_clip_eps",
            "in (0, 1)"),
      Check(c.learner.is_cap > 0, "learner.is_cap", "> 0"),
      // With the actor's log-probs as pi_old the loss already measures against the
      // sampling policy: weighting by pi_learner/pi_actor as well would correct twice.
      Check(c.learner.importance_weights == ImportanceWeights::kNone ||
                c.learner.old_logprobs == OldLogprobs::kRecompute,
            "learner.importance_weights", "none unless learner.old_logprobs is recompute"),
      Check(c.learner.group_size >=
                (c.learner.loss == LossKind::kPmdMean && c.learner.baseline == Baseline::kMean ? 1
                                                                                               : 2),
            "learner.group_size", ">= 1 (>= 2 with baseline loo or loss pmd_part, grpo, gspo)"),
      Check(c.learner.prompts_per_update > 0, "learner.prompts_per_update", "> 0"),
      Check(c.learner.mini_batches > 0 && c.learner.mini_batches <= c.learner.prompts_per_update,
            "learner.mini_batches", "in 1..learner.prompts_per_update"),
      Check(c.learner.max_staleness >= 0, "learner.max_staleness", ">= 0"),
      Check(c.learner.lr > 0, "learner.lr", "> 0"),
      Check(c.learner.warmup_steps >= 0, "learner.warmup_steps", ">= 0"),
      Check(c.learner.weight_decay >= 0, "learner.weight_decay", ">= 0"),
      Check(c.learner.grad_clip >= 0, "learner.grad_clip", ">= 0"),
      Check(c.learner.updates > 0, "learner.updates", "> 0"),
      Check(c.learner.max_seconds >= 0, "learner.max_seconds", ">= 0"),
      Check(c.learner.eval_every > 0, "learner.eval_every", "> 0"),
      Check(c.learner.eval_last > 0, "learner.eval_last", "> 0"),
      Check(c.learner.eval_k >= 0, "learner.eval_k", ">= 0"),
      Check(c.learner.checkpoint_every >= 0, "learner.checkpoint_every", ">= 0"),
      Check(c.learner.keep_checkpoints >= 0, "learner.keep_checkpoints", ">= 0"),
      Check(c.learner.lease_ttl_seconds > 0, "learner.lease_ttl_seconds", "> 0"),
      Check(c.learner.world_size >= 1 && c.learner.world_size <= 64, "learner.world_size",
            "in 1..64"),
      Check(c.learner.rank >= 0 && c.learner.rank < c.learner.world_size, "learner.rank",
            "in 0..learner.world_size-1"),
      Check(IsDeviceName(c.learner.device), "learner.device", "cpu, cuda or cuda:N"),
      Check(!(c.learner.backend == LearnerBackend::kGloo && c.learner.device != "cpu") &&
                !(c.learner.backend == LearnerBackend::kNccl && c.learner.device == "cpu"),
            "learner.backend", "gloo with learner.device cpu, nccl with cuda (or auto)"),
      Check(c.learner.bucket_mb > 0, "learner.bucket_mb", "> 0"),
      Check(c.learner.micro_batch_tokens >= 0, "learner.micro_batch_tokens", ">= 0"),
      Check(c.learner.logprob_chunk_tokens > 0, "learner.logprob_chunk_tokens", "> 0"),
      Check(c.learner.zero_stage >= 0 && c.learner.zero_stage <= 2, "learner.zero_stage",
            "0, 1 or 2"),
      Check(c.learner.zero_stage == 0 || c.learner.dtype == LearnerDtype::kFloat32,
            "learner.zero_stage",
            "0 with learner.dtype bfloat16 (sharding covers float32 training only)"),
      Check(c.learner.weight_chunk_bytes >= 4096 && c.learner.weight_chunk_bytes <= (32 << 20),
            "learner.weight_chunk_bytes", "in 4096..33554432 (32 MiB)"),
      Check(c.learner.collective_timeout_seconds > 0, "learner.collective_timeout_seconds", "> 0"),
      Check(c.learner.checksum_every >= 0, "learner.checksum_every", ">= 0"),
      Check(c.local.learners >= 1 && c.local.learners <= 16, "local.learners", "in 1..16"),
      Check(c.local.actors >= 0 && c.local.actors <= 64, "local.actors", "in 0..64"),
      Check(c.local.verifiers >= 1 && c.local.verifiers <= 64, "local.verifiers", "in 1..64"),
      Check(c.local.restarts >= 0, "local.restarts", ">= 0"),
      Check(!c.compare.variants.empty(), "compare.variants", "at least one variant"),
      Check(!c.compare.seeds.empty(), "compare.seeds", "at least one seed"),
      Check(!c.compare.output.empty(), "compare.output", "non-empty"),
      Check(c.compare.target_gain > 0 && c.compare.target_gain <= 1, "compare.target_gain",
            "in (0, 1]"),
      Check(c.local.base_port >= 0 && c.local.base_port < 65000, "local.base_port",
            "a port number below 65000"),
  };
  for (const absl::Status& s : checks) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

WireDtype WeightWireDtype(const Config& c) {
  switch (c.learner.weight_dtype) {
    case WeightDtype::kFloat32:
      return WireDtype::kFloat32;
    case WeightDtype::kBfloat16:
      return WireDtype::kBfloat16;
    case WeightDtype::kAuto:
      break;
  }
  return c.actor.dtype == ActorDtype::kBfloat16 ? WireDtype::kBfloat16 : WireDtype::kFloat32;
}

}  // namespace pmdrl
