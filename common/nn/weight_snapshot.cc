#include "common/nn/weight_snapshot.h"

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace pmdrl {

std::shared_ptr<WeightVersion> SnapshotWeights(CausalLM& model, uint64_t version, WireDtype dtype) {
  auto snap = std::make_shared<WeightVersion>();
  snap->version = version;
  snap->dtype = dtype;
  const at::ScalarType type = dtype == WireDtype::kBfloat16 ? at::kBFloat16 : at::kFloat;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : NamedWeights(model)) {
    WireTensor w =
        MakeWireTensor(name, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), dtype);
    // One pass: copy_ converts straight into the version's memory.
    torch::from_blob(w.bytes.get(), t.sizes(), torch::TensorOptions().dtype(type))
        .copy_(t.detach());
    w.checksum = WeightChecksum(w.bytes.get(), w.size);
    snap->tensors.push_back(std::move(w));
  }
  return snap;
}

}  // namespace pmdrl
