// Client-side load balancing of an actor's groups over the verifier workers
// (docs/design.md "Data flow" step 3).
#ifndef PMDRL_ACTOR_VERIFIER_POOL_H_
#define PMDRL_ACTOR_VERIFIER_POOL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// Sends groups round-robin over a list of verifier targets, keeping open ScoreGroups
// streams (with the bearer token) and matching each group to its ack. A stream carries
// up to `Options::window` groups at once: Send writes its group without waiting for the
// acks of those before it, and a reader thread per open stream matches the acks, which
// the protocol sends one per group in order, to the groups in the order written.
// A target is either host:port (one verifier: one channel, one stream) or a DNS name,
// `dns:///verifier:50052`, that stands for every replica it resolves to (scaled
// verifiers behind one name). A DNS target gets ONE channel with the round_robin
// policy and `Options::dns_streams` streams over it; each stream is pinned to the
// replica round_robin picked when it opened, so the streams spread over the replicas.
// To follow replicas that come and go, a DNS target's streams are closed after
// `dns_refresh` (once no group is in flight on them) and its channel is rebuilt after
// that long, which resolves the name again; a stream to a replica that went away breaks
// and is reopened on a live one. When a stream breaks (or its oldest unacked group sees
// no ack within `ack_timeout`, or an ack names the wrong lease), EVERY group in flight on
// it fails there and its Send moves on to the next verifier, as does a group answered
// ACK_UNKNOWN (each verifier is tried at most once per Send); a broken stream is
// reopened on its verifier's next turn. Thread-safe: concurrent Sends share the
// streams, up to `window` per stream, and otherwise wait for room in one.
class VerifierPool {
 public:
  struct Options {
    // A verifier acks once the learner has answered; a stream silent for this long is
    // treated as broken (cancelled and reopened).
    std::chrono::milliseconds ack_timeout{60000};
    // Streams per `dns:` target (>= 1): how many replicas one actor can use at once.
    int dns_streams = 4;
    // How long a `dns:` target's stream and channel live before they are replaced
    // (new replicas are found no later than this).
    std::chrono::milliseconds dns_refresh{30000};
    // Groups written on one stream and not yet acked, at most (>= 1; actor.send_window).
    int window = 8;
  };

  VerifierPool(std::vector<std::string> addresses, std::string token, Options options);
  VerifierPool(std::vector<std::string> addresses, std::string token)
      : VerifierPool(std::move(addresses), std::move(token), Options()) {}
  VerifierPool(const VerifierPool&) = delete;
  VerifierPool& operator=(const VerifierPool&) = delete;
  ~VerifierPool();  // cancels open streams

  // The ack of the first verifier that gave a definite answer (ACCEPTED, STALE,
  // DUPLICATE or REJECTED), or UNAVAILABLE naming what each verifier said. An ack
  // whose lease_id is not the group's breaks that stream (it is out of step).
  absl::StatusOr<v1::GroupAck> Send(const v1::Group& group);

  // Stream slots: one per host:port target, Options::dns_streams per `dns:` target.
  size_t size() const { return verifiers_.size(); }
  // The target slot `i` was made for (a `dns:` target appears once per slot).
  const std::string& address(size_t i) const;

  // True for a target that names replicas through DNS (`dns:///name:port`, `dns:name:port`).
  static bool IsDnsTarget(const std::string& target);

 private:
  struct Target;
  struct Verifier;

  struct Pending;

  // One attempt on one verifier: its ack, or why it gave none.
  absl::StatusOr<v1::GroupAck> SendTo(Verifier& v, const v1::Group& group);
  // The reader of one open stream of `v`: completes its pending groups in order, and
  // closes the stream (failing every pending group) when it breaks.
  void ReadAcks(Verifier* v);
  void Watchdog();

  const std::string token_;
  const Options options_;
  std::vector<std::unique_ptr<Target>> targets_;  // each slot points at one; outlives them
  std::vector<std::unique_ptr<Verifier>> verifiers_;
  std::atomic<size_t> next_{0};

  // Cancels a stream whose oldest ack is overdue (a blocking Read cannot time out itself).
  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool watchdog_stop_ = false;  // guarded by watchdog_mu_
  std::thread watchdog_;
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_VERIFIER_POOL_H_
