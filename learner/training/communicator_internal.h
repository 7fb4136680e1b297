// Pieces shared by the Communicator backends (gloo_communicator.cc,
// nccl_communicator.cc); not part of the learner's interface.
#ifndef PMDRL_LEARNER_COMMUNICATOR_INTERNAL_H_
#define PMDRL_LEARNER_COMMUNICATOR_INTERNAL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "learner/training/communicator.h"
#include "learner/training/rendezvous_store.h"

namespace pmdrl::comm_internal {

// Tensors fused into one collective: all of one dtype, in the caller's order.
struct Bucket {
  at::ScalarType dtype;
  std::vector<size_t> indices;  // into the caller's vector
  int64_t numel = 0;            // elements of all of them together
};

// Groups tensors by dtype (in order of first appearance) and packs consecutive tensors
// of a dtype into buckets of at most bucket_bytes; a tensor larger than that gets a
// bucket of its own. Empty tensors are left out. Deterministic, so every rank that
// passes the same shapes gets the same plan.
std::vector<Bucket> PlanBuckets(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes);

// The store connection of one rank; rank 0 also serves the store. The server is
// declared first so it outlives the client.
struct StoreHandle {
  std::unique_ptr<StoreServer> server;
  std::unique_ptr<StoreClient> client;
};
absl::StatusOr<StoreHandle> JoinStore(const CommOptions& options);

// Communicator::Scatter through the store, for both backends: rank 0 puts payload r under
// a key of this call (seq), rank r takes it and deletes it. A failure is annotated with
// `op` (e.g. "Gloo Scatter") and, unless it is the caller's bad arguments, breaks the
// group: it is kept in `*broken`, which every later call answers with (BrokenGroupError).
absl::StatusOr<std::string> ScatterThroughStore(StoreClient& store, const CommOptions& options,
                                                int64_t seq,
                                                const std::vector<std::string>& payloads_at_root,
                                                absl::string_view op, absl::Status* broken);

// What a broken group answers every call with after its first failure, `broken`:
// FailedPrecondition "<op> on rank R of N: the group is broken by an earlier failure: ...".
absl::Status BrokenGroupError(const absl::Status& broken, absl::string_view op,
                              const CommOptions& options);

// What is wrong with the pair of tensors of an AllGather or ReduceScatter, beyond what
// the backend checks on each tensor alone (defined, device, contiguous, dtype): `shard`
// (AllGather's input, ReduceScatter's output, named shard_name) must have the dtype of
// `full` (named full_name) and world_size times fewer elements, and the two must not
// overlap unless `shard` is exactly this rank's slice of `full` (in place). Returns ""
// when the pair is fine; both tensors must be defined.
std::string ShardPairProblem(const at::Tensor& full, absl::string_view full_name,
                             const at::Tensor& shard, absl::string_view shard_name,
                             const CommOptions& options);

// Copies `s` with "<op> on rank R of N: " in front of its message.
absl::Status Annotate(const absl::Status& s, absl::string_view op, const CommOptions& options);

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const CommOptions& options);
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const CommOptions& options);

}  // namespace pmdrl::comm_internal

#endif  // PMDRL_LEARNER_COMMUNICATOR_INTERNAL_H_
