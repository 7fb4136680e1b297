#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "common/config.h"

namespace pmdrl {
namespace {

std::string WriteTemp(const std::string& text) {
  std::string path = testing::TempDir() + "/cfg_" +
                     testing::UnitTest::GetInstance()->current_test_info()->name() + ".yaml";
  std::ofstream(path) << text;
  return path;
}

TEST(Config, DefaultsAreValid) {
  auto c = LoadConfig("", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->learner.baseline, Baseline::kMean);
}

TEST(Config, YamlThenOverride) {
  auto path = WriteTemp("learner:\n  tau: 3\n  baseline: loo\nactor:\n  verifiers: [a:1, b:2]\n");
  auto c = LoadConfig(path, {"learner.tau=0.5"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->learner.tau, 0.5);
  EXPECT_EQ(c->learner.baseline, Baseline::kLeaveOneOut);
  ASSERT_EQ(c->actor.verifiers.size(), 2u);
  EXPECT_EQ(c->actor.verifiers[1], "b:2");
}

TEST(Config, UnknownKeyNamesIt) {
  auto path = WriteTemp("learner:\n  taux: 3\n");
  auto c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("learner.taux"), std::string::npos) << c.status();
  auto d = LoadConfig("", {"nosection.key=1"});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("nosection.key"), std::string::npos);
  auto e = LoadConfig(WriteTemp("bogus:\n  a: 1\n"), {});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("bogus"), std::string::npos);
}

TEST(Config, BadValueNamesKey) {
  for (std::string o :
       {"learner.tau=abc", "learner.tau=-1", "learner.baseline=median", "actor.top_p=2",
        "learner.updates=1.5", "model.num_heads=3", "actor.max_rows=0", "actor.max_rows=100000000",
        "actor.dtype=int8", "actor.max_context=5", "actor.max_context=-1", "actor.send_window=0"}) {
    auto c = LoadConfig("", {o});
    ASSERT_FALSE(c.ok()) << o;
    std::string key = o.substr(0, o.find('='));
    EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status();
  }
}

TEST(Config, LossKeys) {
  auto d = LoadConfig("", {});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->learner.loss, LossKind::kPmdMean);
  EXPECT_DOUBLE_EQ(d->learner.clip_eps, 0.2);
  EXPECT_DOUBLE_EQ(d->learner.seq_clip_eps, 4e-4);
  EXPECT_EQ(d->learner.importance_weights, ImportanceWeights::kNone);
  EXPECT_DOUBLE_EQ(d->learner.is_cap, 2.0);
  for (std::string loss : {"pmd_mean", "pmd_part", "grpo", "gspo"}) {
    auto c = LoadConfig("", {"learner.loss=" + loss});
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(Name(c->learner.loss), loss);
  }
  auto c = LoadConfig("", {"learner.clip_eps=0.1", "learner.seq_clip_eps=0.001",
                           "learner.importance_weights=truncated", "learner.is_cap=3",
                           "learner.old_logprobs=recompute"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->learner.clip_eps, 0.1);
  EXPECT_DOUBLE_EQ(c->learner.seq_clip_eps, 0.001);
  EXPECT_EQ(c->learner.importance_weights, ImportanceWeights::kTruncated);
  EXPECT_DOUBLE_EQ(c->learner.is_cap, 3);
  for (std::string o :
       {"learner.loss=ppo", "learner.clip_eps=0", "learner.clip_eps=1", "learner.seq_clip_eps=-0.1",
        "learner.importance_weights=full", "learner.is_cap=0"}) {
    auto bad = LoadConfig("", {o});
    ASSERT_FALSE(bad.ok()) << o;
    EXPECT_NE(bad.status().message().find(o.substr(0, o.find('='))), std::string::npos)
        << bad.status();
  }
  // pmd_part, grpo and gspo compare a completion with the others of its group.
  auto one = LoadConfig("", {"learner.loss=grpo", "learner.group_size=1"});
  ASSERT_FALSE(one.ok());
  EXPECT_NE(one.status().message().find("learner.group_size"), std::string::npos);
  EXPECT_TRUE(LoadConfig("", {"learner.group_size=1"}).ok());
  // Importance weights correct the actor's samples towards the recomputed pi_old.
  auto twice = LoadConfig("", {"learner.importance_weights=truncated"});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("learner.importance_weights"), std::string::npos);
  EXPECT_NE(ConfigHelp().find("learner.importance_weights"), std::string::npos);
}

// The enumerated keys are parsed once, when loaded, and print back as they were spelled.
TEST(Config, EnumKeysParseAndPrintBack) {
  EXPECT_EQ(*ParseLossKind("pmd_mean"), LossKind::kPmdMean);
  EXPECT_EQ(*ParseLossKind("pmd_part"), LossKind::kPmdPart);
  EXPECT_EQ(*ParseLossKind("grpo"), LossKind::kGrpo);
  EXPECT_EQ(*ParseLossKind("gspo"), LossKind::kGspo);
  EXPECT_EQ(*ParseBaseline("mean"), Baseline::kMean);
  EXPECT_EQ(*ParseBaseline("loo"), Baseline::kLeaveOneOut);
  EXPECT_EQ(*ParseLengthNorm("token"), LengthNorm::kTokens);
  EXPECT_EQ(*ParseLengthNorm("max"), LengthNorm::kMax);
  EXPECT_EQ(*ParseOldLogprobs("actor"), OldLogprobs::kActor);
  EXPECT_EQ(*ParseOldLogprobs("recompute"), OldLogprobs::kRecompute);
  EXPECT_EQ(*ParseImportanceWeights("none"), ImportanceWeights::kNone);
  EXPECT_EQ(*ParseImportanceWeights("truncated"), ImportanceWeights::kTruncated);
  EXPECT_EQ(Name(LossKind::kGspo), "gspo");
  EXPECT_EQ(Name(Baseline::kLeaveOneOut), "loo");
  EXPECT_EQ(Name(LengthNorm::kTokens), "token");
  EXPECT_EQ(Name(OldLogprobs::kRecompute), "recompute");
  EXPECT_EQ(Name(ImportanceWeights::kTruncated), "truncated");
  EXPECT_FALSE(ParseBaseline("median").ok());
  EXPECT_FALSE(ParseLengthNorm("tokens").ok());
  EXPECT_FALSE(ParseLossKind("PMD_MEAN").ok());  // exact spellings only
  absl::StatusOr<LossKind> bad = ParseLossKind("ppo");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "config key 'learner.loss': bad value 'ppo' (want one of: pmd_mean, pmd_part, grpo, "
            "gspo)");

  auto c =
      LoadConfig("", {"learner.loss=gspo", "learner.baseline=loo", "learner.length_norm=max",
                      "learner.old_logprobs=recompute", "learner.importance_weights=truncated"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->learner.loss, LossKind::kGspo);
  EXPECT_EQ(c->learner.length_norm, LengthNorm::kMax);
  EXPECT_EQ(c->learner.old_logprobs, OldLogprobs::kRecompute);
  const std::string yaml = ConfigToYaml(*c);
  for (const char* line : {"  loss: gspo\n", "  baseline: loo\n", "  length_norm: max\n",
                           "  old_logprobs: recompute\n", "  importance_weights: truncated\n"}) {
    EXPECT_NE(yaml.find(line), std::string::npos) << line << yaml;
  }
  auto d = LoadConfig(WriteTemp(yaml), {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(ConfigToYaml(*d), yaml);
  const std::string defaults = ConfigToYaml(*LoadConfig("", {}));
  for (const char* line : {"  loss: pmd_mean\n", "  baseline: mean\n", "  length_norm: token\n",
                           "  old_logprobs: actor\n", "  importance_weights: none\n"}) {
    EXPECT_NE(defaults.find(line), std::string::npos) << line << defaults;
  }
  EXPECT_NE(ConfigHelp().find("--learner.loss [pmd_mean]"), std::string::npos);

  // A bad value in a file names the key and the file.
  auto e = LoadConfig(WriteTemp("learner:\n  length_norm: tokens\n"), {});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("config key 'learner.length_norm': bad value 'tokens' "
                                      "(want one of: token, max)"),
            std::string::npos)
      << e.status();
}

TEST(Config, FlagsParseBothForms) {
  const char* argv[] = {"prog", "--learner.tau=2", "--learner.lr", "0.01", "pos"};
  std::vector<std::string> positional;
  auto c = ConfigFromArgs(5, const_cast<char**>(argv), &positional);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->learner.tau, 2);
  EXPECT_DOUBLE_EQ(c->learner.lr, 0.01);
  ASSERT_EQ(positional.size(), 1u);
}

TEST(Config, YamlRoundTrip) {
  auto c = LoadConfig("", {"learner.tau=0.25", "actor.verifiers=x:1,y:2", "run.dir=/tmp/r"});
  ASSERT_TRUE(c.ok());
  auto path = WriteTemp(ConfigToYaml(*c));
  auto d = LoadConfig(path, {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(ConfigToYaml(*c), ConfigToYaml(*d));
  EXPECT_NE(ConfigHelp().find("learner.tau"), std::string::npos);
}

}  // namespace
}  // namespace pmdrl
