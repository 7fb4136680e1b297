// The WeightFeed gRPC service of learner rank 0: streams every new policy version to
// each watching actor, whole or as a delta against the version the actor kept
// (common/weight_stream.h has the format). Chunks point into the publisher's one copy of
// the version, so memory does not grow with the number of actors.
#ifndef PMDRL_LEARNER_WEIGHT_FEED_SERVICE_H_
#define PMDRL_LEARNER_WEIGHT_FEED_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>

#include <cstddef>
#include <string>

#include "common/metrics.h"
#include "learner/coordinator/weight_publisher.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {

// Largest weight chunk on the wire by default (learner.weight_chunk_bytes).
inline constexpr size_t kDefaultWeightChunkBytes = 1 << 20;

class WeightFeedService final : public v1::WeightFeed::Service {
 public:
  // `publisher` is not owned and must outlive the service; every stream checks the
  // bearer `token`.
  WeightFeedService(const WeightPublisher* publisher, std::string token, size_t chunk_bytes,
                    MetricsRegistry* metrics);

 private:
  // The generated handler would copy every chunk into a protobuf message; this one
  // writes grpc::ByteBuffers whose data slices point into the published version.
  grpc::Status Watch(grpc::ServerContext* ctx,
                     grpc::ServerSplitStreamer<v1::WatchWeightsRequest, grpc::ByteBuffer>* stream);

  const WeightPublisher* publisher_;
  const std::string token_;
  const size_t chunk_bytes_;
  prometheus::Counter* unauthenticated_;
  prometheus::Counter* full_bytes_;
  prometheus::Counter* delta_bytes_;
  prometheus::Counter* full_pushes_;
  prometheus::Counter* delta_pushes_;
  prometheus::Histogram* sync_seconds_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_WEIGHT_FEED_SERVICE_H_
