// Small model shapes and scratch folders shared by the model tests.
#ifndef PMDRL_TESTS_TINY_MODEL_CONFIG_H_
#define PMDRL_TESTS_TINY_MODEL_CONFIG_H_

#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/model_config.h"

namespace pmdrl {

// A 2-layer model of `arch` (llama | qwen2 | qwen3) over the 17-token char vocabulary,
// with grouped-query attention and, for qwen3, a head_dim other than hidden/heads.
inline ModelConfig TinyModelConfig(const std::string& arch, bool tied = false) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 17;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  if (arch == "qwen3") c.head_dim = 16;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.pad_token_id = 0;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  ApplyArchitectureDefaults(&c);
  return c;
}

// An empty folder under the system temp dir, unique per process, test and name.
inline std::string FreshTempDir(const std::string& test, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            ("pmdrl_" + test + "_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace pmdrl

#endif  // PMDRL_TESTS_TINY_MODEL_CONFIG_H_
