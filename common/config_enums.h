// The enumerated configuration keys of common/config.h, as typed values. Each is parsed
// from its config spelling once, when the configuration is loaded (a bad value is a
// config error naming the key and the allowed values), and printed back with Name() in
// the effective-config dump and checkpoints' config.yaml, so the YAML text is the same
// as when these keys were strings.
#ifndef PMDRL_COMMON_CONFIG_ENUMS_H_
#define PMDRL_COMMON_CONFIG_ENUMS_H_

#include <array>
#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

// learner.loss: pmd_mean | pmd_part | grpo | gspo (learner/training/policy_loss.h).
enum class LossKind { kPmdMean, kPmdPart, kGrpo, kGspo };
// learner.baseline: mean | loo. b = (1/k) Σ_i r_i (kMean) or
// b_j = (1/(k−1)) Σ_{i≠j} r_i (kLeaveOneOut).
enum class Baseline { kMean, kLeaveOneOut };
// learner.length_norm: token | max. Divide each completion's loss by its own response
// length L_j (kTokens) or by the maximum response length of the global mini-batch (kMax).
enum class LengthNorm { kTokens, kMax };
// learner.old_logprobs: actor (π_old as recorded while sampling) | recompute (by the
// learner before the first optimizer step of a batch).
enum class OldLogprobs { kActor, kRecompute };
// learner.importance_weights: none | truncated (min(is_cap, π_old/π_actor) per sequence).
enum class ImportanceWeights { kNone, kTruncated };

// actor.dtype: the engine's weights, activations and KV cache (engine/generation_engine.h).
enum class ActorDtype { kFloat32, kBfloat16, kFloat16 };
// learner.dtype: compute precision; master weights and AdamW state stay float32.
enum class LearnerDtype { kFloat32, kBfloat16 };
// learner.weight_dtype: the weights sent to the actors; kAuto is bfloat16 when actor.dtype
// is, else float32 (WeightWireDtype, common/config.h).
enum class WeightDtype { kAuto, kFloat32, kBfloat16 };
// learner.backend: the collectives; kAuto is gloo with learner.device cpu, nccl with cuda.
enum class LearnerBackend { kAuto, kGloo, kNccl };

// task.name: arith (the built-in generator) | math (JSONL problems).
enum class TaskName { kArith, kMath };
// task.chat: auto (the model's chat format when it has one) | on | off.
enum class ChatMode { kAuto, kOn, kOff };

// Each enum's config key and spellings, indexed by the enumerator's value.
template <typename E>
struct ConfigEnum;
template <>
struct ConfigEnum<LossKind> {
  static constexpr std::string_view kKey = "learner.loss";
  static constexpr std::array<std::string_view, 4> kNames = {"pmd_mean", "pmd_part", "grpo",
                                                             "gspo"};
};
template <>
struct ConfigEnum<Baseline> {
  static constexpr std::string_view kKey = "learner.baseline";
  static constexpr std::array<std::string_view, 2> kNames = {"mean", "loo"};
};
template <>
struct ConfigEnum<LengthNorm> {
  static constexpr std::string_view kKey = "learner.length_norm";
  static constexpr std::array<std::string_view, 2> kNames = {"token", "max"};
};
template <>
struct ConfigEnum<OldLogprobs> {
  static constexpr std::string_view kKey = "learner.old_logprobs";
  static constexpr std::array<std::string_view, 2> kNames = {"actor", "recompute"};
};
template <>
struct ConfigEnum<ImportanceWeights> {
  static constexpr std::string_view kKey = "learner.importance_weights";
  static constexpr std::array<std::string_view, 2> kNames = {"none", "truncated"};
};

template <>
struct ConfigEnum<ActorDtype> {
  static constexpr std::string_view kKey = "actor.dtype";
  static constexpr std::array<std::string_view, 3> kNames = {"float32", "bfloat16", "float16"};
};
template <>
struct ConfigEnum<LearnerDtype> {
  static constexpr std::string_view kKey = "learner.dtype";
  static constexpr std::array<std::string_view, 2> kNames = {"float32", "bfloat16"};
};
template <>
struct ConfigEnum<WeightDtype> {
  static constexpr std::string_view kKey = "learner.weight_dtype";
  static constexpr std::array<std::string_view, 3> kNames = {"auto", "float32", "bfloat16"};
};
template <>
struct ConfigEnum<LearnerBackend> {
  static constexpr std::string_view kKey = "learner.backend";
  static constexpr std::array<std::string_view, 3> kNames = {"auto", "gloo", "nccl"};
};

template <>
struct ConfigEnum<TaskName> {
  static constexpr std::string_view kKey = "task.name";
  static constexpr std::array<std::string_view, 2> kNames = {"arith", "math"};
};
template <>
struct ConfigEnum<ChatMode> {
  static constexpr std::string_view kKey = "task.chat";
  static constexpr std::array<std::string_view, 3> kNames = {"auto", "on", "off"};
};

// An enum's config spelling, e.g. Name(LossKind::kGrpo) == "grpo".
template <typename E>
requires requires { ConfigEnum<E>::kNames; }
constexpr std::string_view Name(E value) {
  return ConfigEnum<E>::kNames[static_cast<size_t>(value)];
}

// ParseConfigEnum's error (common/config_enums.cc).
absl::Status BadConfigEnumValue(std::string_view key, std::string_view text,
                                const std::string_view* names, size_t count);

// The value spelled `text` exactly. Error (InvalidArgument): "config key 'K': bad value
// 'TEXT' (want one of: A, B, ...)".
template <typename E>
requires requires { ConfigEnum<E>::kNames; }
absl::StatusOr<E> ParseConfigEnum(std::string_view text) {
  for (size_t i = 0; i < ConfigEnum<E>::kNames.size(); ++i) {
    if (text == ConfigEnum<E>::kNames[i]) return static_cast<E>(i);
  }
  return BadConfigEnumValue(ConfigEnum<E>::kKey, text, ConfigEnum<E>::kNames.data(),
                            ConfigEnum<E>::kNames.size());
}

inline absl::StatusOr<LossKind> ParseLossKind(std::string_view name) {
  return ParseConfigEnum<LossKind>(name);
}
inline absl::StatusOr<Baseline> ParseBaseline(std::string_view name) {
  return ParseConfigEnum<Baseline>(name);
}
inline absl::StatusOr<LengthNorm> ParseLengthNorm(std::string_view name) {
  return ParseConfigEnum<LengthNorm>(name);
}
inline absl::StatusOr<OldLogprobs> ParseOldLogprobs(std::string_view name) {
  return ParseConfigEnum<OldLogprobs>(name);
}
inline absl::StatusOr<ImportanceWeights> ParseImportanceWeights(std::string_view name) {
  return ParseConfigEnum<ImportanceWeights>(name);
}

}  // namespace pmdrl

#endif  // PMDRL_COMMON_CONFIG_ENUMS_H_
