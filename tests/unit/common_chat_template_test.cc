#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/chat_template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// Excerpts of the real templates, as they appear in tokenizer_config.json (after JSON
// decoding: "\n" inside Jinja string literals is still backslash-n).
constexpr char kQwen25Template[] = R"({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %})";

constexpr char kQwen3Template[] = R"({%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }})";

constexpr char kLlama3Template[] =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";

constexpr char kLlama31Template[] = R"({{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }})";

TEST(ChatTemplateTest, RendersQwen25WithItsDefaultSystemPrompt) {
  EXPECT_EQ(RenderChat(ChatFormat::Qwen25(), "", "What is 1+1?"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderChat(ChatFormat::Qwen25(), "Be brief.", " x \n"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n x \n<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, RendersQwen3WithoutDefaultSystemPrompt) {
  EXPECT_EQ(RenderChat(ChatFormat::Qwen3(), "", "Hi"),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(RenderChat(ChatFormat::Qwen3(), "S", "Hi"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, RendersLlama3AndTrimsMessages) {
  EXPECT_EQ(RenderChat(ChatFormat::Llama3(), "", "  Hi\n"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderChat(ChatFormat::Llama3(), "Sys ", "Hi"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderChat(ChatFormat::Llama31(), "", "Hi"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, PlainFormatJoinsTexts) {
  EXPECT_EQ(RenderChat(ChatFormat{}, "", "Q"), "Q");
  EXPECT_EQ(RenderChat(ChatFormat{}, "S", "Q"), "S\n\nQ");
}

TEST(ChatTemplateTest, DetectsFormatsFromTemplates) {
  ChatFormat q25 = DetectChatFormat(kQwen25Template, "");
  EXPECT_EQ(q25.style, ChatStyle::kChatMl);
  EXPECT_EQ(q25.default_system, ChatFormat::Qwen25().default_system);

  ChatFormat q3 = DetectChatFormat(kQwen3Template, "");
  EXPECT_EQ(q3.style, ChatStyle::kChatMl);
  EXPECT_EQ(q3.default_system, "");

  ChatFormat l3 = DetectChatFormat(kLlama3Template, "<|begin_of_text|>");
  EXPECT_EQ(l3.style, ChatStyle::kLlama3);
  EXPECT_EQ(l3.today_date, "");
  EXPECT_EQ(l3.bos_token, "<|begin_of_text|>");

  ChatFormat l31 = DetectChatFormat(kLlama31Template, "<|begin_of_text|>");
  EXPECT_EQ(l31.style, ChatStyle::kLlama3);
  EXPECT_EQ(l31.today_date, "26 Jul 2024");

  // Llama 3.2/3.3 call strftime_now: transformers renders today's date ("%d %b %Y").
  std::string l32_template =
      std::string(kLlama31Template) + R"({%- set date_string = strftime_now("%d %b %Y") %})";
  ChatFormat l32 = DetectChatFormat(l32_template, "<|begin_of_text|>");
  EXPECT_EQ(l32.today_date.size(), 11u) << l32.today_date;
  EXPECT_NE(l32.today_date, "26 Jul 2024");

  EXPECT_EQ(DetectChatFormat("{{ messages }}", "").style, ChatStyle::kNone);
  EXPECT_EQ(DetectChatFormat("", "").style, ChatStyle::kNone);
}

// A tokenizer.json with the 256 byte tokens and a few chat tokens.
json ChatTokenizerJson() {
  auto direct = [](int x) {
    return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
  };
  json vocab = json::object();
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = direct(b) ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    vocab[s] = b;
  }
  json added = json::array();
  int id = 256;
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) {
    added.push_back({{"id", id++}, {"content", t}, {"special", true}});
  }
  json j;
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}};
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["added_tokens"] = added;
  return j;
}

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("chat_template_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    Write("tokenizer.json", ChatTokenizerJson().dump());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(ModelDirTest, LoadsQwenStyleDirectory) {
  json config = {{"bos_token", nullptr},
                 {"eos_token", {{"content", "<|im_end|>"}, {"__type", "AddedToken"}}},
                 {"pad_token", "<|endoftext|>"},
                 {"chat_template", kQwen25Template}};
  Write("tokenizer_config.json", config.dump());
  Write("generation_config.json", R"({"eos_token_id": [258, 256], "do_sample": true})");
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(dir_.string());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->tokenizer->BosId(), -1);
  EXPECT_EQ(hf->tokenizer->EosId(), 258);
  EXPECT_EQ(hf->tokenizer->PadId(), 256);
  EXPECT_THAT(hf->stop_ids, ElementsAre(258, 256));
  EXPECT_EQ(hf->chat_format.style, ChatStyle::kChatMl);
  EXPECT_EQ(hf->chat_format.default_system, ChatFormat::Qwen25().default_system);
  std::vector<int32_t> ids = hf->tokenizer->Encode(RenderChat(hf->chat_format, "", "Hi"));
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 257);  // <|im_start|> as one token
  EXPECT_EQ(hf->tokenizer->Decode(ids, /*skip_special=*/true).find("<|im"), std::string::npos);
}

TEST_F(ModelDirTest, LoadsLlamaStyleDirectoryWithJinjaFile) {
  Write("tokenizer_config.json",
        R"({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})");
  Write("chat_template.jinja", kLlama3Template);
  Write("generation_config.json", R"({"eos_token_id": 256})");
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(dir_.string());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->tokenizer->BosId(), 259);
  EXPECT_EQ(hf->tokenizer->PadId(), -1);
  EXPECT_THAT(hf->stop_ids, ElementsAre(262, 256));
  EXPECT_EQ(hf->chat_format.style, ChatStyle::kLlama3);
  std::vector<int32_t> ids = hf->tokenizer->Encode(RenderChat(hf->chat_format, "", "Hi"));
  EXPECT_THAT(std::vector<int32_t>(ids.begin(), ids.begin() + 2), ElementsAre(259, 260));
}

TEST_F(ModelDirTest, TokenizerJsonAloneIsEnough) {
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(dir_.string());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->tokenizer->EosId(), -1);
  EXPECT_TRUE(hf->stop_ids.empty());
  EXPECT_EQ(hf->chat_format.style, ChatStyle::kNone);
}

TEST_F(ModelDirTest, ErrorsNameFileAndField) {
  Write("tokenizer_config.json", R"({"eos_token": "<|nope|>"})");
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(dir_.string());
  ASSERT_FALSE(hf.ok());
  EXPECT_THAT(hf.status().message(), HasSubstr("tokenizer_config.json: eos_token"));
  EXPECT_THAT(hf.status().message(), HasSubstr("<|nope|>"));

  Write("tokenizer_config.json", R"({"pad_token": 7})");
  hf = LoadHfTokenizer(dir_.string());
  ASSERT_FALSE(hf.ok());
  EXPECT_THAT(hf.status().message(), HasSubstr("tokenizer_config.json: pad_token"));

  Write("tokenizer_config.json", "{}");
  Write("generation_config.json", R"({"eos_token_id": [258, "x"]})");
  hf = LoadHfTokenizer(dir_.string());
  ASSERT_FALSE(hf.ok());
  EXPECT_THAT(hf.status().message(), HasSubstr("generation_config.json: eos_token_id"));

  Write("generation_config.json", "{oops");
  hf = LoadHfTokenizer(dir_.string());
  ASSERT_FALSE(hf.ok());
  EXPECT_THAT(hf.status().message(), HasSubstr("generation_config.json"));

  hf = LoadHfTokenizer((dir_ / "missing").string());
  ASSERT_FALSE(hf.ok());
  EXPECT_THAT(hf.status().message(), HasSubstr("tokenizer.json"));
}

}  // namespace
}  // namespace pmdrl
