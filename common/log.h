// Process-wide logging setup. Every process calls InitLogging once at start-up; after
// that, spdlog's free functions (spdlog::info, spdlog::warn, ...) write one line per
// event to stderr, each stamped with time, level, component and instance id so that
// the interleaved logs of a cluster stay attributable.
#ifndef PMDRL_COMMON_LOG_H_
#define PMDRL_COMMON_LOG_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "spdlog/fmt/fmt.h"

namespace pmdrl {

// Replaces spdlog's default logger with one that writes to stderr as
//   [2026-11-26 01:02:03.456] [info] [learner rank0] message
// `component` is the process kind ("learner", "actor", "verifier", ...), `id` tells
// instances apart ("rank0", "actor-3"); an empty id leaves just the component.
// The level comes from $PMDRL_LOG_LEVEL (trace|debug|info|warn|error|critical|off,
// case-insensitive; default info; an unknown value falls back to info with a warning).
// Safe to call again (tests, re-configuration): the newest call wins.
void InitLogging(std::string_view component, std::string_view id);

// `text` from an untrusted peer (an RPC field, an error message echoing one), made safe
// to put in a log line: double-quoted, at most `max` of its bytes (cut on a UTF-8
// boundary, then marked `"..."... (N bytes)` with the full length), with quotes,
// backslashes, control characters (C0, DEL, C1) and invalid UTF-8 escaped (\n, \xNN),
// so a peer can neither forge log lines, drive the terminal, nor flood the log.
std::string QuoteUntrusted(std::string_view text, size_t max = 200);
// Debian's Abseil keeps absl::string_view distinct (status messages are one), so each
// string type gets an exact overload rather than an ambiguous conversion.
inline std::string QuoteUntrusted(absl::string_view text, size_t max = 200) {
  return QuoteUntrusted(std::string_view(text.data(), text.size()), max);
}
inline std::string QuoteUntrusted(const std::string& text, size_t max = 200) {
  return QuoteUntrusted(std::string_view(text), max);
}
inline std::string QuoteUntrusted(const char* text, size_t max = 200) {
  return QuoteUntrusted(std::string_view(text), max);
}

}  // namespace pmdrl

// Debian's Abseil keeps absl::string_view distinct from std::string_view, so status
// messages need a formatter of their own to be logged.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};

#endif  // PMDRL_COMMON_LOG_H_
