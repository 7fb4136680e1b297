#include "actor/verifier_pool.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/rpc.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

// One configured target and its channel. A `dns:` target's channel is replaced once
// it is older than Options::dns_refresh, so that the name is resolved again.
struct VerifierPool::Target {
  std::string address;
  bool dns = false;

  std::mutex mu;
  std::shared_ptr<v1::Verifier::Stub> stub;  // guarded by mu
  std::chrono::steady_clock::time_point created;

  // The stub a new stream should use.
  std::shared_ptr<v1::Verifier::Stub> Stub(std::chrono::milliseconds refresh) {
    std::lock_guard<std::mutex> lock(mu);
    const auto now = std::chrono::steady_clock::now();
    if (stub == nullptr || (dns && now - created >= refresh)) {
      // MakeChannel sets the round_robin policy: over every address the name resolves
      // to. Streams still open on the old channel keep it alive until they close.
      stub = v1::Verifier::NewStub(MakeChannel(address));
      created = now;
    }
    return stub;
  }
};

struct VerifierPool::Verifier {
  std::string address;
  Target* target = nullptr;                      // owned by the pool's targets_
  std::shared_ptr<v1::Verifier::Stub> stub;      // of the open stream's channel
  std::chrono::steady_clock::time_point opened;  // of the open stream

  std::mutex mu;                             // serialises use of the stream: one group at a time
  std::unique_ptr<grpc::ClientContext> ctx;  // of the open stream; null when closed
  std::unique_ptr<grpc::ClientReaderWriter<v1::Group, v1::GroupAck>> stream;
  std::atomic<bool> healthy{true};  // last attempt succeeded (to log transitions)

  // Guarded by the pool's watchdog_mu_: the ack deadline of the group in flight.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  bool timed_out = false;
};

VerifierPool::VerifierPool(std::vector<std::string> addresses, std::string token, Options options)
    : token_(std::move(token)), options_(options) {
  for (std::string& address : addresses) {
    auto t = std::make_unique<Target>();
    t->dns = IsDnsTarget(address);
    t->address = std::move(address);
    t->Stub(options_.dns_refresh);  // the channel; it connects on its first stream
    const int slots = t->dns ? std::max(1, options_.dns_streams) : 1;
    for (int i = 0; i < slots; ++i) {
      auto v = std::make_unique<Verifier>();
      v->address = t->address;
      v->target = t.get();
      verifiers_.push_back(std::move(v));
    }
    targets_.push_back(std::move(t));
  }
  watchdog_ = std::thread([this] { Watchdog(); });
}

VerifierPool::~VerifierPool() {
  {
    std::lock_guard<std::mutex> lock(watchdog_mu_);
    watchdog_stop_ = true;
  }
  watchdog_cv_.notify_all();
  watchdog_.join();
  for (auto& v : verifiers_) {
    std::lock_guard<std::mutex> lock(v->mu);
    if (v->stream != nullptr) {
      v->ctx->TryCancel();
      v->stream->Finish().IgnoreError();
    }
  }
}

const std::string& VerifierPool::address(size_t i) const { return verifiers_.at(i)->address; }

bool VerifierPool::IsDnsTarget(const std::string& target) {
  return absl::StartsWith(target, "dns:");
}

void VerifierPool::Watchdog() {
  std::unique_lock<std::mutex> lock(watchdog_mu_);
  while (!watchdog_stop_) {
    std::optional<std::chrono::steady_clock::time_point> earliest;
    const auto now = std::chrono::steady_clock::now();
    for (auto& v : verifiers_) {
      if (!v->deadline.has_value()) continue;
      if (*v->deadline <= now) {
        // The ctx outlives the deadline: SendTo clears `deadline` (under this mutex)
        // before it closes the stream.
        v->timed_out = true;
        v->deadline.reset();
        v->ctx->TryCancel();
      } else if (!earliest.has_value() || *v->deadline < *earliest) {
        earliest = v->deadline;
      }
    }
    if (earliest.has_value()) {
      watchdog_cv_.wait_until(lock, *earliest);
    } else {
      watchdog_cv_.wait(lock);
    }
  }
}

absl::StatusOr<v1::GroupAck> VerifierPool::SendTo(Verifier& v, const v1::Group& group) {
  std::lock_guard<std::mutex> lock(v.mu);
  if (v.stream == nullptr) {
    v.ctx = std::make_unique<grpc::ClientContext>();
    AddBearer(v.ctx.get(), token_);
    v.stub = v.target->Stub(options_.dns_refresh);
    v.stream = v.stub->ScoreGroups(v.ctx.get());
    v.opened = std::chrono::steady_clock::now();
  }
  {
    std::lock_guard<std::mutex> wlock(watchdog_mu_);
    v.deadline = std::chrono::steady_clock::now() + options_.ack_timeout;
    v.timed_out = false;
  }
  watchdog_cv_.notify_all();

  const bool written = v.stream->Write(group);
  v1::GroupAck ack;
  const bool read = written && v.stream->Read(&ack);

  bool timed_out;
  {
    std::lock_guard<std::mutex> wlock(watchdog_mu_);
    v.deadline.reset();
    timed_out = v.timed_out;
  }

  // A stream that may still be open (a timed-out Read) is cancelled first, so Finish
  // cannot block. A failed Write or Read means the call is over: Finish then returns the
  // server's own status (UNAUTHENTICATED, say), which a cancel would mask as CANCELLED.
  auto close = [&](std::string why, bool cancel) {
    if (cancel) v.ctx->TryCancel();
    const grpc::Status status = v.stream->Finish();
    // Which replica of a DNS target it was (peer() is known once the call started).
    const std::string peer = v.target->dns ? v.ctx->peer() : "";
    const std::string where =
        peer.empty() || peer == v.address ? v.address : absl::StrCat(v.address, " (", peer, ")");
    v.stream.reset();
    v.ctx.reset();
    if (timed_out) {
      why = absl::StrCat("no ack within ", options_.ack_timeout.count(), " ms");
    } else if (why.empty()) {
      why = absl::StrCat("stream broken (", ToAbsl(status).ToString(), ")");
    }
    return absl::UnavailableError(absl::StrCat(where, ": ", why));
  };

  if (!read || timed_out) return close("", timed_out);
  if (ack.lease_id() != group.lease_id()) {
    return close(absl::StrCat("ack for lease '", ack.lease_id(), "' while waiting for '",
                              group.lease_id(), "': stream out of step, reopened"),
                 true);
  }
  if (ack.status() == v1::ACK_UNKNOWN) {
    return absl::UnavailableError(absl::StrCat(v.address, ": ACK_UNKNOWN (", ack.message(), ")"));
  }
  if (v.target->dns && std::chrono::steady_clock::now() - v.opened >= options_.dns_refresh) {
    // Its ack is in: nothing is lost by ending the stream here. The next group opens a
    // new one, which round_robin may place on a replica that appeared since.
    v.ctx->TryCancel();
    v.stream->Finish().IgnoreError();
    v.stream.reset();
    v.ctx.reset();
  }
  return ack;
}

absl::StatusOr<v1::GroupAck> VerifierPool::Send(const v1::Group& group) {
  if (verifiers_.empty()) return absl::FailedPreconditionError("no verifier addresses");
  const size_t n = verifiers_.size();
  const size_t start = next_.fetch_add(1) % n;
  std::string errors;
  for (size_t i = 0; i < n; ++i) {
    Verifier& v = *verifiers_[(start + i) % n];
    absl::StatusOr<v1::GroupAck> ack = SendTo(v, group);
    if (ack.ok()) {
      if (!v.healthy.exchange(true)) spdlog::info("verifier {} acks again", v.address);
      return ack;
    }
    if (v.healthy.exchange(false)) {
      spdlog::warn("verifier {}", std::string(ack.status().message()));
    }
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", ack.status().message());
  }
  return absl::UnavailableError(
      absl::StrCat("no verifier acked the group of lease '", group.lease_id(), "': ", errors));
}

}  // namespace pmdrl
