// A model's weights as a WeightVersion (common/weight_stream.h): what the learner
// publishes to the actors, converted to the wire dtype once.
#ifndef PMDRL_COMMON_NN_WEIGHT_SNAPSHOT_H_
#define PMDRL_COMMON_NN_WEIGHT_SNAPSHOT_H_

#include <cstdint>
#include <memory>

#include "common/nn/model.h"
#include "common/weight_stream.h"

namespace pmdrl {

// Copies NamedWeights(model) into a new version in `dtype` (rounding to nearest even, as
// Torch converts), with checksums. Runs under NoGradGuard; the model may be on any device.
std::shared_ptr<WeightVersion> SnapshotWeights(CausalLM& model, uint64_t version, WireDtype dtype);

}  // namespace pmdrl

#endif  // PMDRL_COMMON_NN_WEIGHT_SNAPSHOT_H_
