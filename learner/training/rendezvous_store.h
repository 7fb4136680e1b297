// The rendezvous key-value store of the collectives (docs/design.md "Collectives"): rank 0
// serves it over plain TCP, every rank (rank 0 included) talks to it through a client.
// Ranks use it to swap transport addresses (Gloo), the NCCL unique id, and the payloads
// of Communicator::Scatter.
//
// Why our own: Debian's Gloo ships only file, hash (in-process) and Redis stores, and
// c10d's TCPStore would pull Torch into a file that does not need it; the protocol
// here is a few length-prefixed frames, so owning it is cheaper than that dependency
// and lets every wait honour a deadline and come back as an absl::Status.
//
// Authentication: the store carries the training shares, so every connection first
// proves it holds the run's bearer token, without sending it (the same token guards
// the gRPC services, and this port has no TLS): a challenge-response over
// HMAC-SHA256(token, ...) with a fresh random nonce from each side, in which the
// server proves it knows the token too. A wrong or missing proof, or one that does
// not arrive within 10 s, gets the connection closed before any request is read.
//   client -> server: "PMDRLRV1", client_nonce[32]
//   server -> client: server_nonce[32], HMAC(token, "server" client_nonce server_nonce)
//   client -> server: HMAC(token, "client" client_nonce server_nonce)
//   server -> client: code:u8 (0 ok, else refused and closed)
// Wire format after that (all integers little-endian): request = op:u8, key_len:u32,
// key, value_len:u32, value, timeout_ms:u64; reply = code:u8, value_len:u32, value.
// Keys are at most 4 KiB and values 1 GiB; a buffer grows only as bytes arrive, never
// to a length a peer claims. The traffic itself is not encrypted: keep the store on a
// private network (bind it to the address the options name, loopback in tests).
#ifndef PMDRL_LEARNER_RENDEZVOUS_STORE_H_
#define PMDRL_LEARNER_RENDEZVOUS_STORE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gloo/rendezvous/store.h"

namespace pmdrl {

// Splits "host:port" ("[v6]:port" too). Fails with InvalidArgument naming the input.
absl::Status ParseHostPort(const std::string& address, std::string* host, int* port);

// Serves the store on one address until destroyed. Owns a listening socket and one
// thread per connected client; keys live in memory for the server's lifetime (or until
// deleted). Thread-safe.
class StoreServer {
 public:
  // Binds `address` ("host:port"; port 0 picks a free one, see port()) and serves only
  // clients that prove they hold `token` (the run's bearer token). Fails with
  // InvalidArgument for an empty token, Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<StoreServer>> Start(const std::string& address,
                                                            const std::string& token);
  virtual ~StoreServer() = default;  // Stops serving and joins every thread.
  virtual int port() const = 0;
};

// One connection to a StoreServer. Every call blocks at most its timeout; a call that
// runs out of time fails with DeadlineExceeded, a broken connection with Unavailable.
// Thread-safe (calls are serialised over the one connection).
class StoreClient {
 public:
  // Connects to `address`, retrying until `timeout` passes (rank 0 may not have
  // started its server yet), and authenticates with `token` (see the file comment).
  // A server that refuses the token, or cannot prove it holds it, fails at once with
  // Unauthenticated (no retry: the tokens differ).
  static absl::StatusOr<std::unique_ptr<StoreClient>> Connect(const std::string& address,
                                                              const std::string& token,
                                                              std::chrono::milliseconds timeout);
  virtual ~StoreClient() = default;

  virtual absl::Status Set(const std::string& key, absl::string_view value) = 0;
  // Waits until `key` exists, then returns its value.
  virtual absl::StatusOr<std::string> Get(const std::string& key,
                                          std::chrono::milliseconds timeout) = 0;
  // Waits until every key exists.
  virtual absl::Status Wait(const std::vector<std::string>& keys,
                            std::chrono::milliseconds timeout) = 0;
  // Removes `key`; removing a missing key is not an error.
  virtual absl::Status Delete(const std::string& key) = 0;
};

// gloo::rendezvous::Store over a StoreClient, all keys under `prefix`, so that Gloo's
// TCP transport can rendezvous. Gloo's interface reports errors by exception: a failed
// call throws gloo::IoException whose message carries the Status (a timeout says
// "Timed out waiting", like Gloo's own). Does not own the client.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(StoreClient* client, std::string prefix, std::chrono::milliseconds timeout)
      : client_(client), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  StoreClient* client_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_RENDEZVOUS_STORE_H_
