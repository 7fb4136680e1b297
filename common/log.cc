#include "common/log.h"

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/utf8.h"
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

void AppendHexEscape(unsigned char c, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  *out += "\\x";
  *out += kHex[c >> 4];
  *out += kHex[c & 0xF];
}

}  // namespace

std::string QuoteUntrusted(std::string_view text, size_t max) {
  std::string out = "\"";
  size_t i = 0;
  while (i < text.size()) {
    size_t bad = 0;
    const size_t len = Utf8SequenceLength(text, i, &bad);
    // An invalid byte is escaped on its own; a valid sequence is kept or cut whole.
    const size_t step = len > 0 ? len : 1;
    if (i + step > max) break;
    const auto c = static_cast<unsigned char>(text[i]);
    if (len == 1) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          if (c < 0x20 || c == 0x7F) {
            AppendHexEscape(c, &out);
          } else {
            out += static_cast<char>(c);
          }
      }
    } else if (len == 0 ||
               (len == 2 && c == 0xC2 && static_cast<unsigned char>(text[i + 1]) <= 0x9F)) {
      // Invalid UTF-8, or a C1 control (U+0080..U+009F: CSI and friends) in UTF-8.
      for (size_t k = 0; k < step; ++k) {
        AppendHexEscape(static_cast<unsigned char>(text[i + k]), &out);
      }
    } else {
      out.append(text.substr(i, len));
    }
    i += step;
  }
  out += '"';
  if (i < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

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
