#include "file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace kvtier {

namespace {
std::atomic<uint64_t> g_direct_fallbacks{0};
std::atomic<bool> g_fallback_logged{false};
}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t DirectIoFallbacks() { return g_direct_fallbacks.load(std::memory_order_relaxed); }

Result<OpenedFile> OpenForBlockIo(const std::string& path, DirectIo policy, Logger* logger) {
  const int base = O_RDWR | O_CREAT | O_CLOEXEC;
  if (policy != DirectIo::kOff) {
    const int fd = ::open(path.c_str(), base | O_DIRECT, 0600);
    if (fd >= 0) return OpenedFile{UniqueFd(fd), true};
    const int err = errno;
    if (err != EINVAL || policy == DirectIo::kRequired) {
      return Status::FromErrno(err, fmt::format("opening {} with O_DIRECT", path));
    }
    g_direct_fallbacks.fetch_add(1, std::memory_order_relaxed);
    // Once per process: the state change is logged, every occurrence is counted.
    if (!g_fallback_logged.exchange(true, std::memory_order_relaxed) && logger != nullptr) {
      logger->Log(LogLevel::kWarning, "O_DIRECT refused for {} (EINVAL): using buffered I/O (direct_io=preferred)", path);
    }
  }
  const int fd = ::open(path.c_str(), base, 0600);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("opening {}", path));
  return OpenedFile{UniqueFd(fd), false};
}

Status Preallocate(int fd, uint64_t bytes) {
  const int rc = ::fallocate(fd, 0, 0, static_cast<off_t>(bytes));
  if (rc == 0) return Status();
  const int err = errno;
  if (err == EOPNOTSUPP) return Status::Unimplemented("fallocate is not supported by this filesystem");
  return Status::FromErrno(err, fmt::format("fallocate of {} B", bytes));
}

Result<bool> PreallocateWrittenZeroes(int fd, uint64_t bytes) {
#ifdef FALLOC_FL_WRITE_ZEROES
  constexpr int kWriteZeroes = FALLOC_FL_WRITE_ZEROES;
#else
  constexpr int kWriteZeroes = 0x80;  // linux/falloc.h of Linux 6.17
#endif
  if (::fallocate(fd, kWriteZeroes, 0, static_cast<off_t>(bytes)) == 0) return true;
  const int err = errno;
  // Unknown mode bits (older kernels) or not offered for this file or device.
  if (err == EOPNOTSUPP || err == EINVAL) return false;
  return Status::FromErrno(err, fmt::format("fallocate(FALLOC_FL_WRITE_ZEROES) of {} B", bytes));
}

Status SyncData(int fd) {
  if (::fdatasync(fd) == 0) return Status();
  return Status::FromErrno(errno, "fdatasync");
}

Result<uint32_t> DirectIoOffsetAlignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx st {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0) return Status::FromErrno(errno, "statx");
  if ((st.stx_mask & STATX_DIOALIGN) == 0) return uint32_t{0};
  return st.stx_dio_offset_align;
#else
  (void)fd;
  return uint32_t{0};
#endif
}

void AlignedBuffer::Unmap::operator()(void* p) const noexcept { ::munmap(p, bytes); }

Result<AlignedBuffer> AlignedBuffer::Allocate(size_t bytes) {
  const size_t n = (bytes + 4095) / 4096 * 4096;
  if (n == 0) return Status::InvalidArgument("aligned buffer of 0 B");
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, fmt::format("mapping {} B aligned buffer", n));
  return AlignedBuffer(p, n);
}

}  // namespace kvtier
