#include <chrono>
#include <cstdio>
#include <mutex>

#include "kvtier/clock.h"
#include "kvtier/logger.h"
#include "kvtier/types.h"

namespace kvtier {

std::string_view TierName(TierKind t) {
  switch (t) {
    case TierKind::kHbm: return "hbm";
    case TierKind::kDram: return "dram";
    case TierKind::kNvme: return "nvme";
  }
  return "unknown";
}

Tick SteadyClock::Now() const {
  return Tick{static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count())};
}

SteadyClock* SteadyClock::Instance() {
  static SteadyClock clock;
  return &clock;
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "D";
    case LogLevel::kInfo: return "I";
    case LogLevel::kWarning: return "W";
    case LogLevel::kError: return "E";
  }
  return "?";
}

void StderrLogger::Write(LogLevel level, std::string_view message) {
  if (level < min_level_) return;
  static std::mutex mu;  // keeps lines whole when several threads log
  std::lock_guard lock(mu);
  std::fprintf(stderr, "kvtier[%.*s] %.*s\n", 1, LogLevelName(level).data(), static_cast<int>(message.size()),
               message.data());
}

StderrLogger* StderrLogger::Default() {
  static StderrLogger logger(LogLevel::kInfo);
  return &logger;
}

}  // namespace kvtier
