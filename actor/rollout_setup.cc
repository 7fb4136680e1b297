#include "actor/rollout_setup.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/bpe_tokenizer.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

absl::StatusOr<Rollout> BuildRollout(const v1::RegisterActorResponse& registration,
                                     const ActorConfig& config, uint64_t seed) {
  Rollout out;
  ModelConfig& model = out.model_config;
  std::unique_ptr<Tokenizer>& tokenizer = out.tokenizer;
  // The coordinator sends the text of the policy's config.json.
  absl::StatusOr<ModelConfig> parsed =
      ParseModelConfigJson(registration.model_config_json(), "model config from the coordinator");
  if (!parsed.ok()) return parsed.status();
  model = *std::move(parsed);
  if (registration.tokenizer() == "char") {
    tokenizer = std::make_unique<CharTokenizer>();
  } else if (registration.tokenizer() == "hf") {
    // The coordinator sends tokenizer.json itself: actors need no model files.
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> bpe = BpeTokenizer::FromJson(
        registration.tokenizer_json(), "tokenizer.json from the coordinator");
    if (!bpe.ok()) return bpe.status();
    tokenizer = *std::move(bpe);
  } else {
    return absl::UnimplementedError(absl::StrCat("tokenizer '", registration.tokenizer(),
                                                 "' named by the coordinator is not supported "
                                                 "by this actor (supported: char, hf)"));
  }
  if (tokenizer->VocabSize() > model.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer '", registration.tokenizer(), "' has ", tokenizer->VocabSize(),
                     " tokens but the model's vocab_size is ", model.vocab_size));
  }
  std::vector<int64_t> stop_tokens;
  if (registration.stop_ids_size() > 0) {
    for (int32_t id : registration.stop_ids()) {
      if (id < 0 || id >= model.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("stop id ", id, " from the coordinator is ",
                                                       "outside the model's vocabulary [0, ",
                                                       model.vocab_size, ")"));
      }
      stop_tokens.push_back(id);
    }
  } else {
    const int64_t eos = model.eos_token_id >= 0 ? model.eos_token_id : tokenizer->EosId();
    if (eos != tokenizer->EosId()) {
      spdlog::warn("model eos_token_id {} differs from the tokenizer's EOS {}; stopping on {}", eos,
                   tokenizer->EosId(), eos);
    }
    stop_tokens = {eos};
  }
  EngineOptions rollout;
  rollout.temperature = config.temperature;
  rollout.top_p = config.top_p;
  rollout.max_new_tokens = config.max_new_tokens;
  rollout.stop_tokens = stop_tokens;
  rollout.device = config.device;
  rollout.dtype = std::string(Name(config.dtype));
  rollout.max_rows = config.max_rows;
  rollout.max_context = config.max_context;
  rollout.threads = config.threads;
  rollout.seed = seed;
  absl::StatusOr<std::unique_ptr<GenerationEngine>> engine =
      GenerationEngine::Create(model, rollout);
  if (!engine.ok()) return engine.status();
  out.engine = *std::move(engine);
  spdlog::info(
      "model: {} layers, hidden {}, vocab {}; tokenizer {} ({} tokens); sampling T={} top_p={} "
      "max_new_tokens={} seed={}; engine {}; stop ids {}",
      model.num_hidden_layers, model.hidden_size, model.vocab_size, registration.tokenizer(),
      tokenizer->VocabSize(), rollout.temperature, rollout.top_p, rollout.max_new_tokens,
      rollout.seed, out.engine->description(), absl::StrJoin(rollout.stop_tokens, ","));
  return out;
}

}  // namespace pmdrl
