// Sums the gradients of a data-parallel learner across ranks while the backward pass is
// still running (docs/design.md "Collectives"): the same overlap PyTorch DDP gets from its
// bucket hooks, built on LibTorch's per-tensor gradient hooks and a Communicator.
#ifndef PMDRL_LEARNER_GRADIENT_REDUCER_H_
#define PMDRL_LEARNER_GRADIENT_REDUCER_H_

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace pmdrl {

class Communicator;

// Packs parameters' gradients into fused flat buckets (in reverse registration order,
// which is roughly the order backward produces them) and all-reduces (sums) each bucket
// on a background thread as soon as its last gradient arrives, so communication of the
// late layers overlaps the backward pass of the early ones.
//
// Buckets are reduced strictly in bucket order, whatever order the gradients arrive in,
// so every rank issues the same collectives in the same order (the Communicator's
// contract) even when ranks' backward passes differ in timing or a rank has no rows
// (it calls Finish without a backward pass and contributes zeros).
//
// Usage, once per optimizer step: Begin(); loss.backward() (optional); Finish(). With
// gradient accumulation over micro-batches: Begin(); then per micro-batch
// SetFinalPass(is_last) and its backward; Finish(). Earlier passes only add into the
// buckets; buckets go out during the final pass. After a successful Finish every
// parameter's grad() holds the cross-rank sum of all passes. Borrows `comm`
// and the parameters; the hooks it installs are removed by the destructor, so it must
// outlive any backward pass run between Begin and Finish. The communicator must not be
// used by anyone else between Begin and Finish (it is driven from the background thread).
class GradientReducer {
 public:
  // `overlap` false: hooks still pack buckets, but nothing is sent before Finish (the
  // plain, sequential schedule; for measuring what the overlap buys).
  GradientReducer(const std::vector<at::Tensor>& params, Communicator* comm, int64_t bucket_bytes,
                  bool overlap);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void Begin();
  // Whether the next backward pass is the step's last (the default after Begin).
  void SetFinalPass(bool final_pass);
  // Fills in zeros for parameters that got no gradient, waits for every bucket's
  // all-reduce and writes the sums into the parameters' grad(). An error (a dead rank, a
  // timeout) comes from the first failed collective; the group is broken after it.
  absl::Status Finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Slot {
    at::Tensor param;
    int64_t bucket = 0;
    int64_t offset = 0;  // elements into the bucket's flat buffer
    bool arrived = false;
  };
  struct Bucket {
    at::Tensor flat;
    int64_t pending = 0;  // slots still to arrive this step
  };

  void OnGradient(size_t slot, const at::Tensor& grad);
  void MarkArrived(size_t slot);  // mutex_ held
  absl::Status Send(int64_t bucket);
  void Worker();

  Communicator* comm_;
  bool overlap_;
  bool final_pass_ = true;  // set between backward passes, read by the hooks
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hook_ids_;

  std::mutex mutex_;
  std::condition_variable ready_;  // a bucket's pending count reached 0
  absl::Status worker_status_;     // first failed collective of this step
  std::thread worker_;             // overlap only: sends buckets in order, Begin to Finish
};

}  // namespace pmdrl

#endif  // PMDRL_LEARNER_GRADIENT_REDUCER_H_
