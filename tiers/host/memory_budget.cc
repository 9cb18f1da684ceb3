#include "memory_budget.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string_view>

#include "pinner.h"

namespace kvtier {
namespace {

std::optional<uint64_t> ReadNumberFile(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return std::nullopt;
  try {
    const uint64_t v = std::stoull(s);
    if (v >= (1ull << 62)) return std::nullopt;  // cgroup v1 spells "unlimited" as a huge number
    return v;
  } catch (...) {
    return std::nullopt;
  }
}

// A "Name:   value kB" line of a /proc file, in bytes; 0 when absent.
uint64_t ReadProcKb(const char* path, std::string_view name) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) == 0 && line.size() > name.size() && line[name.size()] == ':') {
      std::istringstream fields(line.substr(name.size() + 1));
      uint64_t kb = 0;
      fields >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

bool HasCapIpcLock() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      const uint64_t caps = std::stoull(line.substr(7), nullptr, 16);
      return (caps >> 14) & 1u;  // CAP_IPC_LOCK = 14
    }
  }
  return false;
}

std::string Gib(uint64_t b) { return fmt::format("{:.2f} GiB", double(b) / double(1ull << 30)); }

}  // namespace

MemoryBudget MemoryBudget::Read() {
  MemoryBudget b;
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) b.memlock_limit = rl.rlim_cur;
  b.memlock_in_use = ReadProcKb("/proc/self/status", "VmLck");
  b.cap_ipc_lock = HasCapIpcLock();
  if (auto v2 = ReadNumberFile("/sys/fs/cgroup/memory.max")) {
    b.cgroup_limit = v2;
    b.cgroup_usage = ReadNumberFile("/sys/fs/cgroup/memory.current").value_or(0);
  } else if (auto v1 = ReadNumberFile("/sys/fs/cgroup/memory/memory.limit_in_bytes")) {
    b.cgroup_limit = v1;
    b.cgroup_usage = ReadNumberFile("/sys/fs/cgroup/memory/memory.usage_in_bytes").value_or(0);
  }
  b.mem_available = ReadProcKb("/proc/meminfo", "MemAvailable");
  return b;
}

Status MemoryBudget::CheckLockable(uint64_t bytes) const {
  if (cap_ipc_lock || !memlock_limit) return Status();
  const uint64_t room = *memlock_limit > memlock_in_use ? *memlock_limit - memlock_in_use : 0;
  if (bytes > room) {
    return Status::PermissionDenied(fmt::format(
        "cannot pin {} of DRAM: the memlock limit (ulimit -l) is {} with {} locked already; raise it "
        "(limits.conf memlock, systemd LimitMEMLOCK=, docker --ulimit memlock=-1), grant CAP_IPC_LOCK, "
        "or allow unpinned memory",
        Gib(bytes), Gib(*memlock_limit), Gib(memlock_in_use)));
  }
  return Status();
}

Status MemoryBudget::CheckAllocatable(uint64_t bytes) const {
  if (cgroup_limit) {
    const uint64_t room = *cgroup_limit > cgroup_usage ? *cgroup_limit - cgroup_usage : 0;
    if (bytes > room) {
      return Status::Exhausted(fmt::format("a {} DRAM pool does not fit the cgroup memory limit ({} used of {})",
                                           Gib(bytes), Gib(cgroup_usage), Gib(*cgroup_limit)));
    }
  }
  if (mem_available != 0 && bytes > mem_available) {
    return Status::Exhausted(
        fmt::format("a {} DRAM pool exceeds the machine's available memory ({})", Gib(bytes), Gib(mem_available)));
  }
  return Status();
}

std::string MemoryBudget::ToString() const {
  return fmt::format("memlock {} (in use {}), CAP_IPC_LOCK {}, cgroup limit {} (used {}), MemAvailable {}",
                     memlock_limit ? Gib(*memlock_limit) : "unlimited", Gib(memlock_in_use), cap_ipc_lock ? "yes" : "no",
                     cgroup_limit ? Gib(*cgroup_limit) : "none", Gib(cgroup_usage), Gib(mem_available));
}

Status MlockPinner::Pin(void* ptr, size_t bytes) {
  if (mlock(ptr, bytes) != 0) return Status::FromErrno(errno, fmt::format("mlock of {} B", bytes));
  return Status();
}

void MlockPinner::Unpin(void* ptr, size_t bytes) noexcept { (void)munlock(ptr, bytes); }

}  // namespace kvtier
