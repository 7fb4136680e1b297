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
  EXPECT_EQ(c->learner.baseline, "mean");
}

TEST(Config, YamlThenOverride) {
  auto path = WriteTemp("learner:\n  tau: 3\n  baseline: loo\nactor:\n  verifiers: [a:1, b:2]\n");
  auto c = LoadConfig(path, {"learner.tau=0.5"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->learner.tau, 0.5);
  EXPECT_EQ(c->learner.baseline, "loo");
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
  for (std::string o : {"learner.tau=abc", "learner.tau=-1", "learner.baseline=median",
                        "actor.top_p=2", "learner.updates=1.5", "model.num_heads=3"}) {
    auto c = LoadConfig("", {o});
    ASSERT_FALSE(c.ok()) << o;
    std::string key = o.substr(0, o.find('='));
    EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status();
  }
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
