#include "common/validate.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace pmdrl {
namespace {

// Sampling log-probs are <= 0 in exact arithmetic; float rounding of a log-softmax
// can land a hair above.
constexpr float kMaxLogprob = 1e-4f;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid group: ", what));
}

absl::Status CheckText(absl::string_view field, const std::string& text, int64_t limit) {
  if (static_cast<int64_t>(text.size()) > limit) {
    return Invalid(
        absl::StrFormat("%s has %d bytes, more than the limit %d", field, text.size(), limit));
  }
  return absl::OkStatus();
}

absl::Status CheckTokens(absl::string_view field,
                         const google::protobuf::RepeatedField<int32_t>& tokens, int64_t max_len,
                         int64_t vocab_size) {
  if (tokens.empty()) return Invalid(absl::StrCat(field, " is empty"));
  if (tokens.size() > max_len) {
    return Invalid(
        absl::StrFormat("%s has %d tokens, more than the limit %d", field, tokens.size(), max_len));
  }
  for (int i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return Invalid(
          absl::StrFormat("%s[%d] = %d is out of range [0, %d)", field, i, tokens[i], vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSeconds(absl::string_view field, double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return Invalid(absl::StrCat(field, " = ", seconds, " is not a finite value >= 0"));
  }
  return absl::OkStatus();
}

absl::Status CheckCompletion(const v1::Completion& c, int index, const GroupLimits& limits,
                             bool scored) {
  const std::string prefix = absl::StrCat("completions[", index, "]");
  if (absl::Status s = CheckTokens(absl::StrCat(prefix, ".tokens"), c.tokens(),
                                   limits.max_response_tokens, limits.vocab_size);
      !s.ok()) {
    return s;
  }
  if (c.logprobs_size() != c.tokens_size()) {
    return Invalid(absl::StrFormat("%s.logprobs has %d entries but tokens has %d", prefix,
                                   c.logprobs_size(), c.tokens_size()));
  }
  for (int t = 0; t < c.logprobs_size(); ++t) {
    const float lp = c.logprobs(t);
    if (!std::isfinite(lp) || lp > kMaxLogprob) {
      return Invalid(
          absl::StrCat(prefix, ".logprobs[", t, "] = ", lp, " is not a finite value <= 0"));
    }
  }
  if (absl::Status s = CheckText(absl::StrCat(prefix, ".text"), c.text(), limits.max_text_bytes);
      !s.ok()) {
    return s;
  }
  if (!v1::Outcome_IsValid(c.outcome())) {
    return Invalid(absl::StrCat(prefix, ".outcome = ", static_cast<int>(c.outcome()),
                                " is not a known Outcome"));
  }
  if (scored) {
    if (!std::isfinite(c.reward())) {
      return Invalid(absl::StrCat(prefix, ".reward = ", c.reward(), " is not finite"));
    }
    if (c.outcome() == v1::OUTCOME_UNSCORED) {
      return Invalid(absl::StrCat(prefix, ".outcome is OUTCOME_UNSCORED in a scored group"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGroup(const v1::Group& group, const GroupLimits& limits, bool scored) {
  if (group.lease_id().empty()) return Invalid("lease_id is empty");
  for (const auto& [field, text] :
       {std::pair<absl::string_view, const std::string*>{"lease_id", &group.lease_id()},
        {"actor_id", &group.actor_id()},
        {"verifier_id", &group.verifier_id()},
        {"prompt_text", &group.prompt_text()},
        {"reference", &group.reference()},
        {"task", &group.task()}}) {
    if (absl::Status s = CheckText(field, *text, limits.max_text_bytes); !s.ok()) return s;
  }
  if (absl::Status s = CheckTokens("prompt_tokens", group.prompt_tokens(), limits.max_prompt_tokens,
                                   limits.vocab_size);
      !s.ok()) {
    return s;
  }
  if (group.completions_size() != limits.group_size) {
    return Invalid(absl::StrFormat("completions has %d entries, expected group_size %d",
                                   group.completions_size(), limits.group_size));
  }
  for (int i = 0; i < group.completions_size(); ++i) {
    if (absl::Status s = CheckCompletion(group.completions(i), i, limits, scored); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckSeconds("generate_seconds", group.generate_seconds()); !s.ok()) {
    return s;
  }
  return CheckSeconds("verify_seconds", group.verify_seconds());
}

}  // namespace pmdrl
