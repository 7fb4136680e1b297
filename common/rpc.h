// gRPC plumbing every pmdrl server and client shares, so that message size limits,
// keepalive and health checking are set the same way everywhere.
#ifndef PMDRL_COMMON_RPC_H_
#define PMDRL_COMMON_RPC_H_

#include <grpcpp/channel.h>
#include <grpcpp/impl/service_type.h>
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

// A channel to "host:port" or any gRPC target URI ("dns:///verifier:50061"), with
// kMaxMessageBytes limits, keepalive pings (30 s, also between calls, so a dead peer
// on an idle stream is noticed) and round_robin load balancing over the addresses a
// name resolves to. Connects lazily: it never fails here.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// MakeChannel for one long stream of large messages (the weight feed): bigger HTTP/2
// frames, read-ahead and socket reads, on a connection of its own.
std::shared_ptr<grpc::Channel> MakeBulkChannel(const std::string& target);

// Builds and starts a server listening on `listen` ("host:port"; port 0 picks a free
// one, returned in *bound_port, which may be null) serving `services` (not owned; they
// must outlive the server) plus the standard grpc.health.v1 health service, reporting
// SERVING. Message limits are kMaxMessageBytes; the keepalive policy accepts the
// pings of MakeChannel's clients. The port is bound exclusively (no SO_REUSEPORT),
// so a port in use is an error that names the address.
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
