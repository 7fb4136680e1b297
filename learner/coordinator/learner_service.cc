#include "learner/coordinator/learner_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/auth.h"
#include "common/log.h"
#include "common/rpc.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

constexpr char kRejected[] = "pmdrl_learner_rejected_total";
constexpr char kRejectedHelp[] = "rejected RPCs, by reason";

}  // namespace

CoordinatorService::CoordinatorService(Coordinator* coordinator, std::string token,
                                       MetricsRegistry* m,
                                       std::function<void(v1::StatusResponse*)> status)
    : coordinator_(coordinator), token_(std::move(token)), status_(std::move(status)) {
  unauthenticated_ = &m->Counter(kRejected, kRejectedHelp, {{"reason", "unauthenticated"}});
  invalid_ = &m->Counter(kRejected, kRejectedHelp, {{"reason", "invalid_argument"}});
}

grpc::Status CoordinatorService::Authorize(const grpc::ServerContext& ctx) {
  grpc::Status s = CheckBearer(ctx, token_);
  if (!s.ok()) unauthenticated_->Increment();
  return s;
}

grpc::Status CoordinatorService::RegisterActor(grpc::ServerContext* ctx,
                                               const v1::RegisterActorRequest* req,
                                               v1::RegisterActorResponse* resp) {
  if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
  if (req->name().size() > 256) {
    invalid_->Increment();
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "RegisterActor: name longer than 256");
  }
  *resp = coordinator_->RegisterActor(*req);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::LeasePrompts(grpc::ServerContext* ctx,
                                              const v1::LeasePromptsRequest* req,
                                              v1::LeasePromptsResponse* resp) {
  if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
  absl::StatusOr<v1::LeasePromptsResponse> r = coordinator_->LeasePrompts(*req);
  if (!r.ok()) {
    // An unknown actor_id (NotFound) is counted by the coordinator as unknown_lease.
    if (r.status().code() == absl::StatusCode::kInvalidArgument) invalid_->Increment();
    return ToGrpc(r.status());
  }
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::Heartbeat(grpc::ServerContext* ctx,
                                           const v1::HeartbeatRequest* req,
                                           v1::HeartbeatResponse* resp) {
  if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
  absl::StatusOr<v1::HeartbeatResponse> r = coordinator_->Heartbeat(*req);
  if (!r.ok()) {
    // An unknown actor_id (NotFound) is counted by the coordinator as unknown_lease.
    if (r.status().code() == absl::StatusCode::kInvalidArgument) invalid_->Increment();
    return ToGrpc(r.status());
  }
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetStatus(grpc::ServerContext* ctx,
                                           const v1::GetStatusRequest* /*req*/,
                                           v1::StatusResponse* resp) {
  if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
  Coordinator::Counts c = coordinator_->counts();
  resp->set_version(coordinator_->version());
  resp->set_finished(coordinator_->finished());
  resp->set_groups_accepted(c.accepted);
  resp->set_groups_dropped_stale(c.stale);
  resp->set_groups_duplicate(c.duplicate);
  resp->set_live_actors(c.live_actors);
  resp->set_leases_reissued(c.reissued);
  resp->set_data_epoch(static_cast<uint64_t>(c.data_epoch));
  resp->set_data_index(static_cast<uint64_t>(c.data_index));
  for (v1::ActorStatus& a : coordinator_->ActorStatuses()) *resp->add_actors() = std::move(a);
  if (status_) status_(resp);
  return grpc::Status::OK;
}

LearnerService::LearnerService(Coordinator* coordinator, std::string token, MetricsRegistry* m)
    : coordinator_(coordinator), token_(std::move(token)) {
  unauthenticated_ = &m->Counter(kRejected, kRejectedHelp, {{"reason", "unauthenticated"}});
  invalid_ = &m->Counter(kRejected, kRejectedHelp, {{"reason", "invalid_argument"}});
}

grpc::Status LearnerService::SubmitGroups(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) {
  if (grpc::Status s = CheckBearer(*ctx, token_); !s.ok()) {
    unauthenticated_->Increment();
    return s;
  }
  v1::Group group;
  while (stream->Read(&group)) {
    absl::StatusOr<v1::GroupAck> ack = coordinator_->Submit(group);
    if (!ack.ok()) {
      invalid_->Increment();
      spdlog::warn("rejected group from {} via {}: {}", QuoteUntrusted(group.actor_id()),
                   QuoteUntrusted(group.verifier_id()), QuoteUntrusted(ack.status().message()));
      v1::GroupAck rejected;
      rejected.set_lease_id(group.lease_id());
      rejected.set_status(v1::ACK_REJECTED);
      rejected.set_message(std::string(ack.status().message()));
      stream->Write(rejected);
      return ToGrpc(ack.status());
    }
    if (!stream->Write(*ack)) break;
  }
  return grpc::Status::OK;
}

}  // namespace pmdrl
