#include "learner/training/sharded_adamw.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "learner/training/communicator.h"

namespace pmdrl {

ShardedAdamW::ShardedAdamW(std::vector<at::Tensor> params, Communicator* comm,
                           ShardedAdamWOptions options)
    : params_(std::move(params)), comm_(comm), options_(options) {
  int64_t total = 0;
  for (const at::Tensor& p : params_) {
    offsets_.push_back(total);
    total += p.numel();
  }
  const int64_t world = comm_->world_size();
  shard_ = (total + world - 1) / world;
  torch::NoGradGuard no_grad;
  flat_ =
      torch::zeros({shard_ * world}, params_.empty() ? torch::TensorOptions().dtype(torch::kFloat)
                                                     : params_[0].options());
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor slice = flat_.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes());
    slice.copy_(params_[i]);
    params_[i].set_data(slice);
  }
  exp_avg_ = torch::zeros({shard_}, flat_.options());
  exp_avg_sq_ = torch::zeros({shard_}, flat_.options());
}

void ShardedAdamW::ZeroGrad() {
  if (!flat_grad_.defined()) flat_grad_ = torch::empty_like(flat_);
  flat_grad_.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].mutable_grad() =
        flat_grad_.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes());
  }
}

void ShardedAdamW::ReleaseGradients() {
  for (at::Tensor& p : params_) p.mutable_grad().reset();
  flat_grad_ = at::Tensor();
}

absl::StatusOr<double> ShardedAdamW::Step(double lr, double max_norm) {
  torch::NoGradGuard no_grad;
  if (!flat_grad_.defined()) ZeroGrad();
  const int rank = comm_->rank();
  at::Tensor grad = flat_grad_.narrow(0, rank * shard_, shard_);
  double norm = 0;
  if (options_.stage == 2) {
    if (absl::Status s = comm_->ReduceScatter(flat_grad_, grad, /*average=*/false); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("ZeRO-2 gradient reduce-scatter: ", s.message()));
    }
    // The global norm from every rank's slice.
    at::Tensor sq = grad.pow(2).sum().to(torch::kFloat64).reshape({1});
    std::vector<at::Tensor> v = {sq};
    if (absl::Status s = comm_->AllReduce(v, /*average=*/false); !s.ok()) return s;
    norm = std::sqrt(sq.item<double>());
  } else {
    norm = flat_grad_.norm().item<double>();  // summed already: the same on every rank
  }
  // torch::nn::utils::clip_grad_norm_'s rule.
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1) grad.mul_(coef);
  }
  if (!std::isfinite(norm)) return norm;  // the caller reports it; nothing is updated
  // torch::optim::AdamW::step, elementwise on this rank's slice.
  at::Tensor p = flat_.narrow(0, rank * shard_, shard_);
  ++steps_;
  const double bias1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(options_.beta2, static_cast<double>(steps_));
  p.mul_(1 - lr * options_.weight_decay);
  exp_avg_.mul_(options_.beta1).add_(grad, 1 - options_.beta1);
  exp_avg_sq_.mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
  at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias2)).add_(options_.eps);
  p.addcdiv_(exp_avg_, denom, -lr / bias1);
  if (absl::Status s = comm_->AllGather(p, flat_); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("ZeRO parameter all-gather: ", s.message()));
  }
  return norm;
}

absl::Status ShardedAdamW::GatherState(std::vector<at::Tensor>* exp_avg,
                                       std::vector<at::Tensor>* exp_avg_sq) {
  torch::NoGradGuard no_grad;
  for (auto [shard, out] : {std::pair{&exp_avg_, exp_avg}, std::pair{&exp_avg_sq_, exp_avg_sq}}) {
    at::Tensor full = torch::empty_like(flat_);
    if (absl::Status s = comm_->AllGather(*shard, full); !s.ok()) return s;
    out->clear();
    for (size_t i = 0; i < params_.size(); ++i) {
      out->push_back(full.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes()));
    }
  }
  return absl::OkStatus();
}

at::Tensor ShardedAdamW::Flatten(const std::vector<at::Tensor>& per_param) const {
  at::Tensor full = torch::zeros_like(flat_);
  for (size_t i = 0; i < params_.size(); ++i) {
    full.narrow(0, offsets_[i], params_[i].numel()).copy_(per_param[i].reshape({-1}));
  }
  return full;
}

absl::Status ShardedAdamW::LoadState(const std::vector<at::Tensor>& exp_avg,
                                     const std::vector<at::Tensor>& exp_avg_sq, int64_t steps) {
  if (exp_avg.size() != params_.size() || exp_avg_sq.size() != params_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state for ", exp_avg.size(),
                                                   " parameters, the model has ", params_.size()));
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (exp_avg[i].numel() != params_[i].numel() || exp_avg_sq[i].numel() != params_[i].numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state of parameter ", i, " has the wrong size"));
    }
  }
  torch::NoGradGuard no_grad;
  const int64_t begin = comm_->rank() * shard_;
  exp_avg_.copy_(Flatten(exp_avg).narrow(0, begin, shard_));
  exp_avg_sq_.copy_(Flatten(exp_avg_sq).narrow(0, begin, shard_));
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace pmdrl
