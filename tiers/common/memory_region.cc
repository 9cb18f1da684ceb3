#include "memory_region.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace kvtier {

Result<MemoryRegion> MemoryRegion::Map(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("mapping 0 bytes");
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t n = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, fmt::format("mmap of {} B", n));
  return MemoryRegion(p, n);
}

void MemoryRegion::Unmap::operator()(void* p) const noexcept {
  if (p != nullptr && munmap(p, bytes) != 0) {
    CheckFailed(__FILE__, __LINE__, "munmap", "a kvtier memory region could not be unmapped");
  }
}

}  // namespace kvtier
