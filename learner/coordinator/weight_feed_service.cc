#include "learner/coordinator/weight_feed_service.h"

#include <grpcpp/support/method_handler.h>

#include <chrono>
#include <utility>

#include "common/auth.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

WeightFeedService::WeightFeedService(const WeightPublisher* publisher, std::string token,
                                     size_t chunk_bytes, MetricsRegistry* m)
    : publisher_(publisher), token_(std::move(token)), chunk_bytes_(chunk_bytes) {
  // gRPC's public API offers raw (ByteBuffer) messages only to async and callback
  // services; a split-streaming handler is the sync one the generated code would use
  // for WithSplitStreamingMethod_, here with ByteBuffer as the response type.
  MarkMethodStreamed(
      0, new grpc::internal::SplitServerStreamingHandler<v1::WatchWeightsRequest, grpc::ByteBuffer>(
             [this](grpc::ServerContext* ctx,
                    grpc::ServerSplitStreamer<v1::WatchWeightsRequest, grpc::ByteBuffer>* s) {
               return Watch(ctx, s);
             }));
  unauthenticated_ = &m->Counter("pmdrl_learner_rejected_total", "rejected RPCs, by reason",
                                 {{"reason", "unauthenticated"}});
  constexpr char kBytes[] = "pmdrl_learner_weight_sync_bytes_total";
  constexpr char kBytesHelp[] = "weight bytes streamed to actors, whole versions or deltas";
  full_bytes_ = &m->Counter(kBytes, kBytesHelp, {{"encoding", "full"}});
  delta_bytes_ = &m->Counter(kBytes, kBytesHelp, {{"encoding", "delta"}});
  constexpr char kPushes[] = "pmdrl_learner_weight_pushes_total";
  constexpr char kPushesHelp[] = "weight versions streamed to actors, whole or as deltas";
  full_pushes_ = &m->Counter(kPushes, kPushesHelp, {{"encoding", "full"}});
  delta_pushes_ = &m->Counter(kPushes, kPushesHelp, {{"encoding", "delta"}});
  sync_seconds_ =
      &m->Histogram("pmdrl_learner_weight_sync_seconds", "time to stream one version to one actor",
                    {0.01, 0.05, 0.2, 0.5, 1, 2, 5, 10, 30});
}

grpc::Status WeightFeedService::Watch(
    grpc::ServerContext* ctx,
    grpc::ServerSplitStreamer<v1::WatchWeightsRequest, grpc::ByteBuffer>* stream) {
  if (grpc::Status s = CheckBearer(*ctx, token_); !s.ok()) {
    unauthenticated_->Increment();
    return s;
  }
  v1::WatchWeightsRequest req;
  if (!stream->Read(&req)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "WatchWeights: no request");
  }
  // have_version 0 without a base: the actor holds nothing and must receive version 0.
  int64_t have =
      req.have_version() == 0 && !req.have_base() ? -1 : static_cast<int64_t>(req.have_version());
  // The version the actor keeps as a delta base; -1: none.
  int64_t base = req.have_base() ? static_cast<int64_t>(req.have_version()) : -1;
  const auto write = [&](const grpc::ByteBuffer& chunk) { return stream->Write(chunk); };
  while (!ctx->IsCancelled()) {
    PublishedWeights p = publisher_->WaitNewer(have, std::chrono::milliseconds(500));
    if (publisher_->closed()) return grpc::Status::OK;
    if (p.full == nullptr) continue;
    const bool as_delta = p.delta != nullptr && base == static_cast<int64_t>(p.delta->base_version);
    const auto start = std::chrono::steady_clock::now();
    if (!WriteVersion(p.full, as_delta ? p.delta : nullptr, publisher_->delta(), chunk_bytes_,
                      write)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "actor left");
    }
    if (as_delta) {
      delta_bytes_->Increment(static_cast<double>(p.delta->Bytes()));
      delta_pushes_->Increment();
    } else {
      full_bytes_->Increment(static_cast<double>(p.full->Bytes()));
      full_pushes_->Increment();
    }
    sync_seconds_->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    have = static_cast<int64_t>(p.full->version);
    base = publisher_->delta() ? have : -1;
  }
  return grpc::Status::OK;
}

}  // namespace pmdrl
