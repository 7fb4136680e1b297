// The one typed configuration of a run. Every process reads the same YAML file and
// uses the sections it needs; every key can be overridden by a flag `--section.key=V`
// (or `--section.key V`). Unknown keys and bad values are errors that name the key.
#ifndef PMDRL_COMMON_CONFIG_H_
#define PMDRL_COMMON_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config_enums.h"
#include "common/wire_dtype.h"

namespace pmdrl {

struct RunConfig {
  std::string dir = "runs/arith";  // run directory: checkpoints, metrics CSV, logs
  uint64_t seed = 1;
  std::string token_file;  // bearer token file; else $PMDRL_TOKEN
  // Address the /metrics and /healthz servers bind: loopback by default (they carry no
  // auth); 0.0.0.0 in containers so Prometheus and probes can reach them.
  std::string metrics_host = "127.0.0.1";
  // gRPC transport security (common/rpc.h ConfigureTransportSecurity), PEM files; all
  // empty: plaintext. cert + key: TLS; with ca too: mutual TLS.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
};

struct ModelSection {
  std::string path;  // Hugging Face model directory to start from; empty: random init
  std::string architecture = "llama";  // llama | qwen2 | qwen3
  int64_t hidden_size = 128;
  int64_t intermediate_size = 384;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 4;
  int64_t max_position = 64;
  double rope_theta = 10000.0;
  bool tie_embeddings = false;
};

struct TaskConfig {
  TaskName name = TaskName::kArith;  // arith | math
  // arith.
  int64_t digits = 3;     // operand digits (zero-padded)
  std::string ops = "+";  // operators drawn from: any of "+-*"
  // Both.
  int64_t eval_size = 500;   // held-out problems (math: at most this many)
  uint64_t eval_seed = 777;  // the held-out split is fixed by this seed
  // math: JSONL problems, one JSON object a line; the tokenizer is model.path's.
  std::string train_file;
  std::string eval_file;  // "": hold out task.eval_size problems of train_file instead
  std::string prompt_field = "prompt";  // GSM8K: question, MATH: problem
  std::string answer_field = "answer";  // MATH: solution (its last \boxed{} is the answer)
  std::string prompt_template =
      "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.";
  std::string system_prompt;
  ChatMode chat = ChatMode::kAuto;  // auto (the model's chat format when it has one) | on | off
};

struct SftConfig {
  std::string output = "runs/arith-base";  // where `pmdrl sft` writes the base policy
  int64_t max_steps = 4000;
  int64_t batch_size = 128;
  double lr = 1e-3;
  int64_t eval_every = 100;
  double target_greedy = 0.20;     // stop at the first check with greedy >= this ...
  double target_pass_ratio = 1.8;  // ... and pass@k >= ratio * greedy
  int64_t pass_k = 8;
  int64_t threads = 2;
};

struct ActorConfig {
  std::string name = "actor-0";
  std::string coordinator = "127.0.0.1:50051";
  std::vector<std::string> verifiers = {"127.0.0.1:50061"};
  int64_t prompts_per_batch = 16;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t max_new_tokens = 6;
  uint64_t seed = 0;  // 0: derived from run.seed and the actor name
  int64_t threads = 1;
  std::string device = "cpu";  // cpu | cuda | cuda:N: where the policy samples
  ActorDtype dtype =
      ActorDtype::kFloat32;  // float32 | bfloat16 | float16: the engine's weights and KV
  int64_t max_rows = 64;     // completions decoded together (engine row slots)
  int64_t max_context = 0;   // positions per slot; 0: 512 + max_new_tokens
  int64_t send_window = 8;   // groups per verifier stream queued or unacked before generation waits
  int64_t metrics_port = 0;  // 0: no HTTP endpoint
};

struct VerifierConfig {
  std::string name = "verifier-0";
  std::string listen = "127.0.0.1:50061";
  std::string learner = "127.0.0.1:50051";
  int64_t timeout_ms = 2000;  // hard limit per answer check
  double reward_correct = 1.0;
  double reward_incorrect = -1.0;
  int64_t metrics_port = 0;
  // Worker processes that run the GiNaC (math) checks; 0: one per core, at least 2.
  int64_t grader_processes = 0;
  // What the learner makes of a completion graded OUTCOME_TIMEOUT: "requeue" (its
  // group's place goes back to the queue once, untrained; the next time the timed-out
  // answers score reward_incorrect) | a number (their reward, trained at once).
  std::string timeout_reward = "requeue";
};

struct LearnerConfig {
  std::string listen = "127.0.0.1:50051";
  int64_t metrics_port = 0;
  int64_t threads = 1;
  // The loss (learner/training/policy_loss.h).
  // Enumerated keys are typed (common/config_enums.h); YAML and flags spell them as noted.
  LossKind loss = LossKind::kPmdMean;              // pmd_mean | pmd_part | grpo | gspo
  Baseline baseline = Baseline::kMean;             // mean | loo (pmd_mean only)
  LengthNorm length_norm = LengthNorm::kTokens;    // token (L_j) | max (pmd_mean, pmd_part)
  OldLogprobs old_logprobs = OldLogprobs::kActor;  // actor | recompute
  double tau = 1.0;                                // pmd_mean, pmd_part
  double clip_eps = 0.2;                           // grpo: token ratio clip ε
  double seq_clip_eps = 4e-4;                      // gspo: sequence ratio clip ε_s
  ImportanceWeights importance_weights = ImportanceWeights::kNone;  // none | truncated (stale)
  double is_cap = 2.0;  // truncation of the importance weights
  // Batching.
  int64_t group_size = 8;           // k
  int64_t prompts_per_update = 64;  // B
  int64_t mini_batches = 2;         // optimizer steps per rollout batch
  int64_t max_staleness = 2;
  // Optimizer.
  double lr = 3e-4;
  int64_t warmup_steps = 20;
  double weight_decay = 0.0;
  double grad_clip = 1.0;
  // Memory (learner/training/micro_batch.h, learner/training/chunked_logprobs.h).
  int64_t micro_batch_tokens = 4096;      // tokens per forward/backward (0: a rank's share at once)
  bool activation_checkpointing = false;  // keep layer inputs only; recompute in backward
  int64_t logprob_chunk_tokens = 512;     // response tokens per lm_head + log-softmax chunk
  LearnerDtype dtype = LearnerDtype::kFloat32;  // float32 | bfloat16 (fp32 master weights + AdamW)
  int64_t zero_stage = 0;  // 0 | 1 (shard AdamW state) | 2 (and reduce-scatter gradients)
  // Weights to the actors (common/weight_stream.h).
  WeightDtype weight_dtype =
      WeightDtype::kAuto;                // auto (bfloat16 if actor.dtype is) | float32 | bfloat16
  bool weight_delta = false;             // after a full push, send XOR+zstd deltas
  int64_t weight_chunk_bytes = 1 << 20;  // largest chunk on the wire
  // Schedule.
  int64_t updates = 100;
  double max_seconds = 0;  // 0: no time limit
  int64_t eval_every = 5;
  int64_t eval_last = 3;  // final accuracy = mean of the last this-many evaluations
  int64_t eval_k = 0;     // samples per held-out problem for avg@k / pass@k (0: greedy only)
  int64_t checkpoint_every = 10;
  int64_t keep_checkpoints = 3;  // complete checkpoints kept in run.dir (0: all)
  std::string resume;            // "" | "auto" (latest in run.dir) | a checkpoint directory
  double lease_ttl_seconds = 30;
  // Data parallel.
  int64_t rank = 0;
  int64_t world_size = 1;
  std::string rendezvous = "127.0.0.1:29500";      // store served by rank 0 for the collectives
  std::string device = "cpu";                      // cpu | cuda (GPU rank % visible GPUs) | cuda:N
  LearnerBackend backend = LearnerBackend::kAuto;  // auto (gloo on cpu, nccl on cuda) | gloo | nccl
  bool overlap_allreduce = true;           // reduce gradient buckets while backward still runs
  int64_t bucket_mb = 25;                  // fused all-reduce bucket size
  double collective_timeout_seconds = 60;  // a dead rank fails the others after this
  int64_t checksum_every = 10;             // updates between cross-rank weight checks
};

struct LocalConfig {
  int64_t learners = 1;  // data-parallel learner ranks
  int64_t actors = 2;
  int64_t verifiers = 2;
  int64_t base_port = 0;  // 0: pick free loopback ports
  bool tls = true;        // mutual TLS with a throw-away CA, unless run.tls_* name files
  // Children killed by a signal (kill -9, the OOM killer) that `pmdrl local` starts
  // again, in all, in one run (the learner resumes from its last checkpoint); 0: none,
  // a killed learner ends the run.
  int64_t restarts = 0;
};

// `pmdrl compare`: one run per variant and seed (cli/compare.h).
struct CompareConfig {
  // "LOSS" or "LOSS:section.key=value[:...]".
  std::vector<std::string> variants = {"pmd_mean", "pmd_part", "grpo"};
  std::vector<int64_t> seeds = {1, 2, 3};
  std::string output = "runs/compare";
  double target_gain = 0.25;  // "updates to target": first eval >= base + this
  bool reuse = true;          // keep a run that finished with the same command
};

struct Config {
  RunConfig run;
  ModelSection model;
  TaskConfig task;
  SftConfig sft;
  ActorConfig actor;
  VerifierConfig verifier;
  LearnerConfig learner;
  LocalConfig local;
  CompareConfig compare;
};

// Loads `yaml_path` (may be empty: defaults) and then applies `overrides`, each
// "section.key=value". Validates the result.
absl::StatusOr<Config> LoadConfig(const std::string& yaml_path,
                                  const std::vector<std::string>& overrides);

// Parses a command line: `--config FILE`, `--section.key=value` / `--section.key value`
// overrides. Arguments that are not flags are returned in `positional`.
// `--help` returns a NotFound status whose message is the help text.
absl::StatusOr<Config> ConfigFromArgs(int argc, char** argv, std::vector<std::string>* positional);

// Checks ranges and the string enumerations; the message names the key. (Typed
// enumerations, common/config_enums.h, are checked when their value is parsed.)
absl::Status ValidateConfig(const Config& config);

// verifier.timeout_reward: "requeue" -> nullopt; a finite number -> it; else
// InvalidArgument naming the key.
absl::StatusOr<std::optional<double>> TimeoutRewardValue(const std::string& value);

// learner.weight_dtype with "auto" resolved against actor.dtype.
WireDtype WeightWireDtype(const Config& config);

// The effective configuration as YAML (every key, defaults included).
std::string ConfigToYaml(const Config& config);

// Help text listing every key, its default and meaning.
std::string ConfigHelp();

}  // namespace pmdrl

#endif  // PMDRL_COMMON_CONFIG_H_
