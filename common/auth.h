// Shared bearer-token authentication for state-changing RPCs (docs/design.md "Security"):
// the client sends "authorization: Bearer <token>" metadata, the server compares it
// with its own token in constant time. One token per run, from a file or $PMDRL_TOKEN.
#ifndef PMDRL_COMMON_AUTH_H_
#define PMDRL_COMMON_AUTH_H_

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace pmdrl {

// Loads the run's bearer token: from `token_file` if non-empty, else from
// $PMDRL_TOKEN. Surrounding whitespace (the file's trailing newline) is trimmed. An
// empty or missing token, or one with characters that cannot travel in gRPC metadata
// (anything but printable ASCII without spaces), is an error saying where it looked.
// Like ssh with a private key, a token file that group or others may read or write
// (any of mode 077) is refused with PermissionDenied: "permissions 0644 for bearer
// token file '<path>' are too open ...; chmod 600 it".
absl::StatusOr<std::string> LoadToken(const std::string& token_file);

// A fresh token: 32 bytes from std::random_device as 64 lowercase hex digits.
std::string RandomToken();

// Server side: OK when the call carries "authorization: Bearer <token>" (the scheme
// is case-insensitive), else UNAUTHENTICATED with "missing authorization metadata" or
// "wrong bearer token". The token comparison takes time independent of where the
// strings differ. Takes ServerContextBase so sync (ServerContext) and callback
// (CallbackServerContext) handlers can both use it. An empty `token` rejects all.
grpc::Status CheckBearer(const grpc::ServerContextBase& ctx, std::string_view token);

// Client side: adds the authorization metadata to `ctx` (call once per context).
void AddBearer(grpc::ClientContext* ctx, std::string_view token);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_AUTH_H_
