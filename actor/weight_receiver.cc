#include "actor/weight_receiver.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

// Reserving the whole tensor up front saves re-allocations, but a hostile tensor_bytes
// must not make us allocate terabytes before any data arrived: above this, grow as
// the data comes.
constexpr uint64_t kMaxReserveBytes = uint64_t{1} << 30;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? "," : "", shape[i]);
  return s + "]";
}

}  // namespace

void WeightAssembler::Reset() {
  partial_.reset();
  skipping_ = false;
  tensor_count_ = 0;
  tensor_bytes_ = tensor_received_ = 0;
}

absl::Status WeightAssembler::Add(const v1::WeightChunk& chunk,
                                  std::optional<uint64_t> newest_complete,
                                  std::shared_ptr<WeightSet>* complete) {
  complete->reset();
  const uint64_t version = chunk.version();
  if (skipping_ && version == skip_version_) return absl::OkStatus();
  skipping_ = false;

  // Drops the version being assembled and ignores the rest of its chunks.
  auto fail = [&](const std::string& what) {
    partial_.reset();
    skipping_ = true;
    skip_version_ = version;
    return absl::InvalidArgumentError(
        absl::StrCat("weight version ", version, ", tensor_index ", chunk.tensor_index(), " ('",
                     chunk.name(), "'), offset ", chunk.offset(), ": ", what, "; version dropped"));
  };

  if (partial_ != nullptr && partial_->version != version) {
    spdlog::warn(
        "weight version {} was incomplete (in tensor {} of {}) when version {} "
        "started; dropped",
        partial_->version, partial_->names.size(), tensor_count_, version);
    partial_.reset();
  }

  bool begin_tensor = false;
  if (partial_ == nullptr) {
    if (newest_complete.has_value() && version <= *newest_complete) {
      // Already held (a reconnected stream starts again with the current version).
      skipping_ = true;
      skip_version_ = version;
      return absl::OkStatus();
    }
    if (chunk.tensor_index() != 0 || chunk.offset() != 0) {
      return fail("a version must start with tensor 0 at offset 0");
    }
    if (chunk.tensor_count() == 0) return fail("tensor_count is 0");
    partial_ = std::make_shared<WeightSet>();
    partial_->version = version;
    partial_->first_chunk_time = std::chrono::steady_clock::now();
    partial_->names.reserve(chunk.tensor_count());
    tensor_count_ = chunk.tensor_count();
    begin_tensor = true;
  } else {
    if (chunk.tensor_count() != tensor_count_) {
      return fail(
          absl::StrCat("tensor_count changed from ", tensor_count_, " to ", chunk.tensor_count()));
    }
    const size_t current = partial_->names.size() - 1;
    if (tensor_received_ < tensor_bytes_) {
      // The current tensor continues.
      if (chunk.tensor_index() != current) {
        return fail(absl::StrCat("expected more of tensor ", current, " ('",
                                 partial_->names[current], "', ", tensor_received_, " of ",
                                 tensor_bytes_, " bytes received)"));
      }
      if (chunk.offset() != tensor_received_) {
        return fail(absl::StrCat("expected offset ", tensor_received_));
      }
      if (chunk.name() != partial_->names[current] || chunk.tensor_bytes() != tensor_bytes_ ||
          !std::equal(chunk.shape().begin(), chunk.shape().end(), partial_->shapes[current].begin(),
                      partial_->shapes[current].end())) {
        return fail("name, shape or tensor_bytes differ from the tensor's first chunk");
      }
    } else {
      if (chunk.tensor_index() != current + 1 || chunk.offset() != 0) {
        return fail(absl::StrCat("expected tensor ", current + 1, " at offset 0"));
      }
      begin_tensor = true;
    }
  }

  if (begin_tensor) {
    if (chunk.tensor_index() >= tensor_count_) {
      return fail(absl::StrCat("tensor_index beyond tensor_count ", tensor_count_));
    }
    if (chunk.name().empty()) return fail("empty tensor name");
    if (std::find(partial_->names.begin(), partial_->names.end(), chunk.name()) !=
        partial_->names.end()) {
      return fail("tensor name repeated");
    }
    std::vector<int64_t> shape(chunk.shape().begin(), chunk.shape().end());
    uint64_t elements = 1;
    for (int64_t d : shape) {
      if (d < 0) return fail(absl::StrCat("negative dimension in shape ", ShapeString(shape)));
      if (d != 0 && elements > std::numeric_limits<uint64_t>::max() / 4 / d) {
        return fail(absl::StrCat("shape ", ShapeString(shape), " is too large"));
      }
      elements *= static_cast<uint64_t>(d);
    }
    if (elements * 4 != chunk.tensor_bytes()) {
      return fail(absl::StrCat("shape ", ShapeString(shape), " needs ", elements * 4,
                               " bytes of float32 but tensor_bytes is ", chunk.tensor_bytes()));
    }
    partial_->names.push_back(chunk.name());
    partial_->shapes.push_back(std::move(shape));
    partial_->data.emplace_back();
    if (chunk.tensor_bytes() <= kMaxReserveBytes) {
      partial_->data.back().reserve(chunk.tensor_bytes() / 4);
    }
    tensor_bytes_ = chunk.tensor_bytes();
    tensor_received_ = 0;
  }

  const std::string& bytes = chunk.data();
  if (bytes.size() % 4 != 0) {
    return fail(absl::StrCat("data size ", bytes.size(), " is not a multiple of 4"));
  }
  if (bytes.size() > tensor_bytes_ - tensor_received_) {
    return fail(
        absl::StrCat("data of ", bytes.size(), " bytes overruns tensor_bytes ", tensor_bytes_));
  }
  std::vector<float>& out = partial_->data.back();
  const size_t old_size = out.size();
  const size_t n = bytes.size() / 4;
  out.resize(old_size + n);
  std::memcpy(out.data() + old_size, bytes.data(), bytes.size());
  for (size_t i = old_size; i < old_size + n; ++i) {
    if constexpr (std::endian::native == std::endian::big) {
      uint32_t u;
      std::memcpy(&u, &out[i], 4);
      u = __builtin_bswap32(u);
      std::memcpy(&out[i], &u, 4);
    }
    if (!std::isfinite(out[i])) {
      return fail(absl::StrCat("non-finite value at element ", i));
    }
  }
  tensor_received_ += bytes.size();
  partial_->total_bytes += bytes.size();

  if (tensor_received_ == tensor_bytes_ && partial_->names.size() == tensor_count_) {
    *complete = std::move(partial_);
    partial_.reset();
    tensor_count_ = 0;
    tensor_bytes_ = tensor_received_ = 0;
  }
  return absl::OkStatus();
}

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

std::shared_ptr<const WeightSet> WeightReceiver::Latest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

std::shared_ptr<const WeightSet> WeightReceiver::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(latest_);
}

bool WeightReceiver::WaitForVersion(uint64_t v, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto have = [&] { return latest_version_.has_value() && *latest_version_ >= v; };
  cv_.wait_for(lock, timeout, [&] { return stopping_ || have(); });
  return have();
}

void WeightReceiver::Publish(std::shared_ptr<const WeightSet> set) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (latest_version_.has_value() && *latest_version_ >= set->version) return;
    latest_version_ = set->version;
    latest_ = std::move(set);
  }
  cv_.notify_all();
}

void WeightReceiver::Loop() {
  auto stub = v1::Coordinator::NewStub(channel_);
  WeightAssembler assembler;
  std::chrono::milliseconds backoff = options_.initial_backoff;
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
    }
    assembler.Reset();
    auto reader = stub->WatchWeights(&ctx, request);
    v1::WeightChunk chunk;
    while (reader->Read(&chunk)) {
      backoff = options_.initial_backoff;  // the stream works
      std::optional<uint64_t> newest;
      if (auto latest = Latest()) newest = latest->version;
      std::shared_ptr<WeightSet> complete;
      absl::Status status = assembler.Add(chunk, newest, &complete);
      if (!status.ok()) {
        malformed_.fetch_add(1);
        spdlog::error("weight stream: {}", std::string(status.message()));
      }
      if (complete != nullptr) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                             complete->first_chunk_time)
                                   .count();
        spdlog::info("received weights version {}: {} tensors, {:.1f} MB in {:.2f} s",
                     complete->version, complete->names.size(), complete->total_bytes / 1e6,
                     seconds);
        Publish(std::move(complete));
      }
    }
    const grpc::Status status = reader->Finish();
    std::unique_lock<std::mutex> lock(mu_);
    call_context_ = nullptr;
    if (stopping_) return;
    spdlog::warn("weight stream from the coordinator ended ({}: {}); reconnecting in {} ms",
                 static_cast<int>(status.error_code()), status.error_message(), backoff.count());
    cv_.wait_for(lock, backoff, [&] { return stopping_; });
    if (stopping_) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace pmdrl
