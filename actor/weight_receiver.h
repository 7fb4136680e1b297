// The actor's end of the weight feed (docs/design.md "Data flow" step 6): keeps a
// WeightFeed.WatchWeights stream open and assembles the streamed chunks into complete,
// checksummed policy versions (common/weight_stream.h).
#ifndef PMDRL_ACTOR_WEIGHT_RECEIVER_H_
#define PMDRL_ACTOR_WEIGHT_RECEIVER_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "common/weight_stream.h"

namespace pmdrl {

// Runs a background thread that keeps one WatchWeights stream to the learner open (with
// the bearer token; reconnecting with exponential backoff when it breaks) and publishes
// every complete version it assembles. A version that fails a check (a malformed or
// truncated chunk, a wrong checksum, a delta against a version this actor does not hold)
// is dropped whole and the receiver reconnects asking for a full push, so nothing ever
// sees half-applied weights. The receiver keeps the last version it received: one more
// copy of the weights, in the wire dtype. It is the base of the next delta, when the
// publisher sends deltas, and once the actor has let go of it, the memory the next
// version is written into (a model's worth of fresh pages costs more to fault in than
// the network takes to fill them; a delta is applied in place). Thread-safe:
// Latest() and WaitForVersion() may be called from any thread. The channel is shared;
// the receiver owns its thread and stream, and Stop() (or the destructor) ends both.
class WeightReceiver {
 public:
  struct Options {
    std::chrono::milliseconds initial_backoff{100};
    std::chrono::milliseconds max_backoff{5000};
  };

  WeightReceiver(std::shared_ptr<grpc::Channel> channel, std::string actor_id, std::string token,
                 Options options);
  WeightReceiver(std::shared_ptr<grpc::Channel> channel, std::string actor_id, std::string token)
      : WeightReceiver(std::move(channel), std::move(actor_id), std::move(token), Options()) {}
  WeightReceiver(const WeightReceiver&) = delete;
  WeightReceiver& operator=(const WeightReceiver&) = delete;
  ~WeightReceiver();  // Stop()

  // Starts the thread (once).
  void Start();
  // Cancels the stream, wakes waiters and joins the thread. Idempotent.
  void Stop();

  // The newest complete version not yet taken, or null (before the first one, or when
  // Take() has it).
  std::shared_ptr<const WeightVersion> Latest() const;
  // Hands the newest complete version over (null if none is waiting) and lets go of it:
  // once the caller has loaded and dropped it, the receiver may write the next version
  // into its memory. Versions count as held by WaitForVersion and the stream after they
  // are taken.
  std::shared_ptr<const WeightVersion> Take();

  // Blocks until a complete version >= v is held (true), or until `timeout` passes or
  // the receiver stops (false). With v = 0 it waits for any version.
  bool WaitForVersion(uint64_t v, std::chrono::milliseconds timeout);

  // The newest version received (taken or not) since the start or the last Forget().
  std::optional<uint64_t> NewestVersion() const;

  // Forgets every version received so far (and the delta base) and reopens the stream
  // asking for a full push. For a learner that restarted from an older checkpoint: its
  // version numbers repeat ones this receiver holds with other weights, and a stream
  // that says it has them would never be sent the new ones.
  void Forget();

  // Versions dropped because a chunk failed a check.
  uint64_t malformed_versions() const { return malformed_.load(); }
  // Versions received as deltas, and bytes received over the wire for all versions.
  uint64_t delta_versions() const { return delta_versions_.load(); }
  uint64_t wire_bytes() const { return wire_bytes_.load(); }

 private:
  void Loop();
  // Publishes a version assembled from a stream opened in Forget() epoch `epoch`; one of
  // an earlier epoch is dropped.
  void Publish(std::shared_ptr<const WeightVersion> version, uint64_t epoch);

  const std::shared_ptr<grpc::Channel> channel_;
  const std::string actor_id_;
  const std::string token_;
  const Options options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;                   // a version arrived, or stopping
  std::shared_ptr<const WeightVersion> latest_;  // guarded by mu_
  std::optional<uint64_t> latest_version_;       // newest ever published; guarded by mu_
  bool stopping_ = false;                        // guarded by mu_
  uint64_t forget_epoch_ = 0;                    // Forget() calls; guarded by mu_
  grpc::ClientContext* call_context_ = nullptr;  // of the open stream; guarded by mu_
  std::thread thread_;
  std::atomic<uint64_t> malformed_{0};
  std::atomic<uint64_t> delta_versions_{0};
  std::atomic<uint64_t> wire_bytes_{0};
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_WEIGHT_RECEIVER_H_
