// The gRPC face of learner rank 0: the Coordinator and Learner services (the weights go
// by learner/coordinator/weight_feed_service.h). They check the bearer token on every
// state-changing call, turn malformed requests into INVALID_ARGUMENT (counted), and delegate to the
// Coordinator, which they do not own.
#ifndef PMDRL_LEARNER_LEARNER_SERVICE_H_
#define PMDRL_LEARNER_LEARNER_SERVICE_H_

#include <functional>
#include <string>

#include "common/metrics.h"
#include "learner/coordinator/coordinator.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {

class CoordinatorService final : public v1::Coordinator::Service {
 public:
  // `status` fills the training side of GetStatus (update, rewards, accuracies).
  CoordinatorService(Coordinator* coordinator, std::string token, MetricsRegistry* metrics,
                     std::function<void(v1::StatusResponse*)> status);

  grpc::Status RegisterActor(grpc::ServerContext* ctx, const v1::RegisterActorRequest* req,
                             v1::RegisterActorResponse* resp) override;
  grpc::Status LeasePrompts(grpc::ServerContext* ctx, const v1::LeasePromptsRequest* req,
                            v1::LeasePromptsResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest* req,
                         v1::StatusResponse* resp) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& ctx);

  Coordinator* coordinator_;
  const std::string token_;
  std::function<void(v1::StatusResponse*)> status_;
  prometheus::Counter* unauthenticated_;
  prometheus::Counter* invalid_;
};

class LearnerService final : public v1::Learner::Service {
 public:
  LearnerService(Coordinator* coordinator, std::string token, MetricsRegistry* metrics);

  // One ack per group, in order. A malformed group ends the stream with
  // INVALID_ARGUMENT after its REJECTED ack.
  grpc::Status SubmitGroups(grpc::ServerContext* ctx,
                            grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override;

 private:
  Coordinator* coordinator_;
  const std::string token_;
  prometheus::Counter* unauthenticated_;
  prometheus::Counter* invalid_;
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_LEARNER_SERVICE_H_
