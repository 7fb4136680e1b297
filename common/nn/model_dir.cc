#include "common/nn/model_dir.h"

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/nn/safetensors.h"
#include "nlohmann/json.hpp"

namespace pmdrl {

namespace fs = std::filesystem;

absl::Status SaveModelDir(CausalLM& model, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create model dir ", dir, ": ", ec.message()));
  ModelConfig config = model->config();
  config.torch_dtype = "float32";
  if (absl::Status s = WriteModelConfig(config, (fs::path(dir) / "config.json").string());
      !s.ok()) {
    return s;
  }
  NamedTensors weights;
  try {
    for (auto& [name, t] : NamedWeights(model)) {
      weights.emplace_back(name, t.detach().to(at::kCPU, at::kFloat));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("model dir ", dir, ": ", e.what_without_backtrace()));
  }
  return SaveSafetensors(weights, (fs::path(dir) / "model.safetensors").string());
}

absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir) {
  const fs::path root(dir);
  absl::StatusOr<ModelConfig> config = ReadModelConfig((root / "config.json").string());
  if (!config.ok()) return config.status();

  std::vector<std::string> files;
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    try {
      nlohmann::json index = nlohmann::json::parse(in);
      const nlohmann::json& map = index.at("weight_map");
      std::set<std::string> seen;
      for (auto it = map.begin(); it != map.end(); ++it) {
        const std::string file = it.value().get<std::string>();
        if (file.find('/') != std::string::npos || file.find("..") != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(index_path.string(), ": shard \"", file, "\" is not a plain file name"));
        }
        if (seen.insert(file).second) files.push_back(file);
      }
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path.string(), ": bad index (need weight_map {name: file}): ", e.what()));
    }
  } else {
    files.push_back("model.safetensors");
  }

  NamedTensors weights;
  for (const std::string& file : files) {
    absl::StatusOr<NamedTensors> shard = LoadSafetensors((root / file).string());
    if (!shard.ok()) return shard.status();
    for (auto& item : *shard) weights.push_back(std::move(item));
  }
  try {
    CausalLM model(*config);
    absl::Status s = LoadWeights(model, weights);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("model dir ", dir, ": ", s.message()));
    return model;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("model dir ", dir, ": ", e.what_without_backtrace()));
  }
}

}  // namespace pmdrl
