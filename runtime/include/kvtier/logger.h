// Logger: the injected sink for kvtier's log lines. Formats are checked at compile time.
// Nothing is logged per block on a hot path; state changes are logged once and counted.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace kvtier {

enum class LogLevel : uint8_t { kDebug, kInfo, kWarning, kError };
std::string_view LogLevelName(LogLevel level);

class Logger {  // implementations are thread-safe
 public:
  virtual ~Logger() = default;
  virtual void Write(LogLevel level, std::string_view message) = 0;

  template <class... Args>
  void Log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
    Write(level, fmt::format(format, std::forward<Args>(args)...));
  }
};

// Writes "kvtier[W] message" lines to stderr, at or above `min_level`.
class StderrLogger final : public Logger {
 public:
  explicit StderrLogger(LogLevel min_level = LogLevel::kInfo) : min_level_(min_level) {}
  void Write(LogLevel level, std::string_view message) override;
  // The logger used when an options struct names none.
  static StderrLogger* Default();

 private:
  LogLevel min_level_;
};

}  // namespace kvtier
