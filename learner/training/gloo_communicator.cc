// Gloo backend of Communicator: CPU tensors over Gloo's TCP transport, rendezvous
// through the store of learner/training/rendezvous_store.h.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "learner/training/communicator.h"
#include "learner/training/communicator_internal.h"
#include "learner/training/rendezvous_store.h"

namespace pmdrl::comm_internal {
namespace {

using Clock = std::chrono::steady_clock;
using ReduceFn = void (*)(void*, const void*, const void*, size_t);

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Gloo's sum for the dtypes we all-reduce; nullptr for the rest.
ReduceFn SumFor(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return &gloo::sum<float>;
    case at::kDouble:
      return &gloo::sum<double>;
    case at::kInt:
      return &gloo::sum<int32_t>;
    case at::kLong:
      return &gloo::sum<int64_t>;
    default:
      return nullptr;
  }
}

template <typename T>
void DivideInPlace(void* data, int64_t n, int divisor) {
  T* p = static_cast<T*>(data);
  const T d = static_cast<T>(divisor);
  for (int64_t i = 0; i < n; ++i) p[i] /= d;
}

// Calls fn(T{}) with T the C++ type of a dtype that SumFor supports (checked before).
template <typename Fn>
void WithType(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kDouble:
      fn(double{});
      break;
    case at::kInt:
      fn(int32_t{});
      break;
    default:
      fn(int64_t{});
      break;  // kLong (checked)
  }
}

void AverageInPlace(at::ScalarType dtype, void* data, int64_t n, int world_size) {
  if (dtype == at::kFloat) DivideInPlace<float>(data, n, world_size);
  if (dtype == at::kDouble) DivideInPlace<double>(data, n, world_size);
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(CommOptions options, StoreHandle store,
                   std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::rendezvous::Context> context)
      : options_(std::move(options)),
        store_(std::move(store)),
        device_(std::move(device)),
        context_(std::move(context)) {}

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  absl::Status AllReduce(std::vector<at::Tensor>& tensors, bool average) override {
    if (absl::Status s = Check("AllReduce", tensors, /*reduce=*/true, average); !s.ok()) return s;
    return ForEachBucket("AllReduce", tensors, [&](at::ScalarType dtype, void* data, int64_t n) {
      if (options_.world_size > 1) {
        gloo::AllreduceOptions opts(context_);
        // In place: with no input set, Gloo reduces the output buffer.
        SetOutput(opts, dtype, data, n);
        opts.setReduceFunction(SumFor(dtype));
        opts.setTag(NextTag());
        opts.setTimeout(options_.timeout);
        gloo::allreduce(opts);
      }
      if (average) AverageInPlace(dtype, data, n, options_.world_size);
    });
  }

  absl::Status AllGather(const at::Tensor& input, at::Tensor& output) override {
    if (absl::Status s = CheckShardPair("AllGather", input, output, /*gather=*/true, false);
        !s.ok()) {
      return s;
    }
    const size_t bytes = static_cast<size_t>(input.numel()) * input.element_size();
    // Debian's Gloo (2022) divides by the size of an empty buffer; nothing to move anyway,
    // and every rank skips alike (same numel everywhere).
    if (bytes == 0) return absl::OkStatus();
    return Run("AllGather", [&] {
      auto* out = static_cast<uint8_t*>(output.data_ptr());
      auto* in = static_cast<uint8_t*>(input.data_ptr());
      if (options_.world_size == 1) {
        if (in != out) std::memcpy(out, in, bytes);
        return;
      }
      gloo::AllgatherOptions opts(context_);
      // Bytes are bytes: all-gather never looks at the values. Ring all-gather.
      opts.setOutput(out, bytes * static_cast<size_t>(options_.world_size));
      // In place (input is this rank's slice of output) Gloo wants no input.
      if (in != out + static_cast<size_t>(options_.rank) * bytes) opts.setInput(in, bytes);
      opts.setTag(NextTag());
      opts.setTimeout(options_.timeout);
      gloo::allgather(opts);
    });
  }

  // Debian's Gloo has no reduce-scatter in its current API (options, tags, per-call
  // timeout, unbound buffers): gloo/reduce_scatter.h's ReduceScatterHalvingDoubling is
  // of the old kind, meant to be built once and run many times. Built per call, it takes
  // fresh slots from an int counter every time (4 * N * (N - 1) of them), takes an int
  // count, and while a peer that is ahead has sent for slots this rank has not yet
  // registered, this rank's device thread busy-waits. So this all-reduces the whole
  // input (gloo::allreduce, ring) into a staging buffer and keeps this rank's slice:
  // correct, but it moves about twice the bytes of a true reduce-scatter and stages
  // world_size * n elements.
  absl::Status ReduceScatter(const at::Tensor& input, at::Tensor& output, bool average) override {
    if (absl::Status s = CheckShardPair("ReduceScatter", input, output, /*gather=*/false, average);
        !s.ok()) {
      return s;
    }
    const at::ScalarType dtype = output.scalar_type();
    const int64_t n = output.numel();
    const size_t bytes = static_cast<size_t>(n) * c10::elementSize(dtype);
    if (bytes == 0) return absl::OkStatus();  // every rank skips alike
    return Run("ReduceScatter", [&] {
      void* out = output.data_ptr();
      void* in = input.data_ptr();  // only read
      if (options_.world_size == 1) {
        std::memmove(out, in, bytes);  // may be in place
      } else {
        const size_t total = static_cast<size_t>(n) * static_cast<size_t>(options_.world_size);
        staging_.resize(total * c10::elementSize(dtype));
        gloo::AllreduceOptions opts(context_);
        WithType(dtype, [&](auto zero) {
          using T = decltype(zero);
          opts.setInput(static_cast<T*>(in), total);  // Gloo only reads it
          opts.setOutput(reinterpret_cast<T*>(staging_.data()), total);
        });
        opts.setReduceFunction(SumFor(dtype));
        opts.setTag(NextTag());
        opts.setTimeout(options_.timeout);
        gloo::allreduce(opts);
        // The input is read in full by now, so an in-place output may be overwritten.
        std::memcpy(out, staging_.data() + static_cast<size_t>(options_.rank) * bytes, bytes);
      }
      if (average) AverageInPlace(dtype, out, n, options_.world_size);
    });
  }

  absl::Status Broadcast(std::vector<at::Tensor>& tensors, int root) override {
    if (root < 0 || root >= options_.world_size) {
      return Annotate(absl::InvalidArgumentError(absl::StrCat("root ", root, " is not a rank")),
                      "Gloo Broadcast", options_);
    }
    if (absl::Status s = Check("Broadcast", tensors, /*reduce=*/false, false); !s.ok()) return s;
    return ForEachBucket("Broadcast", tensors, [&](at::ScalarType dtype, void* data, int64_t n) {
      if (options_.world_size == 1) return;
      gloo::BroadcastOptions opts(context_);
      // Bytes are bytes: broadcast never looks at the values.
      opts.setOutput(static_cast<uint8_t*>(data), static_cast<size_t>(n) * c10::elementSize(dtype));
      opts.setRoot(root);
      opts.setTag(NextTag());
      opts.setTimeout(options_.timeout);
      gloo::broadcast(opts);
    });
  }

  absl::Status Barrier() override {
    if (!broken_.ok()) return Broken("Barrier");
    return Run("Barrier", [&] {
      if (options_.world_size == 1) return;
      gloo::BarrierOptions opts(context_);
      opts.setTag(NextTag());
      opts.setTimeout(options_.timeout);
      gloo::barrier(opts);
    });
  }

  absl::StatusOr<std::string> Scatter(const std::vector<std::string>& payloads_at_root) override {
    if (!broken_.ok()) return Broken("Scatter");
    return ScatterThroughStore(*store_.client, options_, scatter_seq_++, payloads_at_root,
                               "Gloo Scatter", &broken_);
  }

 private:
  // AllreduceOptions has typed setters only.
  static void SetOutput(gloo::AllreduceOptions& opts, at::ScalarType dtype, void* data, int64_t n) {
    WithType(dtype, [&](auto zero) {
      opts.setOutput(static_cast<decltype(zero)*>(data), static_cast<size_t>(n));
    });
  }

  uint32_t NextTag() { return next_tag_++; }

  absl::Status Broken(absl::string_view op) const {
    return BrokenGroupError(broken_, absl::StrCat("Gloo ", op), options_);
  }

  // What is wrong with one tensor of a collective ("" when nothing); reduce: its dtype
  // must be one SumFor supports.
  static std::string Problem(const at::Tensor& t, bool reduce, bool average) {
    if (!t.defined()) return "is undefined";
    if (!t.device().is_cpu()) {
      return absl::StrCat("is on ", t.device().str(), ", the gloo backend wants CPU tensors");
    }
    if (!t.is_contiguous()) return "is not contiguous";
    if (reduce && SumFor(t.scalar_type()) == nullptr) {
      return absl::StrCat("has dtype ", std::string(c10::toString(t.scalar_type())),
                          "; supported are float32, float64, int32, int64");
    }
    if (average && !c10::isFloatingType(t.scalar_type())) {
      return "is not floating point, so it cannot be averaged";
    }
    return "";
  }

  absl::Status Check(absl::string_view op, const std::vector<at::Tensor>& tensors, bool reduce,
                     bool average) {
    if (!broken_.ok()) return Broken(op);
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (std::string problem = Problem(tensors[i], reduce, average); !problem.empty()) {
        return Annotate(absl::InvalidArgumentError(absl::StrCat("tensor ", i, " ", problem)),
                        absl::StrCat("Gloo ", op), options_);
      }
    }
    return absl::OkStatus();
  }

  // Checks the tensors of AllGather (gather: input is the shard) and ReduceScatter
  // (output is the shard) before anything is sent; both take AllReduce's dtypes.
  absl::Status CheckShardPair(absl::string_view op, const at::Tensor& input,
                              const at::Tensor& output, bool gather, bool average) {
    if (!broken_.ok()) return Broken(op);
    std::string problem;
    if (std::string p = Problem(input, /*reduce=*/true, average); !p.empty()) {
      problem = absl::StrCat("input ", p);
    } else if (p = Problem(output, /*reduce=*/true, average); !p.empty()) {
      problem = absl::StrCat("output ", p);
    } else if (gather) {
      problem = ShardPairProblem(output, "output", input, "input", options_);
    } else {
      problem = ShardPairProblem(input, "input", output, "output", options_);
    }
    if (problem.empty()) return absl::OkStatus();
    return Annotate(absl::InvalidArgumentError(problem), absl::StrCat("Gloo ", op), options_);
  }

  // Runs fn(dtype, data, numel) once per bucket: a lone tensor in place, several packed
  // into a staging buffer and copied back afterwards.
  template <typename Fn>
  absl::Status ForEachBucket(absl::string_view op, std::vector<at::Tensor>& tensors, Fn&& fn) {
    return Run(op, [&] {
      for (const Bucket& b : PlanBuckets(tensors, options_.bucket_bytes)) {
        const size_t elem = c10::elementSize(b.dtype);
        if (b.indices.size() == 1) {
          fn(b.dtype, tensors[b.indices[0]].data_ptr(), b.numel);
          continue;
        }
        staging_.resize(static_cast<size_t>(b.numel) * elem);
        char* p = staging_.data();
        for (size_t i : b.indices) {
          const size_t bytes = static_cast<size_t>(tensors[i].numel()) * elem;
          std::memcpy(p, tensors[i].data_ptr(), bytes);
          p += bytes;
        }
        fn(b.dtype, staging_.data(), b.numel);
        p = staging_.data();
        for (size_t i : b.indices) {
          const size_t bytes = static_cast<size_t>(tensors[i].numel()) * elem;
          std::memcpy(tensors[i].data_ptr(), p, bytes);
          p += bytes;
        }
      }
    });
  }

  // Runs a Gloo call, turning its exceptions into a Status; any failure breaks the group
  // (Gloo's pairs are in an unknown state afterwards).
  template <typename Fn>
  absl::Status Run(absl::string_view op, Fn&& fn) {
    const auto start = Clock::now();
    absl::Status s;
    try {
      fn();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      const bool timed_out = std::strstr(e.what(), "Timed out") != nullptr ||
                             std::strstr(e.what(), "timeout") != nullptr ||
                             Clock::now() - start >= options_.timeout;
      if (timed_out) {
        s = absl::DeadlineExceededError(
            absl::StrCat("timed out after ", options_.timeout.count(),
                         " ms (a peer died or did not make the same call): ", e.what()));
      } else {
        s = absl::UnavailableError(absl::StrCat("failed: ", e.what()));
      }
    }
    s = Annotate(s, absl::StrCat("Gloo ", op), options_);
    broken_ = s;
    return s;
  }

  CommOptions options_;
  StoreHandle store_;
  // Declared before the context, so the context (and its pairs) go first.
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  uint32_t next_tag_ = 0;
  int64_t scatter_seq_ = 0;
  std::vector<char> staging_;
  absl::Status broken_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const CommOptions& options) {
  absl::StatusOr<StoreHandle> store = JoinStore(options);
  if (!store.ok()) return Annotate(store.status(), "Gloo rendezvous", options);

  std::string store_host;
  int store_port = 0;
  if (absl::Status s = ParseHostPort(options.store_address, &store_host, &store_port); !s.ok()) {
    return s;
  }
  gloo::transport::tcp::attr attr;
  if (!options.local_address.empty()) {
    attr.hostname = options.local_address;
  } else if (IsLoopbackHost(store_host)) {
    attr.hostname = "127.0.0.1";
  }  // else: Gloo resolves this host's name.

  const auto start = Clock::now();
  try {
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world_size);
    context->setTimeout(options.timeout);
    GlooStoreAdapter adapter(store->client.get(), "pmdrl/gloo/", options.timeout);
    context->connectFullMesh(adapter, device);
    return std::unique_ptr<Communicator>(
        new GlooCommunicator(options, *std::move(store), std::move(device), std::move(context)));
  } catch (const std::exception& e) {
    const bool timed_out = std::strstr(e.what(), "Timed out") != nullptr ||
                           std::strstr(e.what(), "timeout") != nullptr ||
                           Clock::now() - start >= options.timeout;
    absl::Status s =
        timed_out
            ? absl::DeadlineExceededError(absl::StrCat("not every rank joined within ",
                                                       options.timeout.count(), " ms: ", e.what()))
            : absl::UnavailableError(absl::StrCat("connecting to the peers failed: ", e.what()));
    return Annotate(s, "Gloo rendezvous", options);
  }
}

}  // namespace pmdrl::comm_internal
