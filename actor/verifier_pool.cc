#include "actor/verifier_pool.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <deque>
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

// A group written on a stream, waiting for its ack; completed by the stream's reader.
struct VerifierPool::Pending {
  std::string lease_id;
  bool done = false;  // guarded by the verifier's mu
  absl::StatusOr<v1::GroupAck> result = absl::UnknownError("pending");
};

// One stream slot. Its `mu` guards the stream's state; writes are made under it too, so
// the order of `pending` is the order of the groups on the wire.
struct VerifierPool::Verifier {
  std::string address;
  Target* target = nullptr;                      // owned by the pool's targets_
  std::shared_ptr<v1::Verifier::Stub> stub;      // of the open stream's channel
  std::chrono::steady_clock::time_point opened;  // of the open stream

  std::mutex mu;
  std::condition_variable changed;           // a group completed, or the stream closed
  std::unique_ptr<grpc::ClientContext> ctx;  // of the open stream; null when closed
  std::unique_ptr<grpc::ClientReaderWriter<v1::Group, v1::GroupAck>> stream;
  std::deque<std::shared_ptr<Pending>> pending;  // written, unacked, oldest first
  std::thread reader;  // of the open stream (or, once it closed, finishing its last lines)
  std::atomic<bool> healthy{true};  // last attempt succeeded (to log transitions)

  // Guarded by the pool's watchdog_mu_: the ack deadline of the oldest group in flight.
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
  // Each reader closes its own stream once cancelled (failing what is still pending).
  for (auto& v : verifiers_) {
    {
      std::lock_guard<std::mutex> lock(v->mu);
      if (v->ctx != nullptr) v->ctx->TryCancel();
    }
    if (v->reader.joinable()) v->reader.join();
  }
  {
    std::lock_guard<std::mutex> lock(watchdog_mu_);
    watchdog_stop_ = true;
  }
  watchdog_cv_.notify_all();
  watchdog_.join();
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
        // The ctx outlives the deadline: the reader clears `deadline` (under this
        // mutex) before it closes the stream.
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
  std::unique_lock<std::mutex> lock(v.mu);
  const size_t window = static_cast<size_t>(std::max(1, options_.window));
  v.changed.wait(lock, [&] { return v.pending.size() < window; });
  if (v.stream == nullptr) {
    // The previous stream's reader has closed it and is past its last use of `mu`.
    if (v.reader.joinable()) v.reader.join();
    v.ctx = std::make_unique<grpc::ClientContext>();
    AddBearer(v.ctx.get(), token_);
    v.stub = v.target->Stub(options_.dns_refresh);
    v.stream = v.stub->ScoreGroups(v.ctx.get());
    v.opened = std::chrono::steady_clock::now();
    v.reader = std::thread([this, pv = &v] { ReadAcks(pv); });
  }
  auto mine = std::make_shared<Pending>();
  mine->lease_id = group.lease_id();
  v.pending.push_back(mine);
  if (v.pending.size() == 1) {
    std::lock_guard<std::mutex> wlock(watchdog_mu_);
    v.deadline = std::chrono::steady_clock::now() + options_.ack_timeout;
    v.timed_out = false;
    watchdog_cv_.notify_all();
  }
  // A failed Write means the call is over: the reader's Read fails too, and it fails
  // every pending group, this one included.
  v.stream->Write(group);
  v.changed.wait(lock, [&] { return mine->done; });
  absl::StatusOr<v1::GroupAck> ack = std::move(mine->result);
  if (ack.ok() && ack->status() == v1::ACK_UNKNOWN) {
    return absl::UnavailableError(absl::StrCat(v.address, ": ACK_UNKNOWN (", ack->message(), ")"));
  }
  return ack;
}

void VerifierPool::ReadAcks(Verifier* v) {
  // Only this thread reads or resets the stream; `stream` and `ctx` stay put until then.
  grpc::ClientReaderWriter<v1::Group, v1::GroupAck>* stream = v->stream.get();
  while (true) {
    v1::GroupAck ack;
    const bool read = stream->Read(&ack);
    std::unique_lock<std::mutex> lock(v->mu);
    bool timed_out;
    {
      std::lock_guard<std::mutex> wlock(watchdog_mu_);
      timed_out = v->timed_out;
      if (read && !timed_out && !v->pending.empty() &&
          ack.lease_id() == v->pending.front()->lease_id) {
        // The next group's ack is due within ack_timeout from now.
        if (v->pending.size() > 1) {
          v->deadline = std::chrono::steady_clock::now() + options_.ack_timeout;
        } else {
          v->deadline.reset();
        }
      } else {
        v->deadline.reset();  // the stream closes below: the watchdog lets go of ctx
      }
    }
    std::string why;
    bool cancel = false;
    if (!read || timed_out) {
      cancel = timed_out;  // a timed-out stream may still be open
    } else if (v->pending.empty() || ack.lease_id() != v->pending.front()->lease_id) {
      why = absl::StrCat("ack for lease '", ack.lease_id(), "' while waiting for '",
                         v->pending.empty() ? "" : v->pending.front()->lease_id,
                         "': stream out of step, reopened");
      cancel = true;
    } else {
      std::shared_ptr<Pending> front = std::move(v->pending.front());
      v->pending.pop_front();
      front->result = std::move(ack);
      front->done = true;
      v->changed.notify_all();
      if (!v->pending.empty() || !v->target->dns ||
          std::chrono::steady_clock::now() - v->opened < options_.dns_refresh) {
        continue;
      }
      // Nothing in flight: ending the stream loses nothing. The next group opens a new
      // one, which round_robin may place on a replica that appeared since.
      v->ctx->TryCancel();
      v->stream->Finish().IgnoreError();
      v->stream.reset();
      v->ctx.reset();
      return;
    }

    // A stream that may still be open is cancelled first, so Finish cannot block. A
    // failed Read means the call is over: Finish then returns the server's own status
    // (UNAUTHENTICATED, say), which a cancel would mask as CANCELLED. Writers hold `mu`
    // while they write, so Finish runs alone on the stream.
    if (cancel) v->ctx->TryCancel();
    const grpc::Status status = v->stream->Finish();
    // Which replica of a DNS target it was (peer() is known once the call started).
    const std::string peer = v->target->dns ? v->ctx->peer() : "";
    const std::string where =
        peer.empty() || peer == v->address ? v->address : absl::StrCat(v->address, " (", peer, ")");
    if (timed_out) {
      why = absl::StrCat("no ack within ", options_.ack_timeout.count(), " ms");
    } else if (why.empty()) {
      why = absl::StrCat("stream broken (", ToAbsl(status).ToString(), ")");
    }
    const absl::Status error = absl::UnavailableError(absl::StrCat(where, ": ", why));
    for (std::shared_ptr<Pending>& p : v->pending) {
      p->result = error;
      p->done = true;
    }
    if (v->pending.size() > 1) {
      spdlog::warn("verifier {}: {} groups in flight go to other verifiers", where,
                   v->pending.size());
    }
    v->pending.clear();
    v->stream.reset();
    v->ctx.reset();
    v->changed.notify_all();
    return;
  }
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
