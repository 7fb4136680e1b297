// The Trainer's optimizer state outside a single update: checkpoint files (Save,
// LoadOptimizer), and the ZeRO shards (ShardOptimizer at the first sharded update,
// GatherOptimizerState before a checkpoint). The rest of the Trainer is in
// learner/training/trainer.cc; both share Trainer::Impl (learner/training/trainer_impl.h).
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/nn/model_dir.h"
#include "learner/training/communicator.h"
#include "learner/training/sharded_adamw.h"
#include "learner/training/trainer.h"
#include "learner/training/trainer_impl.h"

namespace pmdrl {

bool Trainer::Impl::WholeOptimizerState(std::vector<torch::Tensor>* exp_avg,
                                        std::vector<torch::Tensor>* exp_avg_sq, int64_t* step) {
  auto& states = optimizer->state();
  for (const torch::Tensor& p : model->parameters()) {
    auto it = states.find(c10::guts::to_string(p.unsafeGetTensorImpl()));
    if (it == states.end()) return false;
    auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
    exp_avg->push_back(st.exp_avg());
    exp_avg_sq->push_back(st.exp_avg_sq());
    *step = st.step();
  }
  return true;
}

absl::Status Trainer::Impl::ShardOptimizer(Communicator* comm) {
  if (sharded != nullptr || comm == nullptr || config.learner.zero_stage == 0 ||
      comm->world_size() < 2) {
    return absl::OkStatus();
  }
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;
  int64_t step = 0;
  const bool resumed = WholeOptimizerState(&exp_avg, &exp_avg_sq, &step);
  ShardedAdamWOptions o;
  o.stage = static_cast<int>(config.learner.zero_stage);
  o.weight_decay = config.learner.weight_decay;
  sharded = std::make_unique<ShardedAdamW>(model->parameters(), comm, o);
  if (resumed) {
    if (absl::Status s = sharded->LoadState(exp_avg, exp_avg_sq, step); !s.ok()) return s;
  }
  optimizer->state().clear();
  return absl::OkStatus();
}

absl::Status Trainer::Save(const std::string& dir) {
  absl::Status s = SaveModelDir(impl_->model, dir);
  if (!s.ok()) return s;
  try {
    if (impl_->sharded != nullptr && impl_->optimizer->state().empty()) {
      return absl::FailedPreconditionError(
          "saving a ZeRO-sharded optimizer: GatherOptimizerState must run on every rank first");
    }
    torch::save(*impl_->optimizer, (std::filesystem::path(dir) / "optimizer.pt").string());
    // The gathered whole state was only for the file.
    if (impl_->sharded != nullptr) impl_->optimizer->state().clear();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("saving optimizer state to ", dir, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::GatherOptimizerState(Communicator* comm) {
  Impl& m = *impl_;
  if (m.sharded == nullptr) return absl::OkStatus();
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;
  if (absl::Status s = m.sharded->GatherState(&exp_avg, &exp_avg_sq); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("gathering the ZeRO optimizer state: ", s.message()));
  }
  if (comm->rank() != 0) return absl::OkStatus();
  auto& states = m.optimizer->state();
  std::vector<torch::Tensor> params = m.model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(m.sharded->steps());
    st->exp_avg(exp_avg[i].clone());
    st->exp_avg_sq(exp_avg_sq[i].clone());
    states[c10::guts::to_string(params[i].unsafeGetTensorImpl())] = std::move(st);
  }
  return absl::OkStatus();
}

absl::Status Trainer::LoadOptimizer(const std::string& dir) {
  std::string path = (std::filesystem::path(dir) / "optimizer.pt").string();
  try {
    torch::load(*impl_->optimizer, path, impl_->device);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading optimizer state ", path, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

int64_t Trainer::optimizer_steps() const { return impl_->steps; }
void Trainer::set_optimizer_steps(int64_t steps) { impl_->steps = steps; }

}  // namespace pmdrl
