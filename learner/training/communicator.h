// Collectives of the data-parallel learner (docs/design.md "Collectives"): every rank holds
// the full model, and after each backward pass the ranks all-reduce their gradients so
// that the step equals one rank training on the whole global batch (up to rounding).
//
// Backends: "gloo" for CPU tensors (Debian libgloo, TCP transport) and "nccl" for CUDA
// tensors (compiled only when the CUDA toolkit and NCCL are found). Both bootstrap
// through a rendezvous store (learner/training/rendezvous_store.h) that rank 0 serves.
#ifndef PMDRL_LEARNER_COMMUNICATOR_H_
#define PMDRL_LEARNER_COMMUNICATOR_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pmdrl {

struct CommOptions {
  int rank = 0;
  int world_size = 1;
  // Rendezvous store served by rank 0 ("host:port"); rank 0 binds exactly this address.
  std::string store_address = "127.0.0.1:29500";
  // The run's bearer token: every connection to the store proves it holds it
  // (learner/training/rendezvous_store.h). Required: joining fails with InvalidArgument without.
  std::string token;
  std::string backend = "gloo";  // gloo | nccl
  // nccl: the GPU this rank uses; -1: rank % visible GPUs (one process per GPU).
  int cuda_device = -1;
  // Upper bound of one fused all-reduce bucket; a tensor bigger than this is reduced
  // on its own, in place.
  int64_t bucket_bytes = 25 << 20;
  // Any collective or rendezvous that takes longer fails with DEADLINE_EXCEEDED naming
  // the op and rank, so a dead peer cannot hang the others.
  std::chrono::milliseconds timeout{60000};
  // Address this rank's Gloo transport listens on for its peers. Empty: 127.0.0.1 when
  // the store is on loopback, otherwise this host's name.
  std::string local_address;
};

// All-reduce / broadcast / barrier / scatter, and the all-gather / reduce-scatter pair
// of sharded optimizer state (ZeRO-1/2), over a fixed group of ranks.
//
// Promises: every rank must make the same collective calls, in the same order, with
// tensors of the same dtypes and shapes; the tensors are updated in place (AllGather
// and ReduceScatter: `output` is overwritten, `input` is only read) and stay owned by
// the caller. Bad arguments (dtype, device, shape, layout) fail with InvalidArgument
// before anything is sent, and leave the group usable. After a call fails otherwise
// (timeout, lost peer) the group is broken: every later call fails too, and the caller
// should tear the group down.
// Not thread-safe: one thread drives a Communicator.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sums (average: then divides by world_size) each tensor in place across ranks.
  // Tensors are packed into flat buckets of at most bucket_bytes per dtype, one
  // collective per bucket. Supported dtypes: float32, float64, int32, int64 (average
  // only for the floating ones). Gloo wants CPU contiguous tensors, NCCL CUDA ones.
  virtual absl::Status AllReduce(std::vector<at::Tensor>& tensors, bool average) = 0;
  // Overwrites every rank's tensors with those of `root`.
  virtual absl::Status Broadcast(std::vector<at::Tensor>& tensors, int root) = 0;
  // Sharded state, for a tensor of n = input.numel() elements per rank: every rank
  // passes `input` (n elements, the same n on every rank) and `output` of world_size * n
  // elements; afterwards output[r*n:(r+1)*n] (flat) holds rank r's input. Shapes beyond
  // the element counts do not matter. Same dtypes and devices as AllReduce; both
  // tensors contiguous, of one dtype, and not overlapping, except that `input` may be
  // this rank's slice of `output` (in place: input.data_ptr() == output.data_ptr() +
  // rank * n elements).
  virtual absl::Status AllGather(const at::Tensor& input, at::Tensor& output) = 0;
  // The converse: every rank passes `input` of world_size * n elements and `output` of
  // n; afterwards rank k's output is the sum over all ranks of their input[k*n:(k+1)*n]
  // (flat; average: then divided by world_size, floating dtypes only). Same rules as
  // AllGather; in place: `output` is this rank's slice of `input`.
  virtual absl::Status ReduceScatter(const at::Tensor& input, at::Tensor& output, bool average) = 0;
  // Returns once every rank has entered it.
  virtual absl::Status Barrier() = 0;
  // Hands rank r payloads_at_root[r], sent by rank 0 (which passes world_size payloads
  // and gets its own back; the other ranks pass an empty vector). Used to give each
  // rank its share of a batch.
  virtual absl::StatusOr<std::string> Scatter(const std::vector<std::string>& payloads_at_root) = 0;
};

// Joins the group described by `options` (rank 0 starts the rendezvous store), blocking
// until every rank has joined or options.timeout passes (DeadlineExceeded). Backend
// "nccl" fails with FailedPrecondition when there is no CUDA device or the build has
// no NCCL.
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const CommOptions& options);

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_COMMUNICATOR_H_
