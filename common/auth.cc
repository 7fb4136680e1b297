#include "common/auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {
namespace {

constexpr std::string_view kScheme = "bearer ";

// Compares without an early exit, so the time taken does not reveal how long a
// prefix of a guessed token was right. (The length is not secret: tokens are fixed-size.)
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::StatusOr<std::string> CheckToken(std::string token, absl::string_view where) {
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("bearer token in ", where, " is empty"));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bearer token in ", where, " has a space or non-printable character at byte ", i));
    }
  }
  return token;
}

}  // namespace

absl::StatusOr<std::string> LoadToken(const std::string& token_file) {
  if (!token_file.empty()) {
    // The mode is checked on the descriptor that is read, so the file cannot be
    // swapped between the check and the read.
    const int fd = ::open(token_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::NotFoundError(
          absl::StrCat("cannot read bearer token file ", token_file, ": ", std::strerror(errno)));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return absl::NotFoundError(
          absl::StrCat("cannot stat bearer token file ", token_file, ": ", std::strerror(err)));
    }
    if ((st.st_mode & 077) != 0) {
      ::close(fd);
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
      return absl::PermissionDeniedError(absl::StrCat(
          "permissions ", mode, " for bearer token file '", token_file,
          "' are too open: it must not be readable or writable by group or others; chmod 600 it"));
    }
    std::string text;
    char buf[4096];
    ssize_t n;
    // A token is 64 bytes; a file far larger than any token is not one.
    while (text.size() <= (1 << 16) && (n = ::read(fd, buf, sizeof(buf))) != 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        return absl::NotFoundError(
            absl::StrCat("cannot read bearer token file ", token_file, ": ", std::strerror(err)));
      }
      text.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return CheckToken(std::string(absl::StripAsciiWhitespace(text)),
                      absl::StrCat("token file ", token_file));
  }
  const char* env = std::getenv("PMDRL_TOKEN");
  if (env == nullptr) {
    return absl::NotFoundError(
        "no bearer token: no token file configured (run.token_file) and $PMDRL_TOKEN is "
        "not set");
  }
  return CheckToken(std::string(absl::StripAsciiWhitespace(env)), "$PMDRL_TOKEN");
}

std::string RandomToken() {
  std::random_device device;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  token.reserve(64);
  for (int i = 0; i < 32; ++i) {
    const unsigned byte = device() & 0xff;
    token += kHex[byte >> 4];
    token += kHex[byte & 0xf];
  }
  return token;
}

grpc::Status CheckBearer(const grpc::ServerContextBase& ctx, std::string_view token) {
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing authorization metadata");
  }
  const std::string_view value(it->second.data(), it->second.size());
  if (value.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(value.data(), kScheme.size()),
                              absl::string_view(kScheme.data(), kScheme.size()))) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization metadata is not 'Bearer <token>'");
  }
  // An unconfigured (empty) server token must not accept an empty bearer.
  if (token.empty() || !ConstantTimeEquals(value.substr(kScheme.size()), token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
  }
  return grpc::Status::OK;
}

void AddBearer(grpc::ClientContext* ctx, std::string_view token) {
  ctx->AddMetadata("authorization", std::string("Bearer ").append(token));
}

}  // namespace pmdrl
