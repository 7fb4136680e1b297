// `pmdrl local`'s certificates: a throw-away CA and one certificate, signed by it, that
// every child of the run presents both as a server and as a client (mutual TLS,
// common/rpc.h ConfigureTransportSecurity). Made with the `openssl` command (Debian's
// openssl package) for each run, so nothing outlives the run's directory.
#ifndef PMDRL_CLI_LOCAL_TLS_H_
#define PMDRL_CLI_LOCAL_TLS_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/rpc.h"

namespace pmdrl {

// Writes into `dir` (created, mode 0700): ca.crt (a fresh EC P-256 CA, valid 30 days),
// node.crt and node.key (mode 0600; subject CN=pmdrl-local, SANs IP 127.0.0.1, IP ::1
// and DNS localhost, for both server and client auth). The CA's key is deleted once
// node.crt is signed, so no further certificate can be made with this CA. Replaces
// what an earlier run left there. openssl's config is <dir>/openssl.cnf, its output goes
// to <dir>/openssl.log.
// Errors: FailedPrecondition when no `openssl` is on $PATH (the message says to install
// it or set local.tls=false), Internal naming the openssl step that failed.
absl::StatusOr<TlsFiles> MakeLocalCertificates(const std::string& dir);

}  // namespace pmdrl

#endif  // PMDRL_CLI_LOCAL_TLS_H_
