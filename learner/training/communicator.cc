#include "learner/training/communicator.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "learner/training/communicator_internal.h"

namespace pmdrl {
namespace comm_internal {

std::vector<Bucket> PlanBuckets(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  std::vector<Bucket> done;
  // One open bucket per dtype, in order of first appearance.
  std::vector<Bucket> open;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t n = t.numel();
    if (n == 0) continue;
    const int64_t elem = static_cast<int64_t>(t.element_size());
    auto it = std::find_if(open.begin(), open.end(),
                           [&](const Bucket& b) { return b.dtype == t.scalar_type(); });
    if (it == open.end()) {
      open.push_back(Bucket{t.scalar_type(), {}, 0});
      it = std::prev(open.end());
    }
    if (!it->indices.empty() && (it->numel + n) * elem > bucket_bytes) {
      done.push_back(std::move(*it));
      *it = Bucket{t.scalar_type(), {}, 0};
    }
    it->indices.push_back(i);
    it->numel += n;
    if (it->numel * elem >= bucket_bytes) {  // full (or a lone oversized tensor)
      done.push_back(std::move(*it));
      *it = Bucket{t.scalar_type(), {}, 0};
    }
  }
  for (Bucket& b : open) {
    if (!b.indices.empty()) done.push_back(std::move(b));
  }
  return done;
}

absl::StatusOr<StoreHandle> JoinStore(const CommOptions& options) {
  StoreHandle handle;
  if (options.rank == 0) {
    absl::StatusOr<std::unique_ptr<StoreServer>> server =
        StoreServer::Start(options.store_address, options.token);
    if (!server.ok()) return server.status();
    handle.server = *std::move(server);
  }
  absl::StatusOr<std::unique_ptr<StoreClient>> client =
      StoreClient::Connect(options.store_address, options.token, options.timeout);
  if (!client.ok()) return client.status();
  handle.client = *std::move(client);
  return handle;
}

namespace {

absl::StatusOr<std::string> ScatterPayloads(StoreClient& store, const CommOptions& options,
                                            int64_t seq,
                                            const std::vector<std::string>& payloads_at_root) {
  auto key = [&](int r) { return absl::StrCat("pmdrl/scatter/", seq, "/", r); };
  if (options.rank == 0) {
    if (payloads_at_root.size() != static_cast<size_t>(options.world_size)) {
      return absl::InvalidArgumentError(absl::StrCat("rank 0 must pass ", options.world_size,
                                                     " payloads, got ", payloads_at_root.size()));
    }
    for (int r = 1; r < options.world_size; ++r) {
      if (absl::Status s = store.Set(key(r), payloads_at_root[r]); !s.ok()) return s;
    }
    return payloads_at_root[0];
  }
  if (!payloads_at_root.empty()) {
    return absl::InvalidArgumentError("only rank 0 passes payloads");
  }
  absl::StatusOr<std::string> mine = store.Get(key(options.rank), options.timeout);
  if (!mine.ok()) return mine.status();
  // Frees the server's copy; a failure here costs memory, not correctness.
  (void)store.Delete(key(options.rank));
  return mine;
}

}  // namespace

absl::StatusOr<std::string> ScatterThroughStore(StoreClient& store, const CommOptions& options,
                                                int64_t seq,
                                                const std::vector<std::string>& payloads_at_root,
                                                absl::string_view op, absl::Status* broken) {
  absl::StatusOr<std::string> mine = ScatterPayloads(store, options, seq, payloads_at_root);
  if (mine.ok()) return mine;
  absl::Status s = Annotate(mine.status(), op, options);
  if (!absl::IsInvalidArgument(s)) *broken = s;
  return s;
}

absl::Status BrokenGroupError(const absl::Status& broken, absl::string_view op,
                              const CommOptions& options) {
  return Annotate(absl::FailedPreconditionError(absl::StrCat(
                      "the group is broken by an earlier failure: ", broken.message())),
                  op, options);
}

std::string ShardPairProblem(const at::Tensor& full, absl::string_view full_name,
                             const at::Tensor& shard, absl::string_view shard_name,
                             const CommOptions& options) {
  if (full.scalar_type() != shard.scalar_type()) {
    return absl::StrCat(shard_name, " has dtype ", std::string(c10::toString(shard.scalar_type())),
                        " but ", full_name, " has ",
                        std::string(c10::toString(full.scalar_type())));
  }
  const int64_t n = shard.numel();
  if (full.numel() != options.world_size * n) {
    return absl::StrCat(full_name, " has ", full.numel(), " elements, want world_size * ",
                        shard_name, ".numel() = ", options.world_size, " * ", n, " = ",
                        options.world_size * n);
  }
  if (n == 0) return "";
  // Addresses as integers: the tensors may belong to unrelated allocations.
  const uintptr_t f = reinterpret_cast<uintptr_t>(full.data_ptr());
  const uintptr_t s = reinterpret_cast<uintptr_t>(shard.data_ptr());
  const uintptr_t shard_bytes = static_cast<uintptr_t>(n) * full.element_size();
  const uintptr_t full_bytes = shard_bytes * static_cast<uintptr_t>(options.world_size);
  const bool overlap = s < f + full_bytes && f < s + shard_bytes;
  if (overlap && s != f + static_cast<uintptr_t>(options.rank) * shard_bytes) {
    return absl::StrCat(shard_name, " and ", full_name, " overlap, and ", shard_name,
                        " is not this rank's slice of ", full_name, " (the one in-place layout)");
  }
  return "";
}

absl::Status Annotate(const absl::Status& s, absl::string_view op, const CommOptions& options) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(op, " on rank ", options.rank, " of ",
                                             options.world_size, ": ", s.message()));
}

#ifndef PMDRL_HAVE_NCCL
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const CommOptions&) {
  return absl::FailedPreconditionError(
      "backend nccl: no CUDA device support in this build (CUDA toolkit or NCCL was not found "
      "at configure time); use backend gloo");
}
#endif

}  // namespace comm_internal

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const CommOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("CreateCommunicator: rank ", options.rank,
                                                   " is not in a world of size ",
                                                   options.world_size));
  }
  if (options.bucket_bytes <= 0 || options.timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        "CreateCommunicator: bucket_bytes and timeout must be positive");
  }
  if (options.backend == "gloo") return comm_internal::CreateGlooCommunicator(options);
  if (options.backend == "nccl") return comm_internal::CreateNcclCommunicator(options);
  return absl::InvalidArgumentError(absl::StrCat("CreateCommunicator: unknown backend '",
                                                 options.backend, "' (want gloo or nccl)"));
}

}  // namespace pmdrl
