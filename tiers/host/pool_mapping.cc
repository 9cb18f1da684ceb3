#include "pool_mapping.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace kvtier {

std::string_view HugePagesName(HugePages h) {
  switch (h) {
    case HugePages::kOff: return "off";
    case HugePages::kTransparent: return "transparent";
    case HugePages::kHugetlb: return "hugetlb";
  }
  return "?";
}

Result<HugePages> ParseHugePages(std::string_view name) {
  if (name == "on") return HugePages::kTransparent;
  for (HugePages h : {HugePages::kOff, HugePages::kTransparent, HugePages::kHugetlb}) {
    if (name == HugePagesName(h)) return h;
  }
  return Status::InvalidArgument(fmt::format("huge pages '{}' (expected off, transparent (or on) or hugetlb)", name));
}

Result<PoolMapping> PoolMapping::Map(size_t bytes, HugePages backing) {
  if (bytes == 0) return Status::InvalidArgument("mapping 0 bytes");
  if (backing == HugePages::kHugetlb) {
    const size_t n = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    // MAP_POPULATE: without it a short hugetlbfs pool shows up as SIGBUS at first touch.
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      return Status(err == ENOMEM || err == EINVAL ? StatusCode::kExhausted : StatusCode::kIoError,
                    fmt::format("mmap(MAP_HUGETLB) of {} B: {} (is vm.nr_hugepages large enough?)", n, std::strerror(err)));
    }
    return PoolMapping(p, n, backing);
  }
  // Over-map by one huge page and trim, so the pool starts on a 2 MiB boundary: a huge page
  // can only back a whole aligned 2 MiB of the range.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t n = (bytes + page - 1) / page * page;
  void* raw = mmap(nullptr, n + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return Status::FromErrno(errno, fmt::format("mmap of {} B", n + kHugePageBytes));
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (aligned > start) (void)munmap(raw, aligned - start);
  const uintptr_t end = start + n + kHugePageBytes;
  if (end > aligned + n) (void)munmap(reinterpret_cast<void*>(aligned + n), end - (aligned + n));
  void* p = reinterpret_cast<void*>(aligned);
  PoolMapping m(p, n, backing);
  // Before the first touch, or the first faults take 4 KiB pages. Advisory: a kernel without
  // THP refuses (EINVAL) and the pool works on 4 KiB pages; HugePageBytesOf() tells.
  (void)madvise(p, n, backing == HugePages::kOff ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
  return m;
}

void PoolMapping::Unmap::operator()(void* p) const noexcept {
  if (p != nullptr && munmap(p, bytes) != 0) {
    CheckFailed(__FILE__, __LINE__, "munmap", "the DRAM pool mapping could not be unmapped");
  }
}

Result<uint64_t> HugePageBytesOf(const void* ptr, size_t bytes) {
  std::FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f == nullptr) return Status(StatusCode::kUnavailable, fmt::format("/proc/self/smaps: {}", std::strerror(errno)));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(ptr), hi = lo + bytes;
  uint64_t total = 0;
  uint64_t overlap = 0;  // bytes of the current mapping inside [lo, hi); 0 = not ours
  uint64_t in_mapping = 0;
  char line[512];
  auto flush = [&] { total += std::min(in_mapping, overlap); };
  while (std::fgets(line, sizeof line, f) != nullptr) {
    uintptr_t a = 0, b = 0;
    char colon = 0;
    uint64_t kb = 0;
    char key[64];
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      flush();
      in_mapping = 0;
      overlap = (a < hi && b > lo) ? std::min(b, hi) - std::max(a, lo) : 0;
    } else if (overlap != 0 && std::sscanf(line, "%63[A-Za-z_]%c %" SCNu64 " kB", key, &colon, &kb) == 3 && colon == ':') {
      if (std::strcmp(key, "AnonHugePages") == 0 || std::strcmp(key, "Private_Hugetlb") == 0 ||
          std::strcmp(key, "Shared_Hugetlb") == 0) {
        in_mapping += kb * 1024;
      }
    }
  }
  flush();
  std::fclose(f);
  return total;
}

}  // namespace kvtier
