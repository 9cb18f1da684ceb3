// What this process may pin and allocate, read up front from the kernel (RLIMIT_MEMLOCK,
// CAP_IPC_LOCK, cgroup v1/v2 memory limits, MemAvailable), so the DRAM pool refuses with a
// clear error before it touches a page.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kvtier/status.h"

namespace kvtier {

// The cgroup memory limit that binds this process and that cgroup's usage. A parent's limit
// caps its children, so every level from the process's own cgroup up to the root counts; the
// level with the least room (limit - usage) is the one reported.
struct CgroupMemory {
  std::optional<uint64_t> limit;  // nullopt = no level has a limit
  uint64_t usage = 0;
};
// `root`: where the cgroup filesystems are mounted (/sys/fs/cgroup); `self`: the text of
// /proc/self/cgroup. cgroup v2 (memory.max, memory.current along the "0::" path), else the v1
// memory controller (memory/…/memory.limit_in_bytes, memory.usage_in_bytes along the path of
// the line that lists "memory"). Missing or unreadable files are levels without a limit.
CgroupMemory ReadCgroupMemory(const std::string& root, const std::string& self);

struct MemoryBudget {
  std::optional<uint64_t> memlock_limit;  // soft RLIMIT_MEMLOCK; nullopt = unlimited
  uint64_t memlock_in_use = 0;           // VmLck of this process
  bool cap_ipc_lock = false;             // may lock beyond the rlimit
  std::optional<uint64_t> cgroup_limit;  // ReadCgroupMemory: nullopt = none found or unlimited
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
