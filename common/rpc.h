// gRPC plumbing every pmdrl server and client shares, so that message size limits,
// keepalive and health checking are set the same way everywhere.
#ifndef PMDRL_COMMON_RPC_H_
#define PMDRL_COMMON_RPC_H_

#include <grpcpp/channel.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/support/status.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pmdrl {

// Largest message either side sends or accepts. Weight chunks are a few MiB; a group
// of long completions stays well below this.
inline constexpr int kMaxMessageBytes = 64 << 20;

// Transport security of every channel and server this process makes (docs/design.md
// "Security"): PEM files named by run.tls_cert, run.tls_key and run.tls_ca.
struct TlsFiles {
  std::string cert;  // this process's certificate chain (servers and, with `ca`, clients)
  std::string key;   // its private key
  std::string ca;    // CA that peers' certificates must chain to; "" = no client certificates
};

// Sets, once for the whole process, how MakeChannel, MakeBulkChannel, ClientCredentials
// and StartServer secure their connections. Call it at start-up, after the config is
// loaded and before any channel or server is made: a channel or server keeps the
// credentials it was made with. (Tests may call it again; it replaces the setting for
// what is made after.)
//  - all empty: plaintext (insecure credentials), the default;
//  - cert + key: servers speak TLS only (no plaintext listener) with that certificate;
//    clients verify servers against the system roots and present no certificate;
//  - cert + key + ca: mutual TLS. Servers require a client certificate that chains to
//    `ca`; clients present cert + key and verify the server against `ca`. The server's
//    certificate must name the host a client dials (a SAN: "127.0.0.1", "verifier").
// The files are read here, whole (they are small): an error names the config key and
// the path (unreadable, empty, not PEM); cert and key must come together, and `ca`
// needs both. On error the previous setting stays.
absl::Status ConfigureTransportSecurity(const TlsFiles& files);

// True when ConfigureTransportSecurity set TLS.
bool TransportSecurityEnabled();

// The credentials a client channel uses under the current setting (insecure, TLS or
// mutual TLS), for a channel that needs channel arguments of its own.
std::shared_ptr<grpc::ChannelCredentials> ClientCredentials();

// A channel to "host:port" or any gRPC target URI ("dns:///verifier:50061"), with the
// transport security set by ConfigureTransportSecurity, kMaxMessageBytes limits,
// keepalive pings (30 s, also between calls, so a dead peer on an idle stream is
// noticed) and round_robin load balancing over the addresses a name resolves to.
// Connects lazily: it never fails here.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// MakeChannel for one long stream of large messages (the weight feed): bigger HTTP/2
// frames, read-ahead and socket reads, on a connection of its own.
std::shared_ptr<grpc::Channel> MakeBulkChannel(const std::string& target);

// Builds and starts a server listening on `listen` ("host:port"; port 0 picks a free
// one, returned in *bound_port, which may be null) serving `services` (not owned; they
// must outlive the server) plus the standard grpc.health.v1 health service, reporting
// SERVING, secured as ConfigureTransportSecurity set (under TLS it listens for TLS
// only, so a plaintext client is refused). Message limits are kMaxMessageBytes; the
// keepalive policy accepts the pings of MakeChannel's clients. The port is bound
// exclusively (no SO_REUSEPORT), so a port in use is an error that names the address.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services, int* bound_port);

// Calls grpc.health.v1.Health/Check for `service` ("" = the whole server) and returns
// OK only if the answer is SERVING. For launchers and tests that wait for a server.
absl::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, std::string_view service,
                         absl::Duration timeout);

// Status conversions. gRPC and Abseil share the canonical code numbering, so the
// code and message are kept exactly.
absl::Status ToAbsl(const grpc::Status& status);
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_RPC_H_
