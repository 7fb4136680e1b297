#include "cli/local_tls.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/child_process.h"

extern char** environ;

namespace pmdrl {
namespace {

namespace fs = std::filesystem;

// One config for the CA and the leaf: `req` reads the subject from -subj, the
// extensions from the named sections, and nothing from the system's openssl.cnf.
constexpr const char* kOpensslConfig = R"([req]
distinguished_name = dn
prompt = no
[dn]
CN = pmdrl-local
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[node]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
)";

// The first executable `openssl` on $PATH, or "".
std::string FindOpenssl() {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':', absl::SkipEmpty())) {
    const std::string candidate = absl::StrCat(std::string(dir), "/openssl");
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::vector<std::string> Environment() {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  return env;
}

// Runs `openssl args...` to completion, its output appended to `log`.
absl::Status RunOpenssl(const std::string& openssl, std::vector<std::string> args,
                        const std::string& log, absl::string_view step) {
  args.insert(args.begin(), openssl);
  absl::StatusOr<pid_t> pid = Spawn(args, Environment(), log, "pmdrl local (tls)");
  if (!pid.ok()) {
    return absl::InternalError(
        absl::StrCat("TLS set-up: cannot run openssl to ", step, ": ", pid.status().message()));
  }
  int status = 0;
  pid_t r;
  while ((r = ::waitpid(*pid, &status, 0)) < 0 && errno == EINTR) {
  }
  if (r != *pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("TLS set-up: openssl failed to ", step, " (",
                                            DescribeWaitStatus(status), "); its output is in ", log,
                                            ":\n", LogTail(log, 10)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TlsFiles> MakeLocalCertificates(const std::string& dir_name) {
  const std::string openssl = FindOpenssl();
  if (openssl.empty()) {
    return absl::FailedPreconditionError(
        "TLS set-up: no `openssl` command on $PATH (Debian: apt-get install openssl); or run "
        "without TLS: --local.tls=false");
  }
  const fs::path dir = fs::absolute(dir_name);
  std::error_code ec;
  fs::create_directories(dir, ec);
  // 0700: the key files are private from the moment openssl creates them (openssl
  // writes them with the umask's mode before we narrow it).
  if (ec || ::chmod(dir.c_str(), 0700) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("TLS set-up: cannot create ", dir.string(),
                                                    ": ",
                                                    ec ? ec.message() : std::strerror(errno)));
  }
  const std::string cnf = (dir / "openssl.cnf").string();
  const std::string log = (dir / "openssl.log").string();
  const std::string ca_key = (dir / "ca.key").string();
  const std::string csr = (dir / "node.csr").string();
  TlsFiles files{(dir / "node.crt").string(), (dir / "node.key").string(),
                 (dir / "ca.crt").string()};
  for (const std::string& stale : {log, ca_key, csr, files.cert, files.key, files.ca}) {
    fs::remove(stale, ec);
  }
  {
    std::ofstream out(cnf, std::ios::trunc);
    out << kOpensslConfig;
    if (!out) return absl::PermissionDeniedError(absl::StrCat("TLS set-up: cannot write ", cnf));
  }
  std::random_device rd;
  const uint64_t serial = ((static_cast<uint64_t>(rd()) << 32) | rd()) >> 1;  // positive
  const std::vector<std::string> ec_key = {"-algorithm", "EC", "-pkeyopt",
                                           "ec_paramgen_curve:P-256"};
  struct Step {
    const char* what;
    std::vector<std::string> args;
  };
  std::vector<Step> steps;
  {
    std::vector<std::string> a = {"genpkey"};
    a.insert(a.end(), ec_key.begin(), ec_key.end());
    a.insert(a.end(), {"-out", ca_key});
    steps.push_back({"make the CA key", a});
  }
  steps.push_back({"make the CA certificate",
                   {"req", "-config", cnf, "-x509", "-new", "-key", ca_key, "-sha256", "-days",
                    "30", "-subj", "/CN=pmdrl local CA", "-extensions", "ca", "-out", files.ca}});
  {
    std::vector<std::string> a = {"genpkey"};
    a.insert(a.end(), ec_key.begin(), ec_key.end());
    a.insert(a.end(), {"-out", files.key});
    steps.push_back({"make the node key", a});
  }
  steps.push_back({"make the node certificate request",
                   {"req", "-config", cnf, "-new", "-key", files.key, "-subj", "/CN=pmdrl-local",
                    "-out", csr}});
  steps.push_back({"sign the node certificate",
                   {"x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-set_serial",
                    std::to_string(serial), "-days", "30", "-sha256", "-extfile", cnf,
                    "-extensions", "node", "-out", files.cert}});
  for (Step& s : steps) {
    if (absl::Status st = RunOpenssl(openssl, std::move(s.args), log, s.what); !st.ok()) return st;
  }
  // Throw-away: with the CA's key gone, nobody can sign another certificate this run's
  // processes would accept.
  fs::remove(ca_key, ec);
  fs::remove(csr, ec);
  if (::chmod(files.key.c_str(), 0600) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("TLS set-up: cannot chmod 600 ", files.key, ": ", std::strerror(errno)));
  }
  return files;
}

}  // namespace pmdrl
