#include "actor/rollout_engine.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <exception>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/nn/model.h"
#include "common/nn/sampler.h"

namespace pmdrl {

struct RolloutEngine::Impl {
  Impl(const ModelConfig& config, const RolloutOptions& options, const c10::Device& device)
      : model(config), sampler(options.seed), vocab_size(config.vocab_size) {
    model->to(device);
    params.temperature = options.temperature;
    params.top_p = options.top_p;
    params.max_new_tokens = options.max_new_tokens;
    params.stop_tokens = options.stop_tokens;
    model->eval();
  }

  CausalLM model;
  Sampler sampler;
  SamplingParams params;
  const int64_t vocab_size;
  uint64_t version = 0;
  bool has_weights = false;
};

namespace {

// actor.device as a Torch device. Weights arrive as float32 on the CPU and LoadWeights
// copies them onto this device; the sampler follows the model's device.
absl::StatusOr<c10::Device> SamplingDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name != "cuda" && name.rfind("cuda:", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("actor.device=", name, ": expected cpu, cuda or cuda:N"));
  }
  const int64_t count = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "actor.device=", name,
        ": no CUDA device is visible to this LibTorch (a CPU-only build, or no GPU); use cpu"));
  }
  int64_t index = 0;
  if (name != "cuda") {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
        digits.size() > 4) {
      return absl::InvalidArgumentError(
          absl::StrCat("actor.device=", name, ": expected cpu, cuda or cuda:N"));
    }
    index = std::stoll(digits);
    if (index >= count) {
      return absl::InvalidArgumentError(
          absl::StrCat("actor.device=", name, ": only ", count, " CUDA devices are visible"));
    }
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace

RolloutEngine::RolloutEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RolloutEngine::~RolloutEngine() = default;

absl::StatusOr<std::unique_ptr<RolloutEngine>> RolloutEngine::Create(
    const ModelConfig& config, const RolloutOptions& options) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", options.max_new_tokens));
  }
  absl::StatusOr<c10::Device> device = SamplingDevice(options.device);
  if (!device.ok()) return device.status();
  try {
    return std::unique_ptr<RolloutEngine>(
        new RolloutEngine(std::make_unique<Impl>(config, options, *device)));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("building the policy model failed: ", e.what_without_backtrace()));
  }
}

absl::Status RolloutEngine::SetWeights(const WeightSet& weights) {
  if (weights.names.size() != weights.shapes.size() ||
      weights.names.size() != weights.data.size()) {
    return absl::InvalidArgumentError("weight set: names, shapes and data differ in length");
  }
  // Whatever happens below may leave the model partly updated: no valid version until
  // the load succeeds.
  impl_->has_weights = false;
  impl_->version = 0;
  try {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    tensors.reserve(weights.names.size());
    for (size_t i = 0; i < weights.names.size(); ++i) {
      int64_t elements = 1;
      for (int64_t d : weights.shapes[i]) elements *= d;
      if (elements != static_cast<int64_t>(weights.data[i].size())) {
        return absl::InvalidArgumentError(absl::StrCat("weight '", weights.names[i], "' has ",
                                                       weights.data[i].size(),
                                                       " values for a shape of ", elements));
      }
      // A view of the received data, no copy: LoadWeights copies into the parameters,
      // and `weights` outlives this call.
      tensors.emplace_back(weights.names[i],
                           at::from_blob(const_cast<float*>(weights.data[i].data()),
                                         weights.shapes[i], at::TensorOptions().dtype(at::kFloat)));
    }
    absl::Status status = LoadWeights(impl_->model, tensors);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("loading weights version ", weights.version,
                                                      ": ", status.message()));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading weights version ", weights.version, ": ",
                                            e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("loading weights version ", weights.version, ": ", e.what()));
  }
  impl_->version = weights.version;
  impl_->has_weights = true;
  return absl::OkStatus();
}

uint64_t RolloutEngine::version() const { return impl_->version; }
bool RolloutEngine::has_weights() const { return impl_->has_weights; }

absl::StatusOr<std::vector<std::vector<RolloutSample>>> RolloutEngine::Generate(
    const std::vector<std::vector<int32_t>>& prompts, int64_t k) {
  if (!impl_->has_weights) {
    return absl::FailedPreconditionError("no policy weights loaded: nothing to sample from");
  }
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("k must be >= 1, got ", k));
  for (size_t p = 0; p < prompts.size(); ++p) {
    if (prompts[p].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt ", p, " is empty"));
    }
    for (size_t t = 0; t < prompts[p].size(); ++t) {
      if (prompts[p][t] < 0 || prompts[p][t] >= impl_->vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt ", p, " token ", t, " = ",
                                                       prompts[p][t], " is out of range [0, ",
                                                       impl_->vocab_size, ")"));
      }
    }
  }
  std::vector<std::vector<RolloutSample>> out(prompts.size());
  if (prompts.empty()) return out;
  try {
    std::vector<std::vector<Sample>> samples =
        impl_->sampler.Generate(impl_->model, prompts, k, impl_->params);
    for (size_t p = 0; p < samples.size() && p < out.size(); ++p) {
      out[p].reserve(samples[p].size());
      for (Sample& s : samples[p]) {
        out[p].push_back(RolloutSample{std::move(s.tokens), std::move(s.logprobs), s.stopped});
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sampling failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sampling failed: ", e.what()));
  }
  return out;
}

}  // namespace pmdrl
