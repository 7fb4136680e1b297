#include "learner/training/rendezvous_store.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "gloo/common/error.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t { kSet = 1, kGet = 2, kWait = 3, kDelete = 4 };
enum Reply : uint8_t { kOk = 0, kTimeout = 1, kBadRequest = 2, kStopped = 3 };

constexpr uint32_t kMaxKeyBytes = 4096;
// Scatter payloads travel through the store; a share of a batch is far below this.
constexpr uint32_t kMaxValueBytes = 1u << 30;

// The handshake of the file comment.
constexpr char kHelloMagic[8] = {'P', 'M', 'D', 'R', 'L', 'R', 'V', '1'};
constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = 32;  // HMAC-SHA256
constexpr uint8_t kAuthOk = 0;
constexpr uint8_t kAuthRefused = 1;
// A peer that connects and goes quiet holds a thread this long, not forever.
constexpr int64_t kHandshakeTimeoutMs = 10000;
// Connections served at once (a world is at most 64 ranks, one connection each): more
// are closed at accept, so a flood of connections cannot exhaust threads.
constexpr size_t kMaxConnections = 256;

std::string ErrnoText() { return std::strerror(errno); }

// HMAC-SHA256(token, label || client_nonce || server_nonce).
std::string HandshakeMac(const std::string& token, absl::string_view label,
                         const std::string& client_nonce, const std::string& server_nonce) {
  std::string message = absl::StrCat(label, client_nonce, server_nonce);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
           &len) == nullptr) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

// Constant time, so a forged proof learns nothing from how long the check took.
bool SameMac(const std::string& a, const std::string& b) {
  return a.size() == kMacBytes && b.size() == kMacBytes &&
         CRYPTO_memcmp(a.data(), b.data(), kMacBytes) == 0;
}

bool RandomNonce(std::string* out) {
  out->resize(kNonceBytes);
  return RAND_bytes(reinterpret_cast<unsigned char*>(out->data()), static_cast<int>(kNonceBytes)) ==
         1;
}

// SO_RCVTIMEO: recv gives up after `ms` (0: never).
void SetRecvTimeout(int fd, int64_t ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

// Reads exactly n bytes; false on EOF, error or (with SO_RCVTIMEO) timeout.
bool ReadFull(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Little-endian framing helpers (x86 and ARM hosts are little-endian; memcpy keeps it
// alignment-safe).
void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), 8); }

bool ReadU32(int fd, uint32_t* v) { return ReadFull(fd, v, 4); }
bool ReadU64(int fd, uint64_t* v) { return ReadFull(fd, v, 8); }

// How far a blob's buffer may run ahead of the bytes received (see ReadBlob).
constexpr size_t kReadStepBytes = size_t{1} << 20;

// Reads a length-prefixed blob of at most `max` bytes. The buffer grows as bytes arrive,
// a step at a time, rather than to the claimed length up front: a peer that claims
// `max` and sends ten bytes costs a step, not `max`.
bool ReadBlob(int fd, uint32_t max, std::string* out) {
  uint32_t n = 0;
  if (!ReadU32(fd, &n) || n > max) return false;
  out->clear();
  while (out->size() < n) {
    const size_t have = out->size();
    const size_t chunk = std::min<size_t>(kReadStepBytes, n - have);
    out->resize(have + chunk);  // amortised: std::string grows its capacity geometrically
    if (!ReadFull(fd, out->data() + have, chunk)) return false;
  }
  return true;
}

class StoreServerImpl : public StoreServer {
 public:
  ~StoreServerImpl() override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
      // Clients blocked in a wait get a "stopped" answer before their sockets go (rank 0
      // giving up must read as a timeout on the other ranks, not as a lost connection).
      idle_cv_.wait_for(lock, std::chrono::seconds(2), [this] { return busy_ == 0; });
      // Unblocks the per-connection threads stuck in recv.
      for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    char b = 0;
    (void)!::write(wake_pipe_[1], &b, 1);
    if (accept_thread_.joinable()) accept_thread_.join();
    for (auto& [id, t] : conn_threads_) t.join();
    ::close(listen_fd_);
    ::close(wake_pipe_[0]);
    ::close(wake_pipe_[1]);
  }

  int port() const override { return port_; }

  absl::Status Init(const std::string& address, const std::string& token) {
    if (token.empty()) {
      return absl::InvalidArgumentError(
          "rendezvous store: no token (every connection must prove the run's token)");
    }
    token_ = token;
    std::string host;
    int port = 0;
    if (absl::Status s = ParseHostPort(address, &host, &port); !s.ok()) return s;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), std::to_string(port).c_str(),
                           &hints, &res);
    if (rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("rendezvous store: cannot resolve '", address, "': ", ::gai_strerror(rc)));
    }
    std::string last_error = "no address";
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) {
        last_error = ErrnoText();
        continue;
      }
      int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
        listen_fd_ = fd;
        break;
      }
      last_error = ErrnoText();
      ::close(fd);
    }
    ::freeaddrinfo(res);
    if (listen_fd_ < 0) {
      return absl::UnavailableError(
          absl::StrCat("rendezvous store: cannot listen on ", address, ": ", last_error));
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
    port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("rendezvous store: pipe: ", ErrnoText()));
    }
    accept_thread_ = std::thread([this] { AcceptLoop(); });
    return absl::OkStatus();
  }

 private:
  void AcceptLoop() {
    while (true) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
      int r = ::poll(fds, 2, -1);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || (fds[1].revents & POLLIN)) return;
      if (!(fds[0].revents & POLLIN)) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      // Threads of connections that ended are joined here, so that a stream of short
      // (say, unauthenticated) connections does not pile up finished threads.
      std::vector<std::thread> ended;
      bool stop = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (uint64_t id : finished_) {
          auto it = conn_threads_.find(id);
          ended.push_back(std::move(it->second));
          conn_threads_.erase(it);
        }
        finished_.clear();
        if (stopping_) {
          ::close(fd);
          stop = true;
        } else if (conn_fds_.size() >= kMaxConnections) {
          ::close(fd);
        } else {
          conn_fds_.push_back(fd);
          const uint64_t id = next_conn_id_++;
          conn_threads_.emplace(id, std::thread([this, fd, id] { Serve(fd, id); }));
        }
      }
      for (std::thread& t : ended) t.join();
      if (stop) return;
    }
  }

  // The server's side of the handshake (file comment): true when the peer proved it
  // holds token_. Reads at most the fixed-size frames, each within the handshake timeout.
  bool Authenticate(int fd) {
    SetRecvTimeout(fd, kHandshakeTimeoutMs);
    char magic[sizeof(kHelloMagic)];
    std::string client_nonce(kNonceBytes, '\0'), server_nonce, client_mac(kMacBytes, '\0');
    if (!ReadFull(fd, magic, sizeof(magic)) ||
        std::memcmp(magic, kHelloMagic, sizeof(magic)) != 0 ||
        !ReadFull(fd, client_nonce.data(), kNonceBytes) || !RandomNonce(&server_nonce)) {
      return false;
    }
    const std::string challenge =
        server_nonce + HandshakeMac(token_, "server", client_nonce, server_nonce);
    if (!WriteFull(fd, challenge.data(), challenge.size()) ||
        !ReadFull(fd, client_mac.data(), kMacBytes)) {
      return false;
    }
    const bool ok = SameMac(client_mac, HandshakeMac(token_, "client", client_nonce, server_nonce));
    const uint8_t code = ok ? kAuthOk : kAuthRefused;
    if (!WriteFull(fd, &code, 1) || !ok) {
      if (!ok) spdlog::warn("rendezvous store: refused a connection with a wrong token proof");
      return false;
    }
    SetRecvTimeout(fd, 0);  // requests may wait for their keys as long as they ask
    return true;
  }

  // Authenticates one client, then answers its requests until it hangs up or the
  // server stops.
  void Serve(int fd, uint64_t id) {
    const bool authenticated = Authenticate(fd);
    while (authenticated) {
      uint8_t op = 0;
      std::string key, value;
      uint64_t timeout_ms = 0;
      if (!ReadFull(fd, &op, 1) || !ReadBlob(fd, kMaxKeyBytes, &key) ||
          !ReadBlob(fd, kMaxValueBytes, &value) || !ReadU64(fd, &timeout_ms)) {
        break;
      }
      uint8_t code = kOk;
      std::string out;
      const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
      {
        std::unique_lock<std::mutex> lock(mu_);
        ++busy_;
        switch (op) {
          case kSet:
            data_[key] = std::move(value);
            cv_.notify_all();
            break;
          case kGet:
          case kWait: {
            // kWait carries its keys NUL-separated in the value.
            std::vector<std::string> keys;
            if (op == kGet) {
              keys.push_back(key);
            } else {
              size_t start = 0;
              while (start <= value.size() && !value.empty()) {
                size_t end = value.find('\0', start);
                if (end == std::string::npos) end = value.size();
                keys.push_back(value.substr(start, end - start));
                start = end + 1;
              }
            }
            auto all_present = [&] {
              for (const auto& k : keys) {
                if (!data_.contains(k)) return false;
              }
              return true;
            };
            if (!cv_.wait_until(lock, deadline, [&] { return stopping_ || all_present(); })) {
              code = kTimeout;
            } else if (!all_present()) {
              code = kStopped;
            } else if (op == kGet) {
              out = data_[key];
            }
            break;
          }
          case kDelete:
            data_.erase(key);
            break;
          default:
            code = kBadRequest;
        }
      }
      std::string reply(1, static_cast<char>(code));
      PutU32(&reply, static_cast<uint32_t>(out.size()));
      reply += out;
      const bool sent = WriteFull(fd, reply.data(), reply.size());
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
      }
      idle_cv_.notify_all();
      if (!sent) break;
    }
    {
      // Forget the fd before closing it, so the destructor never shuts down a reused one.
      std::lock_guard<std::mutex> lock(mu_);
      std::erase(conn_fds_, fd);
      finished_.push_back(id);  // the accept loop joins this thread
    }
    ::close(fd);
  }

  std::string token_;  // set before the accept thread starts, then only read
  int listen_fd_ = -1;
  int port_ = 0;
  int wake_pipe_[2] = {-1, -1};
  std::thread accept_thread_;

  std::mutex mu_;
  std::condition_variable cv_;       // a key was set, or stopping_
  std::condition_variable idle_cv_;  // busy_ dropped
  bool stopping_ = false;
  int busy_ = 0;  // requests read but not yet answered
  std::map<std::string, std::string> data_;
  std::vector<int> conn_fds_;
  std::map<uint64_t, std::thread> conn_threads_;  // by connection id
  std::vector<uint64_t> finished_;                // ids whose Serve has returned (or is returning)
  uint64_t next_conn_id_ = 0;
};

class StoreClientImpl : public StoreClient {
 public:
  StoreClientImpl(int fd, std::string address) : fd_(fd), address_(std::move(address)) {}
  ~StoreClientImpl() override { ::close(fd_); }

  absl::Status Set(const std::string& key, absl::string_view value) override {
    return Call(kSet, key, value, std::chrono::milliseconds(0), nullptr);
  }

  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override {
    std::string out;
    if (absl::Status s = Call(kGet, key, "", timeout, &out); !s.ok()) return s;
    return out;
  }

  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override {
    std::string joined = absl::StrJoin(keys, absl::string_view("\0", 1));
    return Call(kWait, "", joined, timeout, nullptr);
  }

  absl::Status Delete(const std::string& key) override {
    return Call(kDelete, key, "", std::chrono::milliseconds(0), nullptr);
  }

 private:
  absl::Status Call(uint8_t op, const std::string& key, absl::string_view value,
                    std::chrono::milliseconds timeout, std::string* out) {
    if (key.size() > kMaxKeyBytes || value.size() > kMaxValueBytes) {
      return absl::InvalidArgumentError(absl::StrCat("rendezvous store: key '", key.substr(0, 64),
                                                     "' or its value is too large"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.ok()) return broken_;
    std::string req(1, static_cast<char>(op));
    PutU32(&req, static_cast<uint32_t>(key.size()));
    req += key;
    PutU32(&req, static_cast<uint32_t>(value.size()));
    req.append(value.data(), value.size());
    PutU64(&req, static_cast<uint64_t>(std::max<int64_t>(0, timeout.count())));
    // The server answers a wait by its deadline; the socket gives up a little later so a
    // silent (hung or partitioned) server cannot block us forever.
    timeval tv{};
    const int64_t guard_ms = timeout.count() + 10000;
    tv.tv_sec = guard_ms / 1000;
    tv.tv_usec = (guard_ms % 1000) * 1000;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    uint8_t code = 0;
    std::string reply_value;
    if (!WriteFull(fd_, req.data(), req.size()) || !ReadFull(fd_, &code, 1) ||
        !ReadBlob(fd_, kMaxValueBytes, &reply_value)) {
      // A half-read reply would desynchronise the stream: the connection is done for.
      broken_ = absl::UnavailableError(
          absl::StrCat("rendezvous store at ", address_, ": connection lost (", ErrnoText(), ")"));
      return broken_;
    }
    switch (code) {
      case kOk:
        if (out != nullptr) *out = std::move(reply_value);
        return absl::OkStatus();
      case kTimeout:
        return absl::DeadlineExceededError(absl::StrCat(
            "rendezvous store at ", address_, ": timed out after ", timeout.count(),
            " ms waiting for key(s) '",
            op == kWait ? absl::StrReplaceAll(value, {{absl::string_view("\0", 1), "', '"}}) : key,
            "'"));
      case kStopped:
        // The server stops when rank 0 gives up (its own deadline passed) or exits.
        return absl::DeadlineExceededError(absl::StrCat(
            "rendezvous store at ", address_, " shut down while waiting for key(s) '",
            op == kWait ? absl::StrReplaceAll(value, {{absl::string_view("\0", 1), "', '"}}) : key,
            "' (rank 0 gave up or exited)"));
      default:
        return absl::InternalError(
            absl::StrCat("rendezvous store at ", address_, ": server rejected a request"));
    }
  }

  int fd_;
  std::string address_;
  std::mutex mu_;
  absl::Status broken_;
};

}  // namespace

absl::Status ParseHostPort(const std::string& address, std::string* host, int* port) {
  std::string port_text;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", address, "': want [v6]:port"));
    }
    *host = address.substr(1, close - 1);
    port_text = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", address, "': want host:port"));
    }
    *host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
  }
  if (!absl::SimpleAtoi(port_text, port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in address '", address, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StoreServer>> StoreServer::Start(const std::string& address,
                                                                const std::string& token) {
  auto server = std::make_unique<StoreServerImpl>();
  if (absl::Status s = server->Init(address, token); !s.ok()) return s;
  return server;
}

namespace {

// The client's side of the handshake on a connected socket. Unauthenticated when the
// server refuses our proof or cannot give its own (another run's store, or an
// impostor); Unavailable when the connection breaks first.
absl::Status AuthenticateToServer(int fd, const std::string& address, const std::string& token) {
  SetRecvTimeout(fd, kHandshakeTimeoutMs);
  std::string client_nonce;
  if (!RandomNonce(&client_nonce)) {
    return absl::InternalError("rendezvous store: no random bytes for the handshake");
  }
  const std::string hello = std::string(kHelloMagic, sizeof(kHelloMagic)) + client_nonce;
  std::string server_nonce(kNonceBytes, '\0'), server_mac(kMacBytes, '\0');
  if (!WriteFull(fd, hello.data(), hello.size()) ||
      !ReadFull(fd, server_nonce.data(), kNonceBytes) ||
      !ReadFull(fd, server_mac.data(), kMacBytes)) {
    return absl::UnavailableError(absl::StrCat("rendezvous store at ", address,
                                               ": connection lost during the handshake (",
                                               ErrnoText(), ")"));
  }
  if (!SameMac(server_mac, HandshakeMac(token, "server", client_nonce, server_nonce))) {
    return absl::UnauthenticatedError(absl::StrCat(
        "rendezvous store at ", address, " does not hold this run's token (another run's store?)"));
  }
  const std::string proof = HandshakeMac(token, "client", client_nonce, server_nonce);
  uint8_t code = kAuthRefused;
  if (!WriteFull(fd, proof.data(), proof.size()) || !ReadFull(fd, &code, 1)) {
    return absl::UnavailableError(absl::StrCat("rendezvous store at ", address,
                                               ": connection lost during the handshake (",
                                               ErrnoText(), ")"));
  }
  if (code != kAuthOk) {
    return absl::UnauthenticatedError(
        absl::StrCat("rendezvous store at ", address, " refused this run's token"));
  }
  SetRecvTimeout(fd, 0);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Connect(
    const std::string& address, const std::string& token, std::chrono::milliseconds timeout) {
  if (token.empty()) {
    return absl::InvalidArgumentError("rendezvous store: no token to authenticate with");
  }
  std::string host;
  int port = 0;
  if (absl::Status s = ParseHostPort(address, &host, &port); !s.ok()) return s;
  const auto deadline = Clock::now() + timeout;
  std::string last_error;
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) {
      last_error = ::gai_strerror(rc);
    } else {
      for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
          last_error = ErrnoText();
          continue;
        }
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
          int one = 1;
          ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          absl::Status authenticated = AuthenticateToServer(fd, address, token);
          if (authenticated.ok()) {
            ::freeaddrinfo(res);
            return std::unique_ptr<StoreClient>(new StoreClientImpl(fd, address));
          }
          ::close(fd);
          if (absl::IsUnauthenticated(authenticated) || absl::IsInternal(authenticated)) {
            ::freeaddrinfo(res);
            return authenticated;  // retrying cannot help
          }
          last_error = std::string(authenticated.message());
          continue;
        }
        last_error = ErrnoText();
        ::close(fd);
      }
      ::freeaddrinfo(res);
    }
    if (Clock::now() >= deadline) break;
    // Rank 0 may still be starting its server: retry until the deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("could not reach the rendezvous store at ",
                                                  address, " within ", timeout.count(),
                                                  " ms: ", last_error));
}

namespace {
[[noreturn]] void ThrowForGloo(const absl::Status& s) {
  // Gloo matches no codes; keep its own wording for timeouts so callers can tell them apart.
  std::string prefix = absl::IsDeadlineExceeded(s) ? "Timed out waiting: " : "";
  throw gloo::IoException(absl::StrCat(prefix, s.ToString()));
}
}  // namespace

void GlooStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  absl::Status s = client_->Set(prefix_ + key, absl::string_view(data.data(), data.size()));
  if (!s.ok()) ThrowForGloo(s);
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  absl::StatusOr<std::string> v = client_->Get(prefix_ + key, timeout_);
  if (!v.ok()) ThrowForGloo(v.status());
  return std::vector<char>(v->begin(), v->end());
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void GlooStoreAdapter::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(prefix_ + k);
  absl::Status s = client_->Wait(full, timeout);
  if (!s.ok()) ThrowForGloo(s);
}

}  // namespace pmdrl
