#include "cli/tokenize.h"

#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "common/chat_template.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

constexpr char kUsage[] =
    "usage: pmdrl tokenize --model DIR [--jsonl] [--decode] [options] < input\n"
    "\n"
    "Tokenizes stdin with the tokenizer of a Hugging Face model directory (tokenizer.json,\n"
    "plus tokenizer_config.json / generation_config.json when present), one line at a\n"
    "time, and prints one JSON value per input line.\n"
    "\n"
    "Modes:\n"
    "  (default)        each input line is text; prints its ids as a JSON array\n"
    "  --jsonl          each input line is a JSON string (so texts may hold newlines);\n"
    "                   prints its ids as a JSON array\n"
    "  --decode         each input line is a JSON array of ids; prints the text as a\n"
    "                   JSON string\n"
    "\n"
    "Options:\n"
    "  --model DIR      model directory (required)\n"
    "  --chat           encode the text as the user turn of the model's chat template,\n"
    "                   with the assistant turn opened (as apply_chat_template with\n"
    "                   add_generation_prompt=True)\n"
    "  --system TEXT    system prompt for --chat (default: the template's own, if any)\n"
    "  --no-special     encode special tokens written in the text (e.g. <|im_end|>) as\n"
    "                   plain text instead of their ids (not with --chat)\n"
    "  --skip-special   with --decode: drop special tokens from the text\n"
    "  --info           print the tokenizer's vocab size, BOS/EOS/PAD, stop ids and chat\n"
    "                   format as JSON, then exit\n"
    "  --help           this text\n"
    "\n"
    "Exit codes: 0 ok; 1 bad input (the message names the line); 2 bad usage or a model\n"
    "directory that cannot be loaded.\n";

int UsageError(const std::string& message) {
  std::cerr << "pmdrl tokenize: " << message << "\n(see pmdrl tokenize --help)\n";
  return 2;
}

const char* StyleName(ChatStyle s) {
  switch (s) {
    case ChatStyle::kChatMl:
      return "chatml";
    case ChatStyle::kLlama3:
      return "llama3";
    case ChatStyle::kNone:
      break;
  }
  return "none";
}

}  // namespace

int RunTokenize(int argc, char** argv) {
  std::string model_dir, system;
  bool jsonl = false, decode = false, chat = false, no_special = false, skip_special = false,
       info = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&](std::string_view name, std::string* out) -> bool {
      if (arg == name) {
        if (i + 1 >= argc) return false;
        *out = argv[++i];
        return true;
      }
      if (arg.size() > name.size() && arg.substr(0, name.size()) == name &&
          arg[name.size()] == '=') {
        *out = std::string(arg.substr(name.size() + 1));
        return true;
      }
      return false;
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "--jsonl") {
      jsonl = true;
    } else if (arg == "--decode") {
      decode = true;
    } else if (arg == "--chat") {
      chat = true;
    } else if (arg == "--no-special") {
      no_special = true;
    } else if (arg == "--skip-special") {
      skip_special = true;
    } else if (arg == "--info") {
      info = true;
    } else if (value("--model", &model_dir) || value("--system", &system)) {
      continue;
    } else if (arg == "--model" || arg == "--system") {
      return UsageError(std::string(arg) + " needs a value");
    } else {
      return UsageError("unknown argument '" + std::string(arg) + "'");
    }
  }
  if (model_dir.empty()) return UsageError("--model DIR is required");
  if (jsonl && decode) return UsageError("--jsonl and --decode exclude each other");
  if (decode && (chat || no_special)) return UsageError("--chat and --no-special are for encoding");
  if (skip_special && !decode) return UsageError("--skip-special is for --decode");
  if (!system.empty() && !chat) return UsageError("--system needs --chat");
  // The template's own special tokens must map to their ids.
  if (chat && no_special) return UsageError("--no-special cannot be combined with --chat");

  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(model_dir);
  if (!hf.ok()) {
    std::cerr << "pmdrl tokenize: " << hf.status().message() << "\n";
    return 2;
  }
  const BpeTokenizer& tok = *hf->tokenizer;
  if (info) {
    json j = {{"vocab_size", tok.VocabSize()},
              {"bos_id", tok.BosId()},
              {"eos_id", tok.EosId()},
              {"pad_id", tok.PadId()},
              {"stop_ids", hf->stop_ids},
              {"chat_format", StyleName(hf->chat_format.style)},
              {"default_system", hf->chat_format.default_system}};
    std::cout << j.dump() << "\n";
    return 0;
  }
  if (chat && hf->chat_format.style == ChatStyle::kNone) {
    std::cerr << "pmdrl tokenize: --chat: " << model_dir
              << " has no chat template of a known format (ChatML, Llama 3); the text is "
                 "encoded as \"system\\n\\nuser\"\n";
  }

  std::ios::sync_with_stdio(false);
  const bool interactive = isatty(STDIN_FILENO);
  std::string line;
  for (int64_t line_no = 1; std::getline(std::cin, line); ++line_no) {
    auto bad = [&](const std::string& what) {
      std::cout.flush();
      std::cerr << "pmdrl tokenize: line " << line_no << ": " << what << "\n";
      return 1;
    };
    if (decode) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_array()) return bad("expected a JSON array of token ids");
      std::vector<int32_t> ids;
      ids.reserve(j.size());
      for (size_t k = 0; k < j.size(); ++k) {
        const json& v = j[k];
        if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN ||
            v.get<int64_t>() > INT32_MAX) {
          return bad("element " + std::to_string(k) + " (" + v.dump() + ") is not a token id");
        }
        ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
      // Decode replaces invalid UTF-8 with U+FFFD, so the dump cannot throw.
      std::cout << json(tok.Decode(ids, skip_special)).dump() << "\n";
    } else {
      std::string text;
      if (jsonl) {
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_string()) return bad("expected a JSON string");
        text = j.get<std::string>();
      } else {
        text = std::move(line);
      }
      if (chat) text = RenderChat(hf->chat_format, system, text);
      std::vector<int32_t> ids = tok.Encode(text, /*allow_special=*/!no_special);
      std::cout << json(ids).dump() << "\n";
    }
    if (interactive) std::cout.flush();
  }
  std::cout.flush();
  return 0;
}

}  // namespace pmdrl
