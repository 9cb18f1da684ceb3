// What this process may pin and allocate, read up front from the kernel (RLIMIT_MEMLOCK,
// CAP_IPC_LOCK, cgroup v1/v2 memory limits, MemAvailable), so the DRAM pool refuses with a
// clear error before it touches a page.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kvtier/status.h"

namespace kvtier {

struct MemoryBudget {
  std::optional<uint64_t> memlock_limit;  // soft RLIMIT_MEMLOCK; nullopt = unlimited
  uint64_t memlock_in_use = 0;           // VmLck of this process
  bool cap_ipc_lock = false;             // may lock beyond the rlimit
  std::optional<uint64_t> cgroup_limit;  // nullopt = none found or unlimited
  uint64_t cgroup_usage = 0;
  uint64_t mem_available = 0;            // /proc/meminfo MemAvailable

  static MemoryBudget Read();
  // kPermissionDenied when `bytes` cannot be mlocked (says which limit and how to raise it).
  Status CheckLockable(uint64_t bytes) const;
  // kExhausted when `bytes` exceeds the cgroup's room or the machine's available memory.
  Status CheckAllocatable(uint64_t bytes) const;
  std::string ToString() const;
};

}  // namespace kvtier
