#include "common/rpc.h"

#include <grpc/grpc.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace pmdrl {
namespace {

constexpr int kKeepaliveTimeMs = 30'000;
constexpr int kKeepaliveTimeoutMs = 10'000;
// Servers accept pings this often (below kKeepaliveTimeMs) so they never answer a
// client's keepalive with GOAWAY "too_many_pings".
constexpr int kMinPingIntervalMs = 10'000;

// grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING
constexpr uint64_t kServing = 1;

// Reads field 1 (the varint `status`) of an encoded HealthCheckResponse; the message
// is tiny and fixed, which is not worth generating health.proto for.
bool ParseServingStatus(const std::string& bytes, uint64_t* status) {
  *status = 0;  // proto3 default: UNKNOWN
  size_t i = 0;
  auto varint = [&](uint64_t* out) {
    *out = 0;
    for (int shift = 0; i < bytes.size() && shift < 64; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(bytes[i++]);
      *out |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  };
  while (i < bytes.size()) {
    uint64_t tag;
    if (!varint(&tag)) return false;
    const uint64_t wire_type = tag & 7;
    uint64_t value;
    if (wire_type == 0) {
      if (!varint(&value)) return false;
      if ((tag >> 3) == 1) *status = value;
    } else if (wire_type == 2) {
      if (!varint(&value) || value > bytes.size() - i) return false;
      i += value;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

namespace {

grpc::ChannelArguments ChannelArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Long streams (WatchWeights) can be idle for minutes; keep pinging anyway.
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Reconnect to a restarted peer within seconds, not gRPC's default two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5'000);
  // Spreads calls over every address a name resolves to (e.g. scaled verifiers).
  args.SetLoadBalancingPolicyName("round_robin");
  return args;
}

}  // namespace

namespace {

// The PEM contents ConfigureTransportSecurity read; all empty: plaintext.
struct TlsPem {
  std::string cert, key, ca;
};

absl::Mutex tls_mu;
TlsPem& TlsSetting() ABSL_EXCLUSIVE_LOCKS_REQUIRED(tls_mu) {
  static TlsPem* pem = new TlsPem();  // never destroyed: channels may outlive main
  return *pem;
}

TlsPem CurrentTls() {
  absl::MutexLock lock(&tls_mu);
  return TlsSetting();
}

// Reads a whole PEM file named by config key `key`; the error names both.
absl::StatusOr<std::string> ReadPem(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key '", key, "': cannot read '", path, "': ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key '", key, "': cannot read '", path, "'"));
  }
  std::string pem = text.str();
  if (pem.empty() || !absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key '", key, "': '", path, "' is not a PEM file"));
  }
  return pem;
}

}  // namespace

absl::Status ConfigureTransportSecurity(const TlsFiles& files) {
  TlsPem pem;
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        files.cert.empty()
            ? absl::StrCat("config key 'run.tls_key' ('", files.key,
                           "') needs run.tls_cert: a TLS key comes with its certificate")
            : absl::StrCat("config key 'run.tls_cert' ('", files.cert,
                           "') needs run.tls_key: a TLS certificate comes with its key"));
  }
  if (!files.ca.empty() && files.cert.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key 'run.tls_ca' ('", files.ca,
                     "') needs run.tls_cert and run.tls_key: mutual TLS presents a certificate"));
  }
  if (!files.cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPem("run.tls_cert", files.cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("run.tls_key", files.key);
    if (!key.ok()) return key.status();
    pem.cert = *std::move(cert);
    pem.key = *std::move(key);
  }
  if (!files.ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPem("run.tls_ca", files.ca);
    if (!ca.ok()) return ca.status();
    pem.ca = *std::move(ca);
  }
  absl::MutexLock lock(&tls_mu);
  TlsSetting() = std::move(pem);
  return absl::OkStatus();
}

bool TransportSecurityEnabled() { return !CurrentTls().cert.empty(); }

std::shared_ptr<grpc::ChannelCredentials> ClientCredentials() {
  const TlsPem tls = CurrentTls();
  if (tls.cert.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!tls.ca.empty()) {
    // Mutual TLS: the server must chain to the run's CA, and we show ours.
    options.pem_root_certs = tls.ca;
    options.pem_cert_chain = tls.cert;
    options.pem_private_key = tls.key;
  }
  // Without a CA: the system roots verify the server (a publicly signed certificate).
  return grpc::SslCredentials(options);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  return grpc::CreateCustomChannel(target, ClientCredentials(), ChannelArgs());
}

std::shared_ptr<grpc::Channel> MakeBulkChannel(const std::string& target) {
  grpc::ChannelArguments args = ChannelArgs();
  // HTTP/2 DATA frames of up to 16 MiB instead of 16 KiB, 64 MiB the sender may send
  // ahead of the reader, and socket reads of 4 MiB: weight_sync_bench measured ~1.4x
  // the throughput of the defaults on one stream.
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  args.SetInt(GRPC_ARG_TCP_READ_CHUNK_SIZE, 4 << 20);
  args.SetInt(GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 4 << 20);
  args.SetInt(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 4 << 20);
  // A distinct argument set also gives the channel its own connection, so a weight
  // push never queues the coordinator's small calls behind it.
  args.SetString("pmdrl.channel", "bulk");
  return grpc::CreateCustomChannel(target, ClientCredentials(), args);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services, int* bound_port) {
  int port = 0;
  if (bound_port != nullptr) *bound_port = 0;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // One listening port, with one kind of credentials: under TLS nothing listens in
  // plaintext, so a plaintext client fails its handshake.
  const TlsPem tls = CurrentTls();
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!tls.cert.empty()) {
    grpc::SslServerCredentialsOptions options(
        tls.ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                       : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    options.pem_root_certs = tls.ca;
    options.pem_key_cert_pairs.push_back({tls.key, tls.cert});
    credentials = grpc::SslServerCredentials(options);
  }
  builder.AddListeningPort(listen, credentials, &port);
  for (size_t i = 0; i < services.size(); ++i) {
    if (services[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("StartServer(", listen, "): services[", i, "] is null"));
    }
    builder.RegisterService(services[i]);
  }
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  // gRPC sets SO_REUSEPORT by default, which lets a second server bind a port in use
  // and silently steal half its connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             kMinPingIntervalMs);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port <= 0) {
    if (server != nullptr) server->Shutdown();
    return absl::UnavailableError(
        absl::StrCat("cannot start gRPC server on ", listen,
                     tls.cert.empty() ? " (port in use, address not local, or not host:port?)"
                                      : " (port in use, address not local, not host:port, or "
                                        "a run.tls_cert / run.tls_key that do not match?)"));
  }
  if (bound_port != nullptr) *bound_port = port;
  return server;
}

absl::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, std::string_view service,
                         absl::Duration timeout) {
  // HealthCheckRequest{string service = 1}, encoded by hand.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    for (uint64_t n = service.size();; n >>= 7) {
      if (n < 0x80) {
        request.push_back(static_cast<char>(n));
        break;
      }
      request.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    request.append(service);
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::GenericStub stub(channel);
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) {
    absl::Status out = ToAbsl(status);
    return absl::Status(out.code(), absl::StrCat("health check: ", out.message()));
  }
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) {
    return absl::InternalError("health check: cannot read the response");
  }
  std::string response;
  for (const grpc::Slice& s : slices) {
    response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  uint64_t serving = 0;
  if (!ParseServingStatus(response, &serving)) {
    return absl::InternalError("health check: malformed HealthCheckResponse");
  }
  if (serving != kServing) {
    return absl::UnavailableError(absl::StrCat("health check: service '", std::string(service),
                                               "' is not SERVING (status ", serving, ")"));
  }
  return absl::OkStatus();
}

absl::Status ToAbsl(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace pmdrl
