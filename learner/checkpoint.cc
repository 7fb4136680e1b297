#include "learner/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

absl::Status WriteFile(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::string> WriteCheckpoint(const std::string& run_dir, const TrainerState& state,
                                            Trainer& trainer,
                                            const std::vector<v1::Group>& buffered,
                                            const std::string& config_yaml) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::string name = absl::StrFormat("update-%06d", state.update);
  fs::path tmp = root / (name + ".tmp");
  fs::path final_dir = root / name;
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  if (absl::Status s = trainer.Save(tmp.string()); !s.ok()) return s;

  nlohmann::json j;
  j["update"] = state.update;
  j["version"] = state.version;
  j["optimizer_steps"] = state.optimizer_steps;
  j["elapsed_seconds"] = state.elapsed_seconds;
  j["base_accuracy"] = state.base_accuracy;
  j["evaluations"] = state.evaluations;
  j["lease_state"] = nlohmann::json::parse(state.lease_state_json);
  if (absl::Status s = WriteFile(tmp / "trainer_state.json", j.dump(2)); !s.ok()) return s;

  std::string groups;
  {
    // Length-prefixed serialized groups.
    for (const v1::Group& g : buffered) {
      std::string bytes = g.SerializeAsString();
      uint64_t n = bytes.size();
      groups.append(reinterpret_cast<const char*>(&n), sizeof(n));
      groups += bytes;
    }
  }
  if (absl::Status s = WriteFile(tmp / "buffered_groups.pb", groups); !s.ok()) return s;
  if (absl::Status s = WriteFile(tmp / "config.yaml", config_yaml); !s.ok()) return s;

  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
  fs::path latest_tmp = root / "latest.tmp";
  if (absl::Status s = WriteFile(latest_tmp, name + "\n"); !s.ok()) return s;
  fs::rename(latest_tmp, root / "latest", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot update ", (root / "latest").string()));
  return final_dir.string();
}

absl::StatusOr<std::string> FindCheckpoint(const std::string& run_dir, const std::string& resume) {
  if (resume != "auto") {
    if (!fs::exists(fs::path(resume) / "trainer_state.json")) {
      return absl::NotFoundError(
          absl::StrCat("learner.resume: ", resume, " is not a checkpoint (no trainer_state.json)"));
    }
    return resume;
  }
  fs::path root = fs::path(run_dir) / "checkpoints";
  absl::StatusOr<std::string> name = ReadFile(root / "latest");
  if (!name.ok()) return absl::NotFoundError(absl::StrCat("no checkpoint in ", root.string()));
  std::string n = *name;
  while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
  return (root / n).string();
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadFile(fs::path(dir) / "trainer_state.json");
  if (!text.ok()) return text.status();
  TrainerState s;
  try {
    nlohmann::json j = nlohmann::json::parse(*text);
    s.update = j.at("update").get<int64_t>();
    s.version = j.at("version").get<uint64_t>();
    s.optimizer_steps = j.at("optimizer_steps").get<int64_t>();
    s.elapsed_seconds = j.at("elapsed_seconds").get<double>();
    s.base_accuracy = j.at("base_accuracy").get<double>();
    s.evaluations = j.at("evaluations").get<std::vector<double>>();
    s.lease_state_json = j.at("lease_state").dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/trainer_state.json: ", e.what()));
  }
  return s;
}

absl::StatusOr<std::vector<v1::Group>> ReadBufferedGroups(const std::string& dir) {
  absl::StatusOr<std::string> data = ReadFile(fs::path(dir) / "buffered_groups.pb");
  if (!data.ok()) return data.status();
  std::vector<v1::Group> groups;
  size_t pos = 0;
  while (pos < data->size()) {
    uint64_t n = 0;
    if (data->size() - pos < sizeof(n)) break;
    std::memcpy(&n, data->data() + pos, sizeof(n));
    pos += sizeof(n);
    v1::Group g;
    if (n > data->size() - pos || !g.ParseFromArray(data->data() + pos, static_cast<int>(n))) {
      return absl::InvalidArgumentError(absl::StrCat(dir, "/buffered_groups.pb is corrupt"));
    }
    pos += n;
    groups.push_back(std::move(g));
  }
  return groups;
}

}  // namespace pmdrl
