// Chat prompts and the tokenizer of a Hugging Face model directory: what
// transformers' AutoTokenizer + apply_chat_template(..., add_generation_prompt=True)
// give for a [system?, user] conversation, without a Jinja engine. The chat format is
// recognised from the template text (ChatML for Qwen, header tokens for Llama 3) and
// rendered by hand.
#ifndef PMDRL_COMMON_CHAT_TEMPLATE_H_
#define PMDRL_COMMON_CHAT_TEMPLATE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/bpe_tokenizer.h"

namespace pmdrl {

enum class ChatStyle {
  kNone,    // no (recognised) chat template: RenderChat joins the texts plainly
  kChatMl,  // Qwen2 / Qwen2.5 / Qwen3: <|im_start|>role\n...<|im_end|>\n
  kLlama3,  // Llama 3.x: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
};

// What RenderChat needs to know about a model's template. A value type; build it with
// DetectChatFormat or one of the named presets.
struct ChatFormat {
  ChatStyle style = ChatStyle::kNone;
  // ChatML: the system prompt the template inserts when the conversation has none
  // (Qwen2.5: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
  // Qwen3: none, so no system turn at all).
  std::string default_system;
  // Llama 3: the BOS text the template starts with (its bos_token).
  std::string bos_token = "<|begin_of_text|>";
  // Llama 3.1 and later: the date of the "Cutting Knowledge Date: December 2023\n
  // Today Date: DATE\n\n" lines that open the system turn (which is then always
  // present). Empty: plain Llama 3 (system turn only when given).
  std::string today_date;

  static ChatFormat Qwen25();
  static ChatFormat Qwen3();
  static ChatFormat Llama3();
  static ChatFormat Llama31(std::string date = "26 Jul 2024");
};

// Recognises the format of a Jinja chat template. ChatML's default system prompt is
// read from the template's literal "<|im_start|>system\n...<|im_end|>" text. For Llama
// 3.1+ the date is the template's literal date_string, or today's ("%d %b %Y", as
// transformers' strftime_now) when the template calls strftime_now (Llama 3.2/3.3).
ChatFormat DetectChatFormat(std::string_view chat_template, std::string_view bos_token);

// The prompt for [system (omitted when empty), user] with the assistant turn opened,
// exactly as apply_chat_template(..., add_generation_prompt=True, tokenize=False) gives
// it for the formats above (Llama 3 trims the messages, as its template does; ChatML
// does not). kNone: "system\n\nuser", or just user.
std::string RenderChat(const ChatFormat& format, std::string_view system, std::string_view user);

// The tokenizer side of a model directory.
struct HfTokenizer {
  // With BosId/EosId/PadId set from tokenizer_config.json (-1 where it has none).
  std::shared_ptr<const BpeTokenizer> tokenizer;
  // Generation stops at any of these: the EOS id, generation_config.json's
  // eos_token_id (an int or a list) and the chat format's end-of-turn token
  // (<|im_end|>, <|eot_id|>) when the tokenizer has it. No duplicates, EOS first.
  std::vector<int32_t> stop_ids;
  ChatFormat chat_format;
};

// Reads model_dir/tokenizer.json (required), tokenizer_config.json (optional: bos_token,
// eos_token, pad_token as strings or {"content": ...} objects, chat_template as a
// string or a list of {name, template}; chat_template.jinja is read when the config
// has none) and generation_config.json (optional). Errors name the file and the field.
absl::StatusOr<HfTokenizer> LoadHfTokenizer(const std::string& model_dir);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_CHAT_TEMPLATE_H_
