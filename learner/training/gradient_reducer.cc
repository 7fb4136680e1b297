#include "learner/training/gradient_reducer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "learner/training/communicator.h"

namespace pmdrl {

GradientReducer::GradientReducer(const std::vector<at::Tensor>& params, Communicator* comm,
                                 int64_t bucket_bytes, bool overlap)
    : comm_(comm), overlap_(overlap) {
  // Tied weights appear once per owner in Module::parameters(); a tensor is reduced once.
  std::unordered_set<const void*> seen;
  std::vector<at::Tensor> unique;
  for (const at::Tensor& p : params) {
    if (p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second) unique.push_back(p);
  }
  // Reverse order: backward reaches the last layers first, so their buckets fill first.
  std::vector<int64_t> bucket_elems;
  int64_t bucket_used = 0;  // bytes in the open bucket
  for (auto it = unique.rbegin(); it != unique.rend(); ++it) {
    const at::Tensor& p = *it;
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool fits = !slots_.empty() && slots_.back().param.scalar_type() == p.scalar_type() &&
                      slots_.back().param.device() == p.device() &&
                      bucket_used + bytes <= bucket_bytes;
    if (!fits) {
      buckets_.push_back(Bucket());
      bucket_elems.push_back(0);
      bucket_used = 0;
    }
    Slot slot;
    slot.param = p;
    slot.bucket = static_cast<int64_t>(buckets_.size()) - 1;
    slot.offset = bucket_elems.back();
    bucket_elems.back() += p.numel();
    bucket_used += bytes;
    slots_.push_back(std::move(slot));
  }
  for (const Slot& s : slots_) {
    Bucket& b = buckets_[s.bucket];
    if (!b.flat.defined()) {
      // Half-precision gradients are summed in float32: the collectives take float32, and
      // the sum of several passes and ranks keeps its precision until Finish.
      const bool half =
          s.param.scalar_type() == at::kBFloat16 || s.param.scalar_type() == at::kHalf;
      b.flat = at::zeros(
          {bucket_elems[s.bucket]},
          s.param.options().dtype(half ? at::kFloat : s.param.scalar_type()).requires_grad(false));
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    hook_ids_.push_back(
        slots_[i].param.register_hook([this, i](const at::Tensor& grad) { OnGradient(i, grad); }));
  }
}

GradientReducer::~GradientReducer() {
  if (worker_.joinable()) {
    // Finish was not called (an exception in backward): let the worker run dry.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (!slots_[i].arrived) MarkArrived(i);
      }
    }
    ready_.notify_all();
    worker_.join();
  }
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i].param.remove_hook(hook_ids_[i]);
}

void GradientReducer::Begin() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Slot& s : slots_) s.arrived = false;
    for (Bucket& b : buckets_) b.flat.zero_();
    final_pass_ = true;
    for (Bucket& b : buckets_) b.pending = 0;
    for (const Slot& s : slots_) buckets_[s.bucket].pending++;
    worker_status_ = absl::OkStatus();
  }
  if (overlap_) worker_ = std::thread([this] { Worker(); });
}

void GradientReducer::SetFinalPass(bool final_pass) { final_pass_ = final_pass; }

void GradientReducer::OnGradient(size_t slot, const at::Tensor& grad) {
  Slot& s = slots_[slot];
  // Runs on the autograd thread; on CUDA the add is stream-ordered before the bucket's
  // collective, which the NCCL backend enqueues after the default stream's work. The
  // bucket was zeroed by Begin, so it holds the sum of this step's passes.
  at::Tensor dst = buckets_[s.bucket].flat.narrow(0, s.offset, s.param.numel());
  {
    c10::NoGradGuard no_grad;
    dst.add_(grad.reshape({-1}));
  }
  if (!final_pass_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!s.arrived) MarkArrived(slot);
}

void GradientReducer::MarkArrived(size_t slot) {
  slots_[slot].arrived = true;
  if (--buckets_[slots_[slot].bucket].pending == 0) ready_.notify_all();
}

absl::Status GradientReducer::Send(int64_t bucket) {
  std::vector<at::Tensor> v = {buckets_[bucket].flat};
  absl::Status s = comm_->AllReduce(v, /*average=*/false);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("gradient bucket ", bucket, " of ", buckets_.size(),
                                               ": ", s.message()));
  }
  return absl::OkStatus();
}

void GradientReducer::Worker() {
  for (int64_t b = 0; b < static_cast<int64_t>(buckets_.size()); ++b) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [&] { return buckets_[b].pending == 0; });
    }
    absl::Status s = Send(b);
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(mutex_);
      worker_status_ = s;
      return;  // the group is broken: later collectives would fail too
    }
  }
}

absl::Status GradientReducer::Finish() {
  {
    c10::NoGradGuard no_grad;
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      // No gradient in the final pass (a rank without rows, an unused weight): the bucket
      // holds what earlier passes added, or the zeros of Begin.
      if (!slots_[i].arrived) MarkArrived(i);
    }
  }
  absl::Status status;
  if (worker_.joinable()) {
    worker_.join();
    status = worker_status_;
  } else {
    for (int64_t b = 0; b < static_cast<int64_t>(buckets_.size()) && status.ok(); ++b) {
      status = Send(b);
    }
  }
  if (!status.ok()) return status;
  c10::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    at::Tensor sum =
        buckets_[s.bucket].flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
    at::Tensor& grad = s.param.mutable_grad();
    if (grad.defined()) {
      grad.copy_(sum);
    } else {
      grad = sum.clone();
    }
  }
  return absl::OkStatus();
}

}  // namespace pmdrl
