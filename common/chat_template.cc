#include "common/chat_template.h"

#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

// Debian's Abseil has its own string_view type, not std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Undoes the escapes of a Jinja string literal ("\n", "\\", "\'", "\"").
std::string UnescapeJinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The value of the first `date_string = "..."` assignment in a template, or "".
std::string LiteralDateString(const std::string& tpl) {
  constexpr std::string_view kName = "date_string";
  for (size_t at = tpl.find(kName); at != std::string::npos; at = tpl.find(kName, at + 1)) {
    size_t i = at + kName.size();
    while (i < tpl.size() && tpl[i] == ' ') ++i;
    if (i >= tpl.size() || tpl[i] != '=' || (i + 1 < tpl.size() && tpl[i + 1] == '=')) continue;
    ++i;
    while (i < tpl.size() && tpl[i] == ' ') ++i;
    if (i >= tpl.size() || tpl[i] != '"') continue;
    size_t end = tpl.find('"', i + 1);
    if (end != std::string::npos) return tpl.substr(i + 1, end - i - 1);
  }
  return "";
}

std::string Today() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

absl::StatusOr<json> ReadJsonFile(const std::filesystem::path& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a valid JSON object"));
  }
  return j;
}

// The text of a special-token field: a string, {"content": ...}, or absent/null ("").
absl::StatusOr<std::string> TokenText(const json& config, const char* key,
                                      const std::string& origin) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      origin, ": ", key, ": must be a string, null or an object with a \"content\" string"));
}

void AddUnique(std::vector<int32_t>* ids, int32_t id) {
  if (id < 0) return;
  for (int32_t x : *ids) {
    if (x == id) return;
  }
  ids->push_back(id);
}

}  // namespace

ChatFormat ChatFormat::Qwen25() {
  ChatFormat f;
  f.style = ChatStyle::kChatMl;
  f.default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
  return f;
}

ChatFormat ChatFormat::Qwen3() {
  ChatFormat f;
  f.style = ChatStyle::kChatMl;
  return f;
}

ChatFormat ChatFormat::Llama3() {
  ChatFormat f;
  f.style = ChatStyle::kLlama3;
  return f;
}

ChatFormat ChatFormat::Llama31(std::string date) {
  ChatFormat f = Llama3();
  f.today_date = std::move(date);
  return f;
}

ChatFormat DetectChatFormat(std::string_view chat_template, std::string_view bos_token) {
  const std::string tpl(chat_template);
  ChatFormat f;
  if (tpl.find("<|im_start|>") != std::string::npos) {
    f.style = ChatStyle::kChatMl;
    // A literal default system turn: "<|im_start|>system\n" then text without quotes
    // (so not "' + messages[0]['content'] + '") up to "<|im_end|>".
    constexpr std::string_view kOpen = "<|im_start|>system\\n", kClose = "<|im_end|>";
    for (size_t at = tpl.find(kOpen); at != std::string::npos; at = tpl.find(kOpen, at + 1)) {
      size_t begin = at + kOpen.size();
      size_t end = tpl.find(kClose, begin);
      if (end == std::string::npos) break;
      std::string_view body = std::string_view(tpl).substr(begin, end - begin);
      if (body.find_first_of("'\"") == std::string_view::npos) {
        f.default_system = UnescapeJinja(body);
        break;
      }
    }
    return f;
  }
  if (tpl.find("<|start_header_id|>") != std::string::npos) {
    f.style = ChatStyle::kLlama3;
    if (!bos_token.empty()) f.bos_token = std::string(bos_token);
    if (tpl.find("Cutting Knowledge Date") != std::string::npos) {
      if (tpl.find("strftime_now") != std::string::npos) {
        f.today_date = Today();
      } else {
        f.today_date = LiteralDateString(tpl);
        if (f.today_date.empty()) f.today_date = "26 Jul 2024";
      }
    }
    return f;
  }
  return f;
}

std::string RenderChat(const ChatFormat& format, std::string_view system, std::string_view user) {
  switch (format.style) {
    case ChatStyle::kChatMl: {
      std::string out;
      std::string_view sys = system.empty() ? std::string_view(format.default_system) : system;
      if (!sys.empty()) absl::StrAppend(&out, "<|im_start|>system\n", Av(sys), "<|im_end|>\n");
      absl::StrAppend(&out, "<|im_start|>user\n", Av(user), "<|im_end|>\n<|im_start|>assistant\n");
      return out;
    }
    case ChatStyle::kLlama3: {
      constexpr absl::string_view kHeadEnd = "<|end_header_id|>\n\n";
      std::string out = format.bos_token;
      absl::string_view sys = absl::StripAsciiWhitespace(Av(system));
      if (!format.today_date.empty()) {
        absl::StrAppend(&out, "<|start_header_id|>system", kHeadEnd,
                        "Cutting Knowledge Date: December 2023\nToday Date: ", format.today_date,
                        "\n\n", sys, "<|eot_id|>");
      } else if (!sys.empty()) {
        absl::StrAppend(&out, "<|start_header_id|>system", kHeadEnd, sys, "<|eot_id|>");
      }
      absl::StrAppend(&out, "<|start_header_id|>user", kHeadEnd,
                      absl::StripAsciiWhitespace(Av(user)),
                      "<|eot_id|><|start_header_id|>assistant", kHeadEnd);
      return out;
    }
    case ChatStyle::kNone:
      break;
  }
  if (system.empty()) return std::string(user);
  return absl::StrCat(Av(system), "\n\n", Av(user));
}

absl::StatusOr<HfTokenizer> LoadHfTokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok =
      BpeTokenizer::FromFile((dir / "tokenizer.json").string());
  if (!tok.ok()) return tok.status();
  BpeTokenizer& t = **tok;

  HfTokenizer out;
  std::string chat_template, bos_text;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    absl::StatusOr<json> config = ReadJsonFile(config_path);
    if (!config.ok()) return config.status();
    const std::string origin = config_path.string();
    struct Field {
      const char* key;
      void (BpeTokenizer::*set)(int32_t);
    };
    for (const Field& f :
         {Field{"bos_token", &BpeTokenizer::SetBosId}, Field{"eos_token", &BpeTokenizer::SetEosId},
          Field{"pad_token", &BpeTokenizer::SetPadId}}) {
      absl::StatusOr<std::string> text = TokenText(*config, f.key, origin);
      if (!text.ok()) return text.status();
      if (text->empty()) continue;
      int32_t id = t.TokenToId(*text);
      if (id < 0) {
        return absl::InvalidArgumentError(absl::StrCat(origin, ": ", f.key, ": \"", *text,
                                                       "\" is not a token of ", model_dir,
                                                       "/tokenizer.json"));
      }
      (t.*f.set)(id);
      if (std::string_view(f.key) == "bos_token") bos_text = *text;
    }
    if (auto ct = config->find("chat_template"); ct != config->end() && !ct->is_null()) {
      if (ct->is_string()) {
        chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        // Older multi-template form: [{"name": "default", "template": ...}, ...].
        for (const json& e : *ct) {
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
              e["template"].is_string()) {
            chat_template = e["template"].get<std::string>();
          }
        }
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": chat_template: must be a string or a list of templates"));
      }
    }
  }
  if (chat_template.empty() && fs::exists(dir / "chat_template.jinja")) {
    absl::StatusOr<std::string> text = ReadFile(dir / "chat_template.jinja");
    if (!text.ok()) return text.status();
    chat_template = *text;
  }
  out.chat_format = DetectChatFormat(chat_template, bos_text);

  AddUnique(&out.stop_ids, t.EosId());
  const fs::path gen_path = dir / "generation_config.json";
  if (fs::exists(gen_path)) {
    absl::StatusOr<json> gen = ReadJsonFile(gen_path);
    if (!gen.ok()) return gen.status();
    const std::string field = absl::StrCat(gen_path.string(), ": eos_token_id");
    if (auto e = gen->find("eos_token_id"); e != gen->end() && !e->is_null()) {
      std::vector<json> values =
          e->is_array() ? e->get<std::vector<json>>() : std::vector<json>{*e};
      for (const json& v : values) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= t.VocabSize()) {
          return absl::InvalidArgumentError(absl::StrCat(field, ": ", v.dump(),
                                                         " is not a token id of the tokenizer (0..",
                                                         t.VocabSize() - 1, ")"));
        }
        AddUnique(&out.stop_ids, static_cast<int32_t>(v.get<int64_t>()));
      }
    }
  }
  // A base model's EOS is often <|endoftext|>, yet in a chat prompt it ends its turn
  // with the template's end-of-turn token: stop there too.
  if (out.chat_format.style == ChatStyle::kChatMl)
    AddUnique(&out.stop_ids, t.TokenToId("<|im_end|>"));
  if (out.chat_format.style == ChatStyle::kLlama3)
    AddUnique(&out.stop_ids, t.TokenToId("<|eot_id|>"));

  out.tokenizer = std::shared_ptr<const BpeTokenizer>(std::move(*tok));
  return out;
}

}  // namespace pmdrl
