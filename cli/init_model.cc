#include "cli/init_model.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kUsage[] =
    "usage: pmdrl init-model --arch llama|qwen2|qwen3 --out DIR [options]\n"
    "Writes a randomly initialised model directory in Hugging Face layout (config.json +\n"
    "model.safetensors), loadable by pmdrl and by transformers.\n"
    "\n"
    "  --vocab-size N         vocabulary (default 1000, or the tokenizer's size)\n"
    "  --hidden-size N        default 64\n"
    "  --layers N             default 2\n"
    "  --heads N              attention heads, default 4\n"
    "  --kv-heads N           key/value heads (grouped-query), default 2\n"
    "  --head-dim N           default hidden-size / heads\n"
    "  --intermediate-size N  MLP width, default 128\n"
    "  --max-positions N      max_position_embeddings, default 2048\n"
    "  --rope-theta X         default 10000\n"
    "  --tie                  tie lm_head to the embedding\n"
    "  --seed N               initialisation seed, default 0\n"
    "  --dtype float32|bfloat16|float16   file dtype, default float32\n"
    "  --tokenizer-from DIR   copy tokenizer.json, tokenizer_config.json,\n"
    "                         special_tokens_map.json, generation_config.json (those present)\n"
    "                         from DIR; the vocabulary defaults to the tokenizer's size and\n"
    "                         bos/eos/pad come from its configs\n";

// --key value, --key=value, and the boolean flags in `bools`.
absl::StatusOr<std::map<std::string, std::string>> ParseFlags(int argc, char** argv,
                                                              const std::set<std::string>& known,
                                                              const std::set<std::string>& bools) {
  std::map<std::string, std::string> out;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    arg = arg.substr(2);
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (bools.count(arg)) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
    }
    if (!known.count(arg) && !bools.count(arg)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", arg));
    }
    out[arg] = value;
  }
  return out;
}

absl::Status GetInt(const std::map<std::string, std::string>& flags, const std::string& key,
                    int64_t* out) {
  auto it = flags.find(key);
  if (it == flags.end()) return absl::OkStatus();
  if (!absl::SimpleAtoi(it->second, out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", key, ": '", it->second, "' is not an integer"));
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ReadJsonFile(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not valid JSON: ", e.what()));
  }
}

// tokenizer_config.json's "eos_token": a string, {"content": "..."} (older files), or null.
std::string TokenText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

int64_t FirstId(const json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
}

int Fail(const std::string& what) {
  std::cerr << "pmdrl init-model: " << what << "\n";
  return 2;
}

}  // namespace

absl::StatusOr<TokenizerFacts> ReadTokenizerFacts(const std::string& dir) {
  const fs::path root(dir);
  absl::StatusOr<json> tok = ReadJsonFile(root / "tokenizer.json");
  if (!tok.ok()) return tok.status();
  TokenizerFacts facts;
  std::map<std::string, int64_t> ids;  // token text -> id, for the *_token lookups
  try {
    if (auto m = tok->find("model"); m != tok->end() && m->is_object()) {
      if (auto v = m->find("vocab"); v != m->end() && v->is_object()) {
        for (auto it = v->begin(); it != v->end(); ++it) {
          const int64_t id = it.value().get<int64_t>();
          ids[it.key()] = id;
          facts.vocab_size = std::max(facts.vocab_size, id + 1);
        }
      }
    }
    if (auto a = tok->find("added_tokens"); a != tok->end() && a->is_array()) {
      for (const json& t : *a) {
        const int64_t id = t.at("id").get<int64_t>();
        ids[t.at("content").get<std::string>()] = id;
        facts.vocab_size = std::max(facts.vocab_size, id + 1);
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat((root / "tokenizer.json").string(), ": unexpected layout: ", e.what()));
  }
  if (facts.vocab_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat((root / "tokenizer.json").string(),
                                                   ": no model.vocab or added_tokens entries"));
  }
  if (fs::exists(root / "tokenizer_config.json")) {
    absl::StatusOr<json> cfg = ReadJsonFile(root / "tokenizer_config.json");
    if (!cfg.ok()) return cfg.status();
    auto lookup = [&](const char* key, int64_t* out) {
      if (!cfg->contains(key)) return;
      auto it = ids.find(TokenText((*cfg)[key]));
      if (it != ids.end()) *out = it->second;
    };
    lookup("bos_token", &facts.bos_token_id);
    lookup("eos_token", &facts.eos_token_id);
    lookup("pad_token", &facts.pad_token_id);
  }
  if (fs::exists(root / "generation_config.json")) {
    absl::StatusOr<json> gen = ReadJsonFile(root / "generation_config.json");
    if (!gen.ok()) return gen.status();
    const std::pair<const char*, int64_t*> keys[] = {{"bos_token_id", &facts.bos_token_id},
                                                     {"eos_token_id", &facts.eos_token_id},
                                                     {"pad_token_id", &facts.pad_token_id}};
    for (const auto& [key, out] : keys) {
      if (gen->contains(key) && FirstId((*gen)[key]) >= 0) *out = FirstId((*gen)[key]);
    }
  }
  return facts;
}

int RunInitModel(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
  }
  absl::StatusOr<std::map<std::string, std::string>> flags = ParseFlags(
      argc, argv,
      {"arch", "out", "vocab-size", "hidden-size", "layers", "heads", "kv-heads", "head-dim",
       "intermediate-size", "max-positions", "rope-theta", "seed", "dtype", "tokenizer-from"},
      {"tie"});
  if (!flags.ok()) return Fail(absl::StrCat(flags.status().message(), "\n\n", kUsage));
  auto get = [&](const std::string& key, const std::string& def) {
    auto it = flags->find(key);
    return it == flags->end() ? def : it->second;
  };
  const std::string out = get("out", "");
  if (out.empty()) return Fail(absl::StrCat("--out is required\n\n", kUsage));

  ModelConfig c;
  c.architecture = get("arch", "");
  if (c.architecture.empty()) return Fail(absl::StrCat("--arch is required\n\n", kUsage));
  c.vocab_size = 1000;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 128;
  c.tie_word_embeddings = get("tie", "false") == "true";
  int64_t seed = 0;

  const std::string tokenizer_dir = get("tokenizer-from", "");
  TokenizerFacts facts;
  if (!tokenizer_dir.empty()) {
    absl::StatusOr<TokenizerFacts> f = ReadTokenizerFacts(tokenizer_dir);
    if (!f.ok()) return Fail(std::string(f.status().message()));
    facts = *f;
    c.vocab_size = facts.vocab_size;
    c.bos_token_id = facts.bos_token_id;
    c.eos_token_id = facts.eos_token_id;
    c.pad_token_id = facts.pad_token_id;
  }
  const std::pair<const char*, int64_t*> ints[] = {{"vocab-size", &c.vocab_size},
                                                   {"hidden-size", &c.hidden_size},
                                                   {"layers", &c.num_hidden_layers},
                                                   {"heads", &c.num_attention_heads},
                                                   {"kv-heads", &c.num_key_value_heads},
                                                   {"head-dim", &c.head_dim},
                                                   {"intermediate-size", &c.intermediate_size},
                                                   {"max-positions", &c.max_position_embeddings},
                                                   {"seed", &seed}};
  for (const auto& [key, field] : ints) {
    if (absl::Status s = GetInt(*flags, key, field); !s.ok()) return Fail(std::string(s.message()));
  }
  if (flags->count("rope-theta") && !absl::SimpleAtod(get("rope-theta", ""), &c.rope_theta)) {
    return Fail("--rope-theta: not a number");
  }
  if (!tokenizer_dir.empty() && c.vocab_size < facts.vocab_size) {
    return Fail(absl::StrCat("--vocab-size ", c.vocab_size, " is smaller than the tokenizer's ",
                             facts.vocab_size, " tokens"));
  }
  absl::StatusOr<at::ScalarType> dtype = DtypeFromName(get("dtype", "float32"));
  if (!dtype.ok()) return Fail(absl::StrCat("--dtype: ", dtype.status().message()));
  ApplyArchitectureDefaults(&c);
  if (absl::Status s = ValidateModelConfig(c); !s.ok()) return Fail(std::string(s.message()));

  try {
    torch::manual_seed(static_cast<uint64_t>(seed));
    CausalLM model(c);
    if (absl::Status s = SaveModelDir(model, out, SaveOptions{*dtype}); !s.ok()) {
      std::cerr << "pmdrl init-model: " << s.message() << "\n";
      return 1;
    }
  } catch (const c10::Error& e) {
    std::cerr << "pmdrl init-model: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  if (!tokenizer_dir.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "generation_config.json"}) {
      const fs::path from = fs::path(tokenizer_dir) / name;
      if (!fs::exists(from)) continue;
      std::error_code ec;
      fs::copy_file(from, fs::path(out) / name, fs::copy_options::overwrite_existing, ec);
      if (ec) {
        std::cerr << "pmdrl init-model: cannot copy " << from << ": " << ec.message() << "\n";
        return 1;
      }
    }
  }
  std::cout << "wrote " << c.architecture << " model (vocab " << c.vocab_size << ", hidden "
            << c.hidden_size << ", " << c.num_hidden_layers << " layers) to " << out << "\n";
  return 0;
}

}  // namespace pmdrl
