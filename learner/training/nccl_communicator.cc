// NCCL backend of Communicator: CUDA tensors, ncclUniqueId swapped through the
// rendezvous store. Built only when CMake finds the CUDA toolkit and NCCL
// (PMDRL_HAVE_NCCL); communicator.cc stands in otherwise.
//
// It uses the CUDA runtime directly, not c10::cuda: the LibTorch this compiles against
// may be a CPU build, so tensors are reached through data_ptr() alone. Work runs on a
// stream of our own created as a blocking stream, so it starts after the work already
// queued on the legacy default stream (where LibTorch computes unless told otherwise);
// every call waits for its work before returning, so no buffer outlives its use.
#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "learner/training/communicator.h"
#include "learner/training/communicator_internal.h"
#include "learner/training/rendezvous_store.h"

namespace pmdrl::comm_internal {
namespace {

using Clock = std::chrono::steady_clock;

bool ToNcclType(at::ScalarType t, ncclDataType_t* out) {
  switch (t) {
    case at::kFloat:
      *out = ncclFloat32;
      return true;
    case at::kDouble:
      *out = ncclFloat64;
      return true;
    case at::kHalf:
      *out = ncclFloat16;
      return true;
    case at::kBFloat16:
      *out = ncclBfloat16;
      return true;
    case at::kInt:
      *out = ncclInt32;
      return true;
    case at::kLong:
      *out = ncclInt64;
      return true;
    default:
      return false;
  }
}

absl::Status CudaError(absl::string_view what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(absl::string_view what, ncclResult_t r) {
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

// Waits until the communicator is no longer busy (non-blocking mode returns
// ncclInProgress from init and enqueue calls), failing at `deadline`.
absl::Status AwaitComm(ncclComm_t comm, Clock::time_point deadline, absl::string_view what) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) return NcclError(what, r);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(what, state);
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(CommOptions options, StoreHandle store, int device, ncclComm_t comm,
                   cudaStream_t stream, cudaEvent_t inputs_ready)
      : options_(std::move(options)),
        store_(std::move(store)),
        device_(device),
        comm_(comm),
        stream_(stream),
        inputs_ready_(inputs_ready) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    // A communicator that failed may have kernels stuck waiting on a dead peer; only
    // abort gets rid of those.
    if (broken_.ok()) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    if (staging_ != nullptr) cudaFree(staging_);
    cudaEventDestroy(inputs_ready_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  absl::Status AllReduce(std::vector<at::Tensor>& tensors, bool average) override {
    if (absl::Status s = Check("AllReduce", tensors, average); !s.ok()) return s;
    return ForEachBucket("AllReduce", tensors, [&](at::ScalarType dtype, void* data, int64_t n) {
      ncclDataType_t type = ncclFloat32;
      ToNcclType(dtype, &type);
      return ncclAllReduce(data, data, static_cast<size_t>(n), type, average ? ncclAvg : ncclSum,
                           comm_, stream_);
    });
  }

  absl::Status AllGather(const at::Tensor& input, at::Tensor& output) override {
    if (absl::Status s = CheckShardPair("AllGather", input, output, /*gather=*/true, false);
        !s.ok()) {
      return s;
    }
    ncclDataType_t type = ncclFloat32;
    ToNcclType(input.scalar_type(), &type);
    const size_t sendcount = static_cast<size_t>(input.numel());
    return Run("AllGather", [&]() -> absl::Status {
      if (sendcount == 0) return absl::OkStatus();  // every rank skips alike
      // recvbuff holds nranks * sendcount; in place when sendbuff == recvbuff + rank *
      // sendcount (the one overlap CheckShardPair lets through).
      return Enqueue(
          ncclAllGather(input.data_ptr(), output.data_ptr(), sendcount, type, comm_, stream_));
    });
  }

  absl::Status ReduceScatter(const at::Tensor& input, at::Tensor& output, bool average) override {
    if (absl::Status s = CheckShardPair("ReduceScatter", input, output, /*gather=*/false, average);
        !s.ok()) {
      return s;
    }
    ncclDataType_t type = ncclFloat32;
    ToNcclType(output.scalar_type(), &type);
    const size_t recvcount = static_cast<size_t>(output.numel());
    return Run("ReduceScatter", [&]() -> absl::Status {
      if (recvcount == 0) return absl::OkStatus();  // every rank skips alike
      // sendbuff holds nranks * recvcount; in place when recvbuff == sendbuff + rank *
      // recvcount. ncclAvg (floating dtypes only, checked) divides by nranks.
      return Enqueue(ncclReduceScatter(input.data_ptr(), output.data_ptr(), recvcount, type,
                                       average ? ncclAvg : ncclSum, comm_, stream_));
    });
  }

  absl::Status Broadcast(std::vector<at::Tensor>& tensors, int root) override {
    if (root < 0 || root >= options_.world_size) {
      return Annotate(absl::InvalidArgumentError(absl::StrCat("root ", root, " is not a rank")),
                      "NCCL Broadcast", options_);
    }
    if (absl::Status s = Check("Broadcast", tensors, false); !s.ok()) return s;
    return ForEachBucket("Broadcast", tensors, [&](at::ScalarType dtype, void* data, int64_t n) {
      return ncclBroadcast(data, data, static_cast<size_t>(n) * c10::elementSize(dtype), ncclUint8,
                           root, comm_, stream_);
    });
  }

  absl::Status Barrier() override {
    if (!broken_.ok()) return Broken("Barrier");
    return Run("Barrier", [&]() -> absl::Status {
      if (absl::Status s = EnsureStaging(sizeof(float)); !s.ok()) return s;
      return Enqueue(ncclAllReduce(staging_, staging_, 1, ncclFloat32, ncclSum, comm_, stream_));
    });
  }

  absl::StatusOr<std::string> Scatter(const std::vector<std::string>& payloads_at_root) override {
    if (!broken_.ok()) return Broken("Scatter");
    return ScatterThroughStore(*store_.client, options_, scatter_seq_++, payloads_at_root,
                               "NCCL Scatter", &broken_);
  }

 private:
  absl::Status Broken(absl::string_view op) const {
    return BrokenGroupError(broken_, absl::StrCat("NCCL ", op), options_);
  }

  // What is wrong with one tensor of a collective ("" when nothing).
  std::string Problem(const at::Tensor& t, bool average) const {
    ncclDataType_t type = ncclFloat32;
    if (!t.defined()) return "is undefined";
    if (!t.is_cuda()) {
      return absl::StrCat("is on ", t.device().str(), ", the nccl backend wants CUDA tensors");
    }
    if (t.device().has_index() && t.device().index() != device_) {
      return absl::StrCat("is on ", t.device().str(), " but this rank uses cuda:", device_);
    }
    if (!t.is_contiguous()) return "is not contiguous";
    if (!ToNcclType(t.scalar_type(), &type)) {
      return absl::StrCat("has unsupported dtype ", std::string(c10::toString(t.scalar_type())));
    }
    if (average && !c10::isFloatingType(t.scalar_type())) {
      return "is not floating point, so it cannot be averaged";
    }
    return "";
  }

  absl::Status Check(absl::string_view op, const std::vector<at::Tensor>& tensors, bool average) {
    if (!broken_.ok()) return Broken(op);
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (std::string problem = Problem(tensors[i], average); !problem.empty()) {
        return Annotate(absl::InvalidArgumentError(absl::StrCat("tensor ", i, " ", problem)),
                        absl::StrCat("NCCL ", op), options_);
      }
    }
    return absl::OkStatus();
  }

  // Checks the tensors of AllGather (gather: input is the shard) and ReduceScatter
  // (output is the shard) before anything is enqueued.
  absl::Status CheckShardPair(absl::string_view op, const at::Tensor& input,
                              const at::Tensor& output, bool gather, bool average) {
    if (!broken_.ok()) return Broken(op);
    std::string problem;
    if (std::string p = Problem(input, average); !p.empty()) {
      problem = absl::StrCat("input ", p);
    } else if (p = Problem(output, average); !p.empty()) {
      problem = absl::StrCat("output ", p);
    } else if (gather) {
      problem = ShardPairProblem(output, "output", input, "input", options_);
    } else {
      problem = ShardPairProblem(input, "input", output, "output", options_);
    }
    if (problem.empty()) return absl::OkStatus();
    return Annotate(absl::InvalidArgumentError(problem), absl::StrCat("NCCL ", op), options_);
  }

  absl::Status EnsureStaging(size_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    if (staging_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaFree(staging_);
      staging_ = nullptr;
      staging_bytes_ = 0;
    }
    if (cudaError_t e = cudaMalloc(&staging_, bytes); e != cudaSuccess) {
      return CudaError(absl::StrCat("cudaMalloc of a ", bytes, "-byte bucket"), e);
    }
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  // Waits out a non-blocking enqueue.
  absl::Status Enqueue(ncclResult_t r) {
    if (r == ncclInProgress) return AwaitComm(comm_, deadline_, "enqueue");
    if (r != ncclSuccess) return NcclError("enqueue", r);
    return absl::OkStatus();
  }

  // Enqueues fn(dtype, data, numel) per bucket (several tensors go through the staging
  // buffer, stream-ordered copies in and out).
  template <typename Fn>
  absl::Status ForEachBucket(absl::string_view op, std::vector<at::Tensor>& tensors, Fn&& fn) {
    return Run(op, [&]() -> absl::Status {
      for (const Bucket& b : PlanBuckets(tensors, options_.bucket_bytes)) {
        const size_t elem = c10::elementSize(b.dtype);
        if (b.indices.size() == 1) {
          if (absl::Status s = Enqueue(fn(b.dtype, tensors[b.indices[0]].data_ptr(), b.numel));
              !s.ok()) {
            return s;
          }
          continue;
        }
        if (absl::Status s = EnsureStaging(static_cast<size_t>(b.numel) * elem); !s.ok()) return s;
        char* base = static_cast<char*>(staging_);
        size_t off = 0;
        for (size_t i : b.indices) {
          const size_t bytes = static_cast<size_t>(tensors[i].numel()) * elem;
          cudaError_t e = cudaMemcpyAsync(base + off, tensors[i].data_ptr(), bytes,
                                          cudaMemcpyDeviceToDevice, stream_);
          if (e != cudaSuccess) return CudaError("pack bucket", e);
          off += bytes;
        }
        if (absl::Status s = Enqueue(fn(b.dtype, staging_, b.numel)); !s.ok()) return s;
        off = 0;
        for (size_t i : b.indices) {
          const size_t bytes = static_cast<size_t>(tensors[i].numel()) * elem;
          cudaError_t e = cudaMemcpyAsync(tensors[i].data_ptr(), base + off, bytes,
                                          cudaMemcpyDeviceToDevice, stream_);
          if (e != cudaSuccess) return CudaError("unpack bucket", e);
          off += bytes;
        }
      }
      return absl::OkStatus();
    });
  }

  // Runs `enqueue` and waits for the stream, polling NCCL for errors; past the deadline
  // the communicator is aborted (so stuck kernels end) and the group is broken.
  template <typename Fn>
  absl::Status Run(absl::string_view op, Fn&& enqueue) {
    deadline_ = Clock::now() + options_.timeout;
    cudaSetDevice(device_);
    // stream_ does not wait for the default stream by itself (so collectives can run
    // beside the backward pass): order it after the work queued there so far, which
    // includes whatever produced the tensors, whichever thread queued it.
    absl::Status s;
    if (cudaError_t e = cudaEventRecord(inputs_ready_, cudaStreamLegacy); e != cudaSuccess) {
      s = CudaError("cudaEventRecord", e);
    } else if (e = cudaStreamWaitEvent(stream_, inputs_ready_, 0); e != cudaSuccess) {
      s = CudaError("cudaStreamWaitEvent", e);
    }
    if (s.ok()) s = enqueue();
    while (s.ok()) {
      cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        s = CudaError("stream", q);
        break;
      }
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        s = NcclError("async", state);
        break;
      }
      if (Clock::now() >= deadline_) {
        s = absl::DeadlineExceededError("timed out");
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (absl::IsDeadlineExceeded(s)) {
      s = absl::DeadlineExceededError(
          absl::StrCat("timed out after ", options_.timeout.count(),
                       " ms (a peer died or did not make the same call)"));
    } else if (absl::IsInternal(s)) {
      s = absl::UnavailableError(s.message());
    }
    s = Annotate(s, absl::StrCat("NCCL ", op), options_);
    broken_ = s;
    return s;
  }

  CommOptions options_;
  StoreHandle store_;
  int device_;
  ncclComm_t comm_;
  cudaStream_t stream_;  // non-blocking: ordered by inputs_ready_, see Run
  cudaEvent_t inputs_ready_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  Clock::time_point deadline_;
  int64_t scatter_seq_ = 0;
  absl::Status broken_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const CommOptions& options) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend nccl on rank ", options.rank, ": no CUDA device (cudaGetDeviceCount: ",
        e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), "); use backend gloo"));
  }
  // One process per GPU with consecutive ranks per host: the local GPU is rank % count,
  // unless the learner's config names one (learner.device cuda:N).
  const int device = options.cuda_device >= 0 ? options.cuda_device : options.rank % count;
  if (device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("backend nccl on rank ", options.rank,
                                                   ": cuda:", device, " but only ", count,
                                                   " CUDA devices are visible"));
  }
  if (e = cudaSetDevice(device); e != cudaSuccess) {
    return Annotate(CudaError(absl::StrCat("cudaSetDevice(", device, ")"), e), "NCCL init",
                    options);
  }

  absl::StatusOr<StoreHandle> store = JoinStore(options);
  if (!store.ok()) return Annotate(store.status(), "NCCL rendezvous", options);

  ncclUniqueId id;
  const std::string key = "pmdrl/nccl/unique_id";
  if (options.rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return Annotate(NcclError("ncclGetUniqueId", r), "NCCL rendezvous", options);
    }
    absl::Status s =
        store->client->Set(key, absl::string_view(reinterpret_cast<const char*>(&id), sizeof(id)));
    if (!s.ok()) return Annotate(s, "NCCL rendezvous", options);
  } else {
    absl::StatusOr<std::string> v = store->client->Get(key, options.timeout);
    if (!v.ok()) return Annotate(v.status(), "NCCL rendezvous", options);
    if (v->size() != sizeof(id)) {
      return Annotate(absl::InternalError("malformed ncclUniqueId in the store"), "NCCL rendezvous",
                      options);
    }
    std::memcpy(&id, v->data(), sizeof(id));
  }

  // Non-blocking init, so a rank that never shows up ends in a timeout, not a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, options.world_size, id, options.rank, &config);
  absl::Status s;
  if (r == ncclInProgress || (r == ncclSuccess && comm != nullptr)) {
    s = AwaitComm(comm, Clock::now() + options.timeout, "ncclCommInitRankConfig");
  } else {
    s = NcclError("ncclCommInitRankConfig", r);
  }
  if (!s.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    if (absl::IsDeadlineExceeded(s)) {
      s = absl::DeadlineExceededError(
          absl::StrCat("not every rank joined within ", options.timeout.count(), " ms"));
    }
    return Annotate(s, "NCCL rendezvous", options);
  }

  cudaStream_t stream = nullptr;
  if (e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    ncclCommDestroy(comm);
    return Annotate(CudaError("cudaStreamCreateWithFlags", e), "NCCL init", options);
  }
  cudaEvent_t inputs_ready = nullptr;
  if (e = cudaEventCreateWithFlags(&inputs_ready, cudaEventDisableTiming); e != cudaSuccess) {
    cudaStreamDestroy(stream);
    ncclCommDestroy(comm);
    return Annotate(CudaError("cudaEventCreateWithFlags", e), "NCCL init", options);
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(options, *std::move(store), device, comm, stream, inputs_ready));
}

}  // namespace pmdrl::comm_internal
