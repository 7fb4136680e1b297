// The actor's end of the weight feed (DESIGN.md "Data flow" step 6): keeps a
// Coordinator.WatchWeights stream open and assembles the streamed WeightChunks into
// complete, validated policy versions.
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
#include "pmdrl/pmdrl.pb.h"

namespace pmdrl {

// One complete policy version: tensors in the order the coordinator sent them, with
// Hugging Face names, shapes and float32 data (host byte order). Immutable once
// published; shared by the receiver and whoever loads it.
struct WeightSet {
  uint64_t version = 0;
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> data;
  // When the first chunk of this version arrived: the start of the weight-sync time.
  std::chrono::steady_clock::time_point first_chunk_time;
  uint64_t total_bytes = 0;  // sum of the tensors' byte sizes
};

// Assembles one stream of chunks into versions. Pure logic, no I/O or threads, so the
// rules can be tested directly: tensors arrive in order (tensor_index 0..count-1), each
// as consecutive chunks (offsets 0, then the bytes so far) of float32 data; name,
// shape, tensor_bytes and tensor_count stay the same across the chunks of a tensor or
// version; byte counts are multiples of 4; the shape's element count times 4 equals
// tensor_bytes; every value is finite. A chunk that breaks a rule drops the version
// being assembled (Add returns the error) and every further chunk of that version is
// ignored. A version not newer than the one already held is skipped silently.
class WeightAssembler {
 public:
  // Feeds one chunk. Returns a complete version when this chunk finished one, null
  // otherwise; an error when the chunk was malformed (the version is dropped).
  // `newest_complete` is the newest version already held (none: nullopt): older or
  // equal versions are ignored (a reconnecting stream starts again with the current
  // version).
  absl::Status Add(const v1::WeightChunk& chunk, std::optional<uint64_t> newest_complete,
                   std::shared_ptr<WeightSet>* complete);

  // Drops a partly assembled version (the stream broke).
  void Reset();

 private:
  std::shared_ptr<WeightSet> partial_;  // version being assembled; null when idle
  uint32_t tensor_count_ = 0;           // of partial_
  uint64_t tensor_bytes_ = 0;           // of the tensor being assembled
  uint64_t tensor_received_ = 0;        // bytes of it received so far
  bool skipping_ = false;               // ignoring the rest of `skip_version_`
  uint64_t skip_version_ = 0;
};

// Runs a background thread that keeps one WatchWeights stream to the coordinator open
// (with the bearer token; reconnecting with exponential backoff when it breaks) and
// publishes every complete version it assembles. Thread-safe: Latest() and
// WaitForVersion() may be called from any thread. The channel is shared; the receiver
// owns its thread and stream, and Stop() (or the destructor) ends both.
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
  std::shared_ptr<const WeightSet> Latest() const;
  // Hands the newest complete version over (null if none is waiting) and lets go of it, so
  // that once the caller has loaded and dropped it the weights are held once. Versions
  // count as held by WaitForVersion and the stream after they are taken.
  std::shared_ptr<const WeightSet> Take();

  // Blocks until a complete version >= v is held (true), or until `timeout` passes or
  // the receiver stops (false). With v = 0 it waits for any version.
  bool WaitForVersion(uint64_t v, std::chrono::milliseconds timeout);

  // Versions dropped because a chunk was malformed.
  uint64_t malformed_versions() const { return malformed_.load(); }

 private:
  void Loop();
  void Publish(std::shared_ptr<const WeightSet> set);

  const std::shared_ptr<grpc::Channel> channel_;
  const std::string actor_id_;
  const std::string token_;
  const Options options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;                   // a version arrived, or stopping
  std::shared_ptr<const WeightSet> latest_;      // guarded by mu_
  std::optional<uint64_t> latest_version_;       // newest ever published; guarded by mu_
  bool stopping_ = false;                        // guarded by mu_
  grpc::ClientContext* call_context_ = nullptr;  // of the open stream; guarded by mu_
  std::thread thread_;
  std::atomic<uint64_t> malformed_{0};
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_WEIGHT_RECEIVER_H_
