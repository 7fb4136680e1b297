#include "learner/ledger.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

namespace {

absl::Status ErrnoError(std::string_view what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(std::string(what), " ", path, ": ", std::strerror(err)));
}

// Writes all of `data` at the end of `fd`, retrying short writes.
absl::Status WriteAll(int fd, const std::string& path, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot append to", path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A CSV cell: quoted when it holds a comma, quote or line break (an actor's name is
// chosen by whoever runs it).
std::string Cell(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

}  // namespace

Ledger::~Ledger() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status Ledger::Open(const std::string& path, bool resume, int64_t cut_to) {
  if (fd_ >= 0) ::close(fd_);
  path_ = path;
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  const bool fresh = !resume || !exists;
  if (resume && !exists && cut_to > 0) {
    // A checkpoint of another run folder (learner.resume=<folder>), or a deleted file.
    spdlog::warn(
        "{} is missing though the checkpoint recorded {} bytes of it; starting a new "
        "one, which lists only the places trained from here on",
        path, cut_to);
  }
  if (!fresh && cut_to >= 0) {
    if (st.st_size < cut_to) {
      return absl::DataLossError(absl::StrCat(path, " has ", st.st_size,
                                              " bytes but the checkpoint recorded ", cut_to,
                                              " synced bytes: rows of trained places are lost"));
    }
    if (st.st_size > cut_to) {
      if (::truncate(path.c_str(), cut_to) != 0) return ErrnoError("cannot cut back", path, errno);
      spdlog::info("{}: dropped {} bytes of updates after the checkpoint", path,
                   st.st_size - cut_to);
    }
  }
  fd_ =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (fresh ? O_TRUNC : 0), 0644);
  if (fd_ < 0) return ErrnoError("cannot open", path, errno);
  if (fresh) return WriteAll(fd_, path_, kLedgerHeader);
  return absl::OkStatus();
}

absl::Status Ledger::Append(int64_t update, const std::vector<v1::Group>& batch) {
  if (fd_ < 0) return absl::FailedPreconditionError("the ledger is not open");
  std::string rows;
  for (const v1::Group& g : batch) {
    absl::StrAppend(&rows, g.epoch(), ",", g.index(), ",", Cell(g.lease_id()), ",",
                    Cell(g.actor_id()), ",", g.policy_version(), ",", update, "\n");
  }
  return WriteAll(fd_, path_, rows);
}

absl::StatusOr<int64_t> Ledger::Sync() {
  if (fd_ < 0) return absl::FailedPreconditionError("the ledger is not open");
  if (sync_failed_) {
    return absl::DataLossError(absl::StrCat(
        "an earlier fsync of ", path_,
        " failed: Linux may have dropped the unwritten rows, so no later fsync can vouch for "
        "them; resume from the last checkpoint"));
  }
  if (::fsync(fd_) != 0) {
    sync_failed_ = true;
    return ErrnoError("cannot fsync", path_, errno);
  }
  const off_t end = ::lseek(fd_, 0, SEEK_END);
  if (end < 0) return ErrnoError("cannot seek", path_, errno);
  return static_cast<int64_t>(end);
}

absl::StatusOr<int64_t> SyncedLength(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    return ErrnoError("cannot open", path, errno);
  }
  struct stat st {};
  int err = 0;
  if (::fsync(fd) != 0 || ::fstat(fd, &st) != 0) err = errno;
  ::close(fd);
  if (err != 0) return ErrnoError("cannot fsync", path, err);
  return static_cast<int64_t>(st.st_size);
}

absl::Status CutBack(const std::string& path, int64_t bytes) {
  if (bytes < 0) return absl::OkStatus();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (st.st_size < bytes) {
    spdlog::warn("{} has {} bytes, fewer than the {} the checkpoint recorded; kept as it is", path,
                 st.st_size, bytes);
    return absl::OkStatus();
  }
  if (st.st_size > bytes && ::truncate(path.c_str(), bytes) != 0) {
    return ErrnoError("cannot cut back", path, errno);
  }
  return absl::OkStatus();
}

}  // namespace pmdrl
