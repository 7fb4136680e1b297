#include "learner/training/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

constexpr char kManifest[] = "manifest.json";
constexpr char kTmpSuffix[] = ".tmp";

// A JSON integer as T: nlohmann's get<T>() of a float outside T's range is undefined
// behaviour (fuzz/checkpoint_readers_fuzz), so anything but an integer is a type error.
template <typename T>
T JsonInteger(const nlohmann::json& j) {
  if (!j.is_number_integer()) {
    throw nlohmann::json::type_error::create(
        302, std::string("type must be an integer, but is ") + j.type_name(), &j);
  }
  return j.get<T>();
}

absl::Status ErrnoError(const char* what, const fs::path& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path.string(), ": ", std::strerror(err)));
}

// fsyncs a file or a folder (opened read-only, which Linux allows for both).
absl::Status Sync(const fs::path& p) {
  const fs::path path = p.empty() ? fs::path(".") : p;  // the parent of a relative name
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open for fsync", path, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync", path, err);
  return absl::OkStatus();
}

// Writes `data` to `path` (replacing it) and fsyncs it: once this returns OK the bytes
// are on disk, though the file's name is durable only after its folder is synced.
absl::Status WriteFile(const fs::path& path, const std::string& data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", path, errno);
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot write", path, err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot fsync", path, err);
  }
  if (::close(fd) != 0) return ErrnoError("cannot close", path, errno);
  return absl::OkStatus();
}

// fsyncs every file and folder under `dir` (the files save_files wrote without syncing),
// then `dir` itself, and returns each regular file's size by its path relative to `dir`.
absl::StatusOr<std::map<std::string, uint64_t>> SyncTree(const fs::path& dir) {
  std::map<std::string, uint64_t> sizes;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (absl::Status s = Sync(p); !s.ok()) return s;
    if (it->is_regular_file()) {
      sizes[fs::relative(p, dir).generic_string()] = static_cast<uint64_t>(it->file_size());
    }
  }
  if (ec)
    return absl::InternalError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  if (absl::Status s = Sync(dir); !s.ok()) return s;
  return sizes;
}

// Renames `from` to `to` (same folder) and fsyncs that folder, so the new name survives
// a power loss.
absl::Status DurableRename(const fs::path& from, const fs::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", from.string(), " to ", to.string(),
                                            ": ", std::strerror(errno)));
  }
  return Sync(to.parent_path());
}

// The update of a final checkpoint folder name "update-NNNNNN"; nullopt for anything
// else (temporary folders, `latest`, stray files).
std::optional<int64_t> UpdateOfName(const std::string& name) {
  constexpr std::string_view kPrefix = "update-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) {
    return std::nullopt;
  }
  int64_t update = 0;
  for (size_t i = kPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || update > (int64_t{1} << 56)) return std::nullopt;
    update = update * 10 + (name[i] - '0');
  }
  return update;
}

// The complete checkpoints under `root`, newest (highest update) first.
std::vector<std::pair<int64_t, fs::path>> CompleteCheckpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::optional<int64_t> update = UpdateOfName(it->path().filename().string());
    if (!update || !it->is_directory()) continue;
    if (CheckCheckpointComplete(it->path().string()).ok()) found.emplace_back(*update, it->path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a > b; });
  return found;
}

// Removes what crashed writes left in `root`: "*.tmp" folders and files.
void RemoveTemporaries(const fs::path& root) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > std::strlen(kTmpSuffix) &&
        name.compare(name.size() - std::strlen(kTmpSuffix), std::string::npos, kTmpSuffix) == 0) {
      stale.push_back(it->path());
    }
  }
  for (const fs::path& p : stale) {
    std::error_code rm;
    fs::remove_all(p, rm);
    if (rm)
      spdlog::warn("cannot remove {} (left by a crashed checkpoint): {}", p.string(), rm.message());
  }
}

// Keeps `keep` complete checkpoints: `newest` (just written) and the keep - 1 highest
// updates among the others. A checkpoint that cannot be removed is logged, not an error:
// the new checkpoint is already safe.
void Prune(const fs::path& root, const fs::path& newest, int64_t keep) {
  if (keep <= 0) return;
  int64_t kept = 1;  // newest
  for (const auto& [update, dir] : CompleteCheckpoints(root)) {
    if (dir == newest) continue;
    if (kept < keep) {
      ++kept;
      continue;
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (ec) {
      spdlog::warn("cannot remove old checkpoint {}: {}", dir.string(), ec.message());
    } else {
      spdlog::info("removed old checkpoint {} (learner.keep_checkpoints {})", dir.string(), keep);
    }
  }
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
                                            const SaveCheckpointFiles& save_files,
                                            const std::vector<v1::Group>& buffered,
                                            const std::string& config_yaml,
                                            const CheckpointWriteOptions& options) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = absl::StrFormat("update-%06d", state.update);
  const fs::path tmp = root / (name + kTmpSuffix);
  const fs::path final_dir = root / name;
  auto fault = [&](std::string_view step) {
    return options.fault ? options.fault(step) : absl::OkStatus();
  };
  std::error_code ec;
  const bool new_root = !fs::exists(root, ec);
  fs::create_directories(root, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", root.string(), ": ", ec.message()));
  }
  // A new checkpoints/ folder must itself survive a crash for `latest` to be found.
  if (new_root) {
    if (absl::Status s = Sync(root.parent_path()); !s.ok()) return s;
  }
  RemoveTemporaries(root);
  fs::create_directory(tmp, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  if (absl::Status s = save_files(tmp.string()); !s.ok()) return s;

  nlohmann::json j;
  j["update"] = state.update;
  j["version"] = state.version;
  j["optimizer_steps"] = state.optimizer_steps;
  j["elapsed_seconds"] = state.elapsed_seconds;
  j["base_accuracy"] = state.base_accuracy;
  j["evaluations"] = state.evaluations;
  j["run_files"] = {{"ledger.csv", state.ledger_bytes},
                    {"metrics.csv", state.metrics_bytes},
                    {"samples.jsonl", state.samples_bytes}};
  try {
    j["lease_state"] = nlohmann::json::parse(state.lease_state_json);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", final_dir.string(), ": lease state is not JSON: ", e.what()));
  }
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

  // Everything else is synced before the manifest is written, and the manifest before the
  // rename: a folder with a manifest whose sizes match is complete.
  absl::StatusOr<std::map<std::string, uint64_t>> sizes = SyncTree(tmp);
  if (!sizes.ok()) return sizes.status();
  nlohmann::json manifest;
  manifest["update"] = state.update;
  manifest["files"] = *sizes;
  if (absl::Status s = WriteFile(tmp / kManifest, manifest.dump(2)); !s.ok()) return s;
  if (absl::Status s = Sync(tmp); !s.ok()) return s;
  if (absl::Status s = fault("before_rename"); !s.ok()) return s;

  // rename(2) cannot replace a non-empty folder: a folder of the same update (a run
  // resumed from an older checkpoint writes it again) moves aside, as a temporary that
  // the next write removes, only now that its replacement is complete.
  if (fs::exists(final_dir, ec)) {
    if (absl::Status s = DurableRename(final_dir, root / (name + ".replaced" + kTmpSuffix));
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = DurableRename(tmp, final_dir); !s.ok()) return s;
  if (absl::Status s = fault("before_latest"); !s.ok()) return s;

  const fs::path latest_tmp = root / (std::string("latest") + kTmpSuffix);
  if (absl::Status s = WriteFile(latest_tmp, name + "\n"); !s.ok()) return s;
  if (absl::Status s = DurableRename(latest_tmp, root / "latest"); !s.ok()) return s;
  RemoveTemporaries(root);
  Prune(root, final_dir, options.keep);
  return final_dir.string();
}

absl::StatusOr<std::string> RetryCheckpointWrite(
    int attempts, std::chrono::milliseconds backoff,
    const std::function<absl::StatusOr<std::string>()>& write) {
  absl::Status last = absl::InternalError("no attempt made");
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    absl::StatusOr<std::string> dir = write();
    if (dir.ok()) return dir;
    last = dir.status();
    if (attempt < attempts) {
      spdlog::warn("checkpoint attempt {} of {} failed: {}; retrying in {} ms", attempt, attempts,
                   std::string(last.message()), backoff.count());
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
    }
  }
  return absl::Status(last.code(), absl::StrCat("checkpoint failed after ", attempts,
                                                " attempts: ", last.message()));
}

absl::Status CheckCheckpointComplete(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, " is not a folder"));
  }
  if (!fs::exists(d / kManifest, ec)) {
    // Written before manifests existed: the files the reader needs must be there.
    for (const char* f :
         {"trainer_state.json", "buffered_groups.pb", "optimizer.pt", "config.json"}) {
      if (!fs::exists(d / f, ec)) {
        return absl::NotFoundError(absl::StrCat(dir, " has no ", kManifest, " and no ", f));
      }
    }
    return ReadTrainerState(dir).status();
  }
  absl::StatusOr<std::string> text = ReadFile(d / kManifest);
  if (!text.ok()) return text.status();
  try {
    const nlohmann::json m = nlohmann::json::parse(*text);
    for (const auto& [file, size] : m.at("files").items()) {
      const uint64_t want = JsonInteger<uint64_t>(size);
      const uint64_t have = fs::file_size(d / file, ec);
      if (ec) {
        return absl::NotFoundError(absl::StrCat((d / file).string(), " (listed in ", kManifest,
                                                ") is missing: ", ec.message()));
      }
      if (have != want) {
        return absl::DataLossError(absl::StrCat((d / file).string(), " has ", have, " bytes, ",
                                                kManifest, " says ", want));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat((d / kManifest).string(), ": ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindCheckpoint(const std::string& run_dir, const std::string& resume) {
  if (resume != "auto") {
    if (absl::Status s = CheckCheckpointComplete(resume); !s.ok()) {
      return absl::NotFoundError(
          absl::StrCat("learner.resume: ", resume, " is not a complete checkpoint: ", s.message()));
    }
    return resume;
  }
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint in ", root.string()));
  }
  // Why `latest` cannot be used, for the warning; empty when it can.
  std::string why;
  const fs::path latest = root / "latest";
  absl::StatusOr<std::string> name = ReadFile(latest);
  if (!name.ok()) {
    why = fs::exists(latest, ec) ? absl::StrCat(latest.string(), " is unreadable")
                                 : absl::StrCat(latest.string(), " is missing");
  } else {
    std::string n = *name;
    while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
    // Only a plain folder name of root: garbage must not name a path elsewhere.
    if (n.empty() || n.find('/') != std::string::npos || n == "." || n == "..") {
      why = absl::StrCat(latest.string(), " does not name a checkpoint folder");
    } else if (absl::Status s = CheckCheckpointComplete((root / n).string()); !s.ok()) {
      why = absl::StrCat(latest.string(), " names ", n, ", which is not a complete checkpoint (",
                         s.message(), ")");
    } else {
      return (root / n).string();
    }
  }
  const std::vector<std::pair<int64_t, fs::path>> complete = CompleteCheckpoints(root);
  if (complete.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no complete checkpoint in ", root.string(), " (", why, ")"));
  }
  spdlog::warn("{}; resuming from the newest complete checkpoint, {}", why,
               complete.front().second.string());
  return complete.front().second.string();
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadFile(fs::path(dir) / "trainer_state.json");
  if (!text.ok()) return text.status();
  TrainerState s;
  try {
    nlohmann::json j = nlohmann::json::parse(*text);
    s.update = JsonInteger<int64_t>(j.at("update"));
    s.version = JsonInteger<uint64_t>(j.at("version"));
    s.optimizer_steps = JsonInteger<int64_t>(j.at("optimizer_steps"));
    s.elapsed_seconds = j.at("elapsed_seconds").get<double>();
    s.base_accuracy = j.at("base_accuracy").get<double>();
    s.evaluations = j.at("evaluations").get<std::vector<double>>();
    s.lease_state_json = j.at("lease_state").dump();
    if (j.contains("run_files")) {  // absent in checkpoints written before the ledger
      const nlohmann::json& files = j.at("run_files");
      auto bytes = [&files](const char* name) {
        return JsonInteger<int64_t>(files.value(name, nlohmann::json(-1)));
      };
      s.ledger_bytes = bytes("ledger.csv");
      s.metrics_bytes = bytes("metrics.csv");
      s.samples_bytes = bytes("samples.jsonl");
    }
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
  const std::string path = (fs::path(dir) / "buffered_groups.pb").string();
  while (pos < data->size()) {
    uint64_t n = 0;
    // A tail too short for a length, or a length past the end, is a cut-off file: the
    // groups in it would be lost without a word.
    if (data->size() - pos < sizeof(n)) {
      return absl::DataLossError(absl::StrCat(path, " is truncated: ", data->size() - pos,
                                              " stray bytes at offset ", pos, " after ",
                                              groups.size(), " groups"));
    }
    std::memcpy(&n, data->data() + pos, sizeof(n));
    pos += sizeof(n);
    if (n > data->size() - pos) {
      return absl::DataLossError(absl::StrCat(path, " is truncated: group ", groups.size() + 1,
                                              " needs ", n, " bytes at offset ", pos, ", ",
                                              data->size() - pos, " are left"));
    }
    v1::Group g;
    if (!g.ParseFromArray(data->data() + pos, static_cast<int>(n))) {
      return absl::DataLossError(absl::StrCat(path, " is corrupt: group ", groups.size() + 1,
                                              " at offset ", pos, " does not parse"));
    }
    pos += n;
    groups.push_back(std::move(g));
  }
  return groups;
}

}  // namespace pmdrl
