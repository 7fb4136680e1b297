#include "actor/weight_receiver.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/sync_stream.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "common/auth.h"
#include "spdlog/spdlog.h"

namespace pmdrl {

WeightReceiver::WeightReceiver(std::shared_ptr<grpc::Channel> channel, std::string actor_id,
                               std::string token, Options options)
    : channel_(std::move(channel)),
      actor_id_(std::move(actor_id)),
      token_(std::move(token)),
      options_(options) {}

WeightReceiver::~WeightReceiver() { Stop(); }

void WeightReceiver::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Loop(); });
}

void WeightReceiver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (call_context_ != nullptr) call_context_->TryCancel();
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

std::shared_ptr<const WeightVersion> WeightReceiver::Latest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

std::shared_ptr<const WeightVersion> WeightReceiver::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(latest_);
}

bool WeightReceiver::WaitForVersion(uint64_t v, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto have = [&] { return latest_version_.has_value() && *latest_version_ >= v; };
  cv_.wait_for(lock, timeout, [&] { return stopping_ || have(); });
  return have();
}

std::optional<uint64_t> WeightReceiver::NewestVersion() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_version_;
}

void WeightReceiver::Forget() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    latest_.reset();
    latest_version_.reset();
    ++forget_epoch_;
    // Loop reopens the stream (asking for a full push) and drops its delta base.
    if (call_context_ != nullptr) call_context_->TryCancel();
  }
  cv_.notify_all();
}

void WeightReceiver::Publish(std::shared_ptr<const WeightVersion> version, uint64_t epoch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch != forget_epoch_) return;
    if (latest_version_.has_value() && *latest_version_ >= version->version) return;
    latest_version_ = version->version;
    latest_ = std::move(version);
  }
  cv_.notify_all();
}

void WeightReceiver::Loop() {
  // The stream is read as raw grpc::ByteBuffers, so that the assembler can place each
  // chunk's data straight into its tensor instead of parsing it into a message first;
  // gRPC's public API has no raw synchronous client reader, so the generated stub's own
  // factory is used with ByteBuffer as the message type.
  const grpc::internal::RpcMethod method("/pmdrl.v1.WeightFeed/WatchWeights",
                                         grpc::internal::RpcMethod::SERVER_STREAMING, channel_);
  WeightAssembler assembler;
  // The last version received: the base of a delta (when the publisher asked for it to
  // be kept), and, once the actor has let go of it, the memory the next version is
  // written into.
  std::shared_ptr<WeightVersion> last;
  std::chrono::milliseconds backoff = options_.initial_backoff;
  uint64_t epoch = 0;  // the Forget() epoch of the stream being opened
  while (true) {
    grpc::ClientContext ctx;
    AddBearer(&ctx, token_);
    v1::WatchWeightsRequest request;
    request.set_actor_id(actor_id_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      call_context_ = &ctx;
      if (latest_version_.has_value()) request.set_have_version(*latest_version_);
      if (epoch != forget_epoch_) {
        epoch = forget_epoch_;
        last.reset();  // a base of the forgotten versions
        backoff = options_.initial_backoff;
      }
    }
    if (last != nullptr && !IsWhole(*last)) last.reset();
    if (last != nullptr && last->keep_base && request.have_version() == last->version) {
      request.set_have_base(true);
    }
    assembler.Reset();
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel_.get(), method, &ctx,
                                                                      request));
    grpc::ByteBuffer chunk;
    bool rejected = false;
    while (!rejected && reader->Read(&chunk)) {
      std::optional<uint64_t> newest;
      {
        std::lock_guard<std::mutex> lock(mu_);
        newest = latest_version_;
      }
      std::shared_ptr<WeightVersion> complete;
      // use_count 1: the actor has taken and dropped `last` (only this thread can hand
      // out new references to it, through Publish), so its memory may be written.
      absl::Status status =
          assembler.Add(&chunk, newest, last.get(), last.use_count() == 1, &complete);
      if (!status.ok()) {
        // Whatever the stream sends next builds on a version this actor did not take:
        // start again from a full push.
        malformed_.fetch_add(1);
        spdlog::error("weight stream: {}; asking for a full push", std::string(status.message()));
        last.reset();
        rejected = true;
        ctx.TryCancel();
        break;
      }
      if (complete == nullptr) continue;
      backoff = options_.initial_backoff;  // the stream works
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                           complete->first_chunk_time)
                                 .count();
      const bool as_delta = complete->from_delta;
      if (as_delta) delta_versions_.fetch_add(1);
      wire_bytes_.fetch_add(complete->wire_bytes);
      spdlog::info("received weights version {}: {} tensors, {:.1f} MB of {} {}in {:.2f} s",
                   complete->version, complete->tensors.size(), complete->Bytes() / 1e6,
                   WireDtypeName(complete->dtype),
                   as_delta ? fmt::format("as a {:.1f} MB delta ", complete->wire_bytes / 1e6)
                            : std::string(),
                   seconds);
      last = complete;
      Publish(std::move(complete), epoch);
    }
    const grpc::Status status = reader->Finish();
    std::unique_lock<std::mutex> lock(mu_);
    call_context_ = nullptr;
    if (stopping_) return;
    if (!rejected) {
      spdlog::warn("weight stream from the learner ended ({}: {}); reconnecting in {} ms",
                   static_cast<int>(status.error_code()), status.error_message(), backoff.count());
    }
    cv_.wait_for(lock, backoff, [&] { return stopping_ || epoch != forget_epoch_; });
    if (stopping_) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace pmdrl
