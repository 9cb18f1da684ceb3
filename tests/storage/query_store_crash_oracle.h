// What the kill-during-ingest child writes, so the parent can check every entry it finds.
#pragma once

#include <string>

#include "query_store/query_store.h"
#include "query_store_testing.h"

namespace kvtier::testing {

inline constexpr uint32_t kCrashDim = 48;

inline QueryEntry CrashEntry(uint64_t i) {
  QueryEntry e;
  e.id = "e" + std::to_string(i);
  e.query = "query " + std::to_string(i);
  e.response = "response " + std::to_string(i) + " " + std::string(64 + i % 200, 'r');
  e.embedding = RandomUnit(kCrashDim, 1'000'000 + i);
  return e;
}

}  // namespace kvtier::testing
