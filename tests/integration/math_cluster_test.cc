// Math RL through the whole cluster: a tiny random Qwen3 model written by `pmdrl
// init-model` with the test BPE tokenizer, trained by `pmdrl local` on the JSONL math
// problems of examples/math-tiny.yaml. Checks that the learner trained, that every
// completion was decoded with the BPE tokenizer and graded by the math grader, that
// evaluation reported avg@k, and that the checkpoint is a model directory that loads
// and generates.
#include <gtest/gtest.h>

#include <set>

#include "common/bpe_tokenizer.h"
#include "common/chat_template.h"
#include "common/nn/model_dir.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cluster_util.h"
#include "verifier/grader.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using json = nlohmann::json;
using std::chrono::seconds;

constexpr int kUpdates = 4;
constexpr int kGroupSize = 4;

std::string OutcomeOf(Verdict v) {
  switch (v) {
    case Verdict::kCorrect:
      return "OUTCOME_CORRECT";
    case Verdict::kIncorrect:
      return "OUTCOME_INCORRECT";
    case Verdict::kParseError:
      return "OUTCOME_PARSE_ERROR";
    case Verdict::kTimeout:
      return "OUTCOME_TIMEOUT";
  }
  return "";
}

TEST(MathCluster, TrainsOnJsonlWithTheBpeTokenizerAndTheMathGrader) {
  const fs::path dir = FreshDir("math");
  const fs::path model = dir / "model";
  const fs::path run = dir / "run";
  const std::string tiny_bpe = Src("tests/data/tiny_bpe");

  auto [init_rc, init_out] = RunCommand({Bin("cli/pmdrl"),
                                         "init-model",
                                         "--arch",
                                         "qwen3",
                                         "--out",
                                         model.string(),
                                         "--tokenizer-from",
                                         tiny_bpe,
                                         "--hidden-size",
                                         "32",
                                         "--layers",
                                         "1",
                                         "--heads",
                                         "2",
                                         "--kv-heads",
                                         "1",
                                         "--intermediate-size",
                                         "64",
                                         "--max-positions",
                                         "256",
                                         "--seed",
                                         "3"});
  ASSERT_EQ(init_rc, 0) << init_out;

  Child local({Bin("cli/pmdrl"), "local", "--config", Src("examples/math-tiny.yaml"),
               "--model.path=" + model.string(), "--run.dir=" + run.string(), "--run.seed=3",
               "--task.train_file=" + Src("tests/data/math_tiny.jsonl"),
               "--actor.max_new_tokens=12", "--learner.updates=" + std::to_string(kUpdates),
               "--learner.eval_every=2", "--learner.eval_k=2", "--learner.checkpoint_every=0",
               "--learner.max_seconds=0", "--learner.group_size=" + std::to_string(kGroupSize)},
              (dir / "local.log").string());
  std::optional<int> rc = local.Wait(seconds(300));
  const std::string out = ReadAll(dir / "local.log");
  const std::string learner_log = ReadAll(run / "logs" / "learner.log");
  ASSERT_TRUE(rc.has_value()) << "pmdrl local did not finish\n" << out << learner_log;
  ASSERT_EQ(*rc, 0) << out << learner_log;

  // The learner trained every update and evaluated with avg@k.
  auto rows = ReadCsv(run / "metrics.csv");
  ASSERT_GE(rows.size(), static_cast<size_t>(kUpdates + 1)) << learner_log;
  EXPECT_EQ(rows.front().at("update"), "0");
  EXPECT_EQ(rows.back().at("update"), std::to_string(kUpdates));
  ASSERT_FALSE(rows.front().at("eval_avg_at_k").empty());
  const double avg = std::stod(rows.front().at("eval_avg_at_k"));
  const double pass = std::stod(rows.front().at("eval_pass_at_k"));
  EXPECT_GE(avg, 0.0);
  EXPECT_LE(avg, pass + 1e-9) << "avg@k never exceeds pass@k";
  EXPECT_NE(learner_log.find("avg@2"), std::string::npos) << learner_log;
  EXPECT_NE(learner_log.find("task math: 32 training problems"), std::string::npos) << learner_log;

  // Actors got the tokenizer over RPC and sampled for the math task.
  const std::string actor_log = ReadAll(run / "logs" / "actor-0.log");
  EXPECT_NE(actor_log.find("task 'math', tokenizer 'hf'"), std::string::npos) << actor_log;

  // Every scored completion: decoded by the BPE tokenizer, graded by the math grader,
  // rewarded from the verdict.
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok =
      BpeTokenizer::FromFile(tiny_bpe + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t im_end = (*tok)->TokenToId("<|im_end|>");
  std::ifstream samples(run / "samples.jsonl");
  std::string line;
  int lines = 0, completions = 0, nonempty = 0, stopped_on_im_end = 0;
  while (std::getline(samples, line)) {
    ++lines;
    json j = json::parse(line);
    EXPECT_NE(j["prompt"].get<std::string>().find("<|im_start|>user\n"), std::string::npos);
    const std::string reference = j["reference"];
    ASSERT_EQ(j["completions"].size(), static_cast<size_t>(kGroupSize));
    for (const json& c : j["completions"]) {
      ++completions;
      std::vector<int32_t> ids = c["tokens"].get<std::vector<int32_t>>();
      ASSERT_FALSE(ids.empty());
      ASSERT_LE(ids.size(), 12u);
      for (int32_t id : ids) ASSERT_LT(id, (*tok)->VocabSize());
      const std::string text = c["text"];
      EXPECT_EQ(text, (*tok)->Decode(ids, /*skip_special=*/true));
      nonempty += !text.empty();
      if (c["stopped"].get<bool>()) stopped_on_im_end += ids.back() == im_end;
      GradeResult g = GradeMath(text, reference, Deadline(std::chrono::seconds(5)));
      EXPECT_EQ(c["outcome"].get<std::string>(), OutcomeOf(g.verdict)) << text;
      EXPECT_EQ(c["reward"].get<double>(), g.verdict == Verdict::kCorrect ? 1.0 : -1.0);
    }
  }
  EXPECT_EQ(lines, kUpdates);
  EXPECT_GT(nonempty, 0);
  (void)stopped_on_im_end;  // a random model rarely stops; counted for the log only

  // The verifier counted every completion it graded under a verdict.
  const std::string vprom = ReadAll(run / "metrics" / "verifier-0.prom");
  double graded = 0;
  for (const char* o : {"correct", "incorrect", "parse_error", "timeout"}) {
    graded += MetricValue(vprom, "pmdrl_verifier_completions_total", {{"outcome", o}});
  }
  EXPECT_GE(graded, kUpdates * 8.0 * kGroupSize) << vprom;
  EXPECT_GE(graded, kGroupSize * MetricValue(vprom, "pmdrl_verifier_groups_forwarded_total"));

  // The final checkpoint is a complete model directory.
  const fs::path latest = run / "checkpoints" / "latest";
  ASSERT_TRUE(fs::exists(latest));
  std::string name = ReadLine(latest);
  fs::path ckpt = fs::is_directory(latest) ? latest : run / "checkpoints" / name;
  absl::StatusOr<CausalLM> loaded = LoadModelDir(ckpt.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().vocab_size, (*tok)->VocabSize());
  absl::StatusOr<HfTokenizer> hf = LoadHfTokenizer(ckpt.string());
  ASSERT_TRUE(hf.ok()) << hf.status();

  // ... that `pmdrl generate` samples from.
  const fs::path prompts = dir / "prompts.txt";
  std::ofstream(prompts) << "What is 2 + 3?\nHow many legs do 2 cats have?\n";
  auto [gen_rc, gen_out] = RunCommand({"/bin/sh", "-c",
                                       Bin("cli/pmdrl") + " generate --model " + ckpt.string() +
                                           " --n 2 --temperature 0 --max-new-tokens 6 --seed 1 < " +
                                           prompts.string() + " 2>/dev/null"});
  ASSERT_EQ(gen_rc, 0) << gen_out;
  std::istringstream gen(gen_out);
  std::vector<json> outs;
  while (std::getline(gen, line)) outs.push_back(json::parse(line));
  ASSERT_EQ(outs.size(), 2u) << gen_out;
  EXPECT_EQ(outs[0]["prompt"], "What is 2 + 3?");
  ASSERT_EQ(outs[0]["completions"].size(), 2u);
  EXPECT_EQ(outs[0]["completions"][0], outs[0]["completions"][1]) << "greedy is deterministic";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pmdrl
