#include "common/nn/model_dir.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/nn/safetensors.h"
#include "nlohmann/json.hpp"

namespace pmdrl {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// transformers' shard file name pattern, model-00001-of-00003.safetensors.
bool IsShardName(const std::string& name) {
  return name.size() == std::string("model-00001-of-00001.safetensors").size() &&
         absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors") &&
         name.substr(11, 4) == "-of-";
}

absl::Status WriteTextFile(const std::string& text, const fs::path& path) {
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out || !(out << text) || !out.flush()) {
      return absl::InternalError(absl::StrCat("cannot write ", tmp));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

// The weight files of a model directory, in index order (first appearance in weight_map).
absl::StatusOr<std::vector<std::string>> WeightFiles(const fs::path& root) {
  std::vector<std::string> files;
  const fs::path index_path = root / kIndexFile;
  if (!fs::exists(index_path)) {
    files.push_back(kSingleFile);
    return files;
  }
  std::ifstream in(index_path);
  try {
    json index = json::parse(in);
    const json& map = index.at("weight_map");
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
  return files;
}

}  // namespace

absl::StatusOr<at::ScalarType> DtypeFromName(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", name, "\" is not one of float32, bfloat16, float16"));
}

const char* DtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return nullptr;
  }
}

absl::Status SaveModelDir(CausalLM& model, const std::string& dir) {
  return SaveModelDir(model, dir, SaveOptions{});
}

absl::Status SaveModelDir(CausalLM& model, const std::string& dir, const SaveOptions& options) {
  const char* dtype_name = DtypeName(options.dtype);
  if (dtype_name == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model dir ", dir, ": cannot save in dtype ", c10::toString(options.dtype)));
  }
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("model dir ", dir, ": max_shard_bytes is 0"));
  }
  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create model dir ", dir, ": ", ec.message()));
  }
  ModelConfig config = model->config();
  config.torch_dtype = dtype_name;
  if (absl::Status s = WriteModelConfig(config, (root / "config.json").string()); !s.ok()) {
    return s;
  }

  // Greedy sharding in parameter order, as huggingface_hub's split_state_dict_into_shards:
  // a tensor over the limit gets a shard of its own; one that would tip the current shard
  // over the limit starts the next.
  NamedTensors weights = NamedWeights(model);  // tied lm_head is not a parameter
  std::vector<NamedTensors> shards;
  NamedTensors current;
  uint64_t current_bytes = 0, total_bytes = 0;
  for (auto& [name, tensor] : weights) {
    const uint64_t bytes = SafetensorsBytes(tensor, options.dtype);
    total_bytes += bytes;
    if (bytes > options.max_shard_bytes) {
      shards.push_back({{name, tensor}});
      continue;
    }
    if (current_bytes + bytes > options.max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.emplace_back(name, tensor);
    current_bytes += bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  SafetensorsWriteOptions write;
  write.float_dtype = options.dtype;
  std::set<std::string> written;
  if (shards.size() == 1) {
    if (absl::Status s = SaveSafetensors(shards[0], (root / kSingleFile).string(), write);
        !s.ok()) {
      return s;
    }
    written.insert(kSingleFile);
  } else {
    json weight_map = json::object();
    const size_t n = shards.size();
    for (size_t i = 0; i < n; ++i) {
      const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
      if (absl::Status s = SaveSafetensors(shards[i], (root / file).string(), write); !s.ok()) {
        return s;
      }
      for (const auto& [name, t] : shards[i]) weight_map[name] = file;
      written.insert(file);
    }
    // The index last: a reader that finds it finds every shard it names.
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    if (absl::Status s = WriteTextFile(index.dump(2) + "\n", root / kIndexFile); !s.ok()) {
      return s;
    }
    written.insert(kIndexFile);
  }
  // Weight files of an earlier save in another layout would be stale (or, for an index,
  // would even win over the new single file): remove them.
  std::vector<std::string> stale;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if ((name == kSingleFile || name == kIndexFile || IsShardName(name)) && !written.count(name)) {
      stale.push_back(name);
    }
  }
  for (const std::string& name : stale) {
    fs::remove(root / name, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("model dir ", dir, ": cannot remove stale ", name, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir) {
  return LoadModelDir(dir, LoadOptions{});
}

absl::StatusOr<CausalLM> LoadModelDir(const std::string& dir, const LoadOptions& options) {
  const fs::path root(dir);
  if (DtypeName(options.dtype) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model dir ", dir, ": cannot load in dtype ", c10::toString(options.dtype)));
  }
  absl::StatusOr<ModelConfig> config = ReadModelConfig((root / "config.json").string());
  if (!config.ok()) return config.status();
  absl::StatusOr<std::vector<std::string>> names = WeightFiles(root);
  if (!names.ok()) return names.status();

  // Headers only: which file holds each tensor.
  std::vector<SafetensorsFile> files;
  for (const std::string& name : *names) {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open((root / name).string());
    if (!f.ok()) return f.status();
    files.push_back(*std::move(f));
  }
  struct Where {
    const SafetensorsFile* file;
    const SafetensorsFile::Entry* entry;
  };
  std::unordered_map<std::string, Where> where;
  for (const SafetensorsFile& f : files) {
    for (const SafetensorsFile::Entry& e : f.entries()) {
      auto [it, inserted] = where.emplace(e.name, Where{&f, &e});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("model dir ", dir, ": tensor ", e.name,
                                                       " appears in both ", it->second.file->path(),
                                                       " and ", f.path()));
      }
    }
  }

  auto fail = [&dir](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("model dir ", dir, ": weights: ", what));
  };
  try {
    CausalLM model(*config, CausalLMOptions{options.dtype, options.device, /*random_init=*/false});
    auto params = model->named_parameters(/*recurse=*/true);
    // Check everything before reading anything, so that a mismatch costs no I/O.
    for (const auto& item : params) {
      auto it = where.find(item.key());
      if (it == where.end()) return fail(absl::StrCat("missing tensor ", item.key()));
      const SafetensorsFile::Entry& e = *it->second.entry;
      if (at::IntArrayRef(e.shape) != item.value().sizes()) {
        return fail(absl::StrCat("tensor ", item.key(), " has shape ",
                                 c10::str(at::IntArrayRef(e.shape)), ", the model expects ",
                                 c10::str(item.value().sizes())));
      }
      if (!at::isFloatingType(e.dtype)) {
        return fail(absl::StrCat("tensor ", item.key(), " has non-floating dtype ",
                                 c10::toString(e.dtype)));
      }
    }
    for (const auto& [name, w] : where) {
      if (params.contains(name)) continue;
      const bool tied_head = name == "lm_head.weight" && config->tie_word_embeddings;
      if (tied_head || absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
      return fail(absl::StrCat("unexpected tensor ", name, " in ", w.file->path(),
                               " (not a parameter of this ", config->architecture, " model)"));
    }
    torch::NoGradGuard no_grad;
    for (auto& item : params) {
      const Where& w = where.at(item.key());
      if (absl::Status s = w.file->ReadInto(*w.entry, item.value()); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("model dir ", dir, ": ", s.message()));
      }
    }
    return model;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("model dir ", dir, ": ", e.what_without_backtrace()));
  }
}

}  // namespace pmdrl
