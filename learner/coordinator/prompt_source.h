// Where the coordinator's prompts come from: a place in the data stream (epoch, index)
// maps to one problem. Implementations are immutable and thread-safe (a source may cache
// internally, under its own lock).
#ifndef PMDRL_LEARNER_PROMPT_SOURCE_H_
#define PMDRL_LEARNER_PROMPT_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/chat_template.h"
#include "common/config.h"
#include "common/tokenizer.h"

namespace pmdrl {

struct PromptItem {
  std::vector<int32_t> tokens;
  std::string text;
  std::string reference;
};

class PromptSource {
 public:
  virtual ~PromptSource() = default;
  // Deterministic in (epoch, index): a resumed run sees the same problem at the same
  // place. With a finite dataset index < ItemsPerEpoch().
  virtual PromptItem Get(int64_t epoch, int64_t index) const = 0;
  // Items per epoch; 0 for an endless stream.
  virtual int64_t ItemsPerEpoch() const = 0;
  // The fixed held-out split, as prompts with references. Never drawn for training.
  virtual const std::vector<PromptItem>& HeldOut() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual std::string task() const = 0;            // grader name: "arith" | "math"
  virtual std::string tokenizer_name() const = 0;  // "char" | "hf"
  // "hf": the text of tokenizer.json, from which actors rebuild the tokenizer without
  // file access; "" otherwise.
  virtual const std::string& tokenizer_json() const = 0;
  // Token ids that end a response (EOS first; for "hf" also the chat end-of-turn and
  // generation_config.json's eos ids).
  virtual const std::vector<int32_t>& stop_ids() const = 0;
};

// task.name = arith: the built-in arithmetic task, an endless stream seeded by run.seed
// that never yields a held-out problem.
// task.name = math: JSONL problems (task.train_file / task.eval_file) with the tokenizer
// and chat format of the model directory model.path (LoadHfTokenizer); the longest prompt
// is max_position_embeddings of model.path/config.json (model.max_position when the
// directory has no config.json) minus actor.max_new_tokens. See MakeMathPromptSource.
absl::StatusOr<std::unique_ptr<PromptSource>> MakePromptSource(const Config& config);

// The math source from a tokenizer already loaded. Training problems are shuffled anew
// every epoch by a permutation that depends only on (run.seed, epoch). The held-out split
// is task.eval_file (at most task.eval_size of its problems, picked by task.eval_seed),
// or else task.eval_size problems of train_file picked by task.eval_seed and removed
// from training. Each prompt is task.prompt_template with {problem} replaced, rendered
// with task.system_prompt through the chat format (task.chat: auto = when the tokenizer
// has a recognised one; on = required; off = plain text) and encoded by
// EncodeChatPrompt. Prompts longer than `max_prompt_tokens` are skipped with a warning
// that counts them. Errors name the file, line and field, or the config key.
absl::StatusOr<std::unique_ptr<PromptSource>> MakeMathPromptSource(const Config& config,
                                                                   HfTokenizer tokenizer,
                                                                   std::string tokenizer_json,
                                                                   int64_t max_prompt_tokens);

// A prompt as the model sees it: `user` as the user turn after `system` (omitted when
// empty), rendered by RenderChat(format, ...) (style kNone: plain text). The framing
// (chat markers, system prompt) is encoded with special tokens recognised; the user
// text is encoded with allow_special = false, so a problem that contains "<|im_end|>"
// cannot end its turn.
struct EncodedPrompt {
  std::string text;
  std::vector<int32_t> tokens;
};
EncodedPrompt EncodeChatPrompt(const BpeTokenizer& tokenizer, const ChatFormat& format,
                               std::string_view system, std::string_view user);

// task.prompt_template with every "{problem}" replaced by `problem`.
std::string FillPromptTemplate(std::string_view prompt_template, std::string_view problem);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_PROMPT_SOURCE_H_
