#include "memory_budget.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string_view>

#include "pinner.h"

namespace kvtier {
namespace {

std::optional<uint64_t> ReadNumberFile(const std::string& path) {
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

// The cgroup path of the /proc/self/cgroup line whose controller list holds `controller`
// ("" = the v2 line, "0::path").
std::optional<std::string> CgroupPath(const std::string& self, std::string_view controller) {
  std::istringstream in(self);
  std::string line;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string_view list = std::string_view(line).substr(a + 1, b - a - 1);
    bool match = controller.empty() ? list.empty() && line.compare(0, a, "0") == 0 : false;
    for (size_t pos = 0; !controller.empty() && pos <= list.size();) {
      const size_t comma = std::min(list.find(',', pos), list.size());
      if (list.substr(pos, comma - pos) == controller) match = true;
      pos = comma + 1;
    }
    if (match) return line.substr(b + 1);
  }
  return std::nullopt;
}

// Along `base` + `path` and every ancestor up to `base`: the level with a limit and the least room.
CgroupMemory LeastRoom(const std::string& base, const std::string& path, const char* limit_file,
                       const char* usage_file) {
  CgroupMemory best;
  std::string dir = path;
  while (!dir.empty() && dir.back() == '/') dir.pop_back();
  for (;;) {
    const std::string at = base + dir;
    if (const auto limit = ReadNumberFile(at + "/" + limit_file)) {
      const uint64_t usage = ReadNumberFile(at + "/" + usage_file).value_or(0);
      const uint64_t room = *limit > usage ? *limit - usage : 0;
      const uint64_t best_room = best.limit ? (*best.limit > best.usage ? *best.limit - best.usage : 0) : UINT64_MAX;
      if (room < best_room) best = CgroupMemory{limit, usage};
    }
    if (dir.empty()) break;
    dir.resize(dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  }
  return best;
}

std::string ReadText(const char* path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

CgroupMemory ReadCgroupMemory(const std::string& root, const std::string& self) {
  if (const auto v2 = CgroupPath(self, "")) {
    const CgroupMemory m = LeastRoom(root, *v2, "memory.max", "memory.current");
    if (m.limit) return m;
  }
  if (const auto v1 = CgroupPath(self, "memory")) {
    return LeastRoom(root + "/memory", *v1, "memory.limit_in_bytes", "memory.usage_in_bytes");
  }
  return {};
}

MemoryBudget MemoryBudget::Read() {
  MemoryBudget b;
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) b.memlock_limit = rl.rlim_cur;
  b.memlock_in_use = ReadProcKb("/proc/self/status", "VmLck");
  b.cap_ipc_lock = HasCapIpcLock();
  const CgroupMemory cg = ReadCgroupMemory("/sys/fs/cgroup", ReadText("/proc/self/cgroup"));
  b.cgroup_limit = cg.limit;
  b.cgroup_usage = cg.usage;
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
