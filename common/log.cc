#include "common/log.h"

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

// Parses $PMDRL_LOG_LEVEL. Returns false (and info) for an unknown value so the
// caller can warn once the logger exists.
bool LevelFromEnv(spdlog::level::level_enum* level) {
  *level = spdlog::level::info;
  const char* env = std::getenv("PMDRL_LOG_LEVEL");
  if (env == nullptr || *env == '\0') return true;
  std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(env));
  if (name == "warn" || name == "warning") {
    *level = spdlog::level::warn;
  } else if (name == "err" || name == "error") {
    *level = spdlog::level::err;
  } else if (name == "trace") {
    *level = spdlog::level::trace;
  } else if (name == "debug") {
    *level = spdlog::level::debug;
  } else if (name == "info") {
    *level = spdlog::level::info;
  } else if (name == "critical") {
    *level = spdlog::level::critical;
  } else if (name == "off") {
    *level = spdlog::level::off;
  } else {
    return false;
  }
  return true;
}

}  // namespace

void InitLogging(std::string_view component, std::string_view id) {
  // The logger's name carries "component id" and the pattern prints it with %n, so
  // nothing the caller passes is ever interpreted as a pattern flag.
  std::string name(component.empty() ? "pmdrl" : component);
  if (!id.empty()) {
    name += ' ';
    name += id;
  }
  // Plain (uncoloured) stderr: logs usually end up in files or docker's collector.
  // The sink flushes after every line, so a crash loses nothing already logged.
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, std::move(sink));
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] [%n] %v");
  spdlog::level::level_enum level;
  const bool known = LevelFromEnv(&level);
  logger->set_level(level);
  // Not registered under its name: set_default_logger replaces the previous default
  // without the duplicate-name exception that spdlog::register_logger would throw.
  spdlog::set_default_logger(std::move(logger));
  if (!known) {
    spdlog::warn("unknown PMDRL_LOG_LEVEL '{}' (want debug|info|warn|error); using info",
                 std::getenv("PMDRL_LOG_LEVEL"));
  }
}

}  // namespace pmdrl
