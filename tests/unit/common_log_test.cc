#include <cstdlib>
#include <regex>
#include <string>

#include "common/log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string LogWith(const char* level, std::string_view component, std::string_view id) {
  if (level == nullptr) {
    unsetenv("PMDRL_LOG_LEVEL");
  } else {
    setenv("PMDRL_LOG_LEVEL", level, 1);
  }
  testing::internal::CaptureStderr();
  InitLogging(component, id);
  spdlog::debug("debug line");
  spdlog::info("hello {}", 42);
  spdlog::warn("careful");
  spdlog::default_logger()->flush();
  return testing::internal::GetCapturedStderr();
}

TEST(LogTest, EveryLineCarriesTimeLevelComponentAndId) {
  const std::string out = LogWith(nullptr, "learner", "rank0");
  const std::regex line(
      R"(\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[info\] \[learner rank0\] hello 42\n)");
  EXPECT_TRUE(std::regex_search(out, line)) << out;
  EXPECT_THAT(out, HasSubstr("] [warning] [learner rank0] careful\n"));
  EXPECT_THAT(out, Not(HasSubstr("debug line")));  // default level: info
}

TEST(LogTest, LevelComesFromEnvironment) {
  std::string out = LogWith("debug", "actor", "actor-1");
  EXPECT_THAT(out, HasSubstr("] [debug] [actor actor-1] debug line\n"));
  out = LogWith("WARN", "actor", "actor-1");
  EXPECT_THAT(out, Not(HasSubstr("hello 42")));
  EXPECT_THAT(out, HasSubstr("careful"));
  out = LogWith("error", "actor", "actor-1");
  EXPECT_THAT(out, Not(HasSubstr("careful")));
  out = LogWith("loud", "actor", "actor-1");  // unknown: info, with a warning
  EXPECT_THAT(out, HasSubstr("PMDRL_LOG_LEVEL"));
  EXPECT_THAT(out, HasSubstr("hello 42"));
  unsetenv("PMDRL_LOG_LEVEL");
}

TEST(LogTest, ComponentTextIsNotAPattern) {
  const std::string out = LogWith(nullptr, "verifier%v", "");
  EXPECT_THAT(out, HasSubstr("] [info] [verifier%v] hello 42\n"));
  unsetenv("PMDRL_LOG_LEVEL");
}

}  // namespace
}  // namespace pmdrl
