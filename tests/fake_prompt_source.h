// A PromptSource for coordinator tests: an endless arith stream whose every place is the
// prompt "1+1=" (reference "2"), with the character tokenizer and no held-out set.
#ifndef PMDRL_TESTS_FAKE_PROMPT_SOURCE_H_
#define PMDRL_TESTS_FAKE_PROMPT_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/tokenizer.h"
#include "learner/coordinator/prompt_source.h"

namespace pmdrl {

class FakeSource final : public PromptSource {
 public:
  PromptItem Get(int64_t, int64_t) const override { return {{1, 4, 13, 4, 16}, "1+1=", "2"}; }
  int64_t ItemsPerEpoch() const override { return 0; }
  const std::vector<PromptItem>& HeldOut() const override { return held_out_; }
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  std::string task() const override { return "arith"; }
  std::string tokenizer_name() const override { return "char"; }
  const std::string& tokenizer_json() const override { return empty_; }
  const std::vector<int32_t>& stop_ids() const override { return stop_ids_; }

 private:
  std::vector<PromptItem> held_out_;
  CharTokenizer tokenizer_;
  std::string empty_;
  std::vector<int32_t> stop_ids_ = {CharTokenizer::kEos};
};

}  // namespace pmdrl

#endif  // PMDRL_TESTS_FAKE_PROMPT_SOURCE_H_
