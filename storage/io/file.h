// Files for the NVMe tier: an owning fd, O_DIRECT opening under a policy, preallocation,
// and page-aligned buffers for O_DIRECT. No liburing here (see uring_queue.h).
//
// UniqueFd and AlignedBuffer are move-only and externally synchronized.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kvtier/logger.h"
#include "kvtier/status.h"

namespace kvtier {

// An open file descriptor, closed exactly once.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

enum class DirectIo : uint8_t {
  kRequired,   // open fails when the filesystem refuses O_DIRECT (e.g. tmpfs)
  kPreferred,  // falls back to buffered I/O: logged once and counted in direct_io_fallbacks
  kOff,        // buffered I/O
};

struct OpenedFile {
  UniqueFd fd;
  bool direct = false;  // opened with O_DIRECT
};

// Counts O_DIRECT fallbacks process-wide (every fallback, whichever file).
uint64_t DirectIoFallbacks();

// Opens (creating, mode 0600) `path` read-write under `policy`. A kPreferred fallback
// logs once per process through `logger` (may be null) and counts.
Result<OpenedFile> OpenForBlockIo(const std::string& path, DirectIo policy, Logger* logger);

// Allocates `bytes` of real blocks for `fd` (fallocate, mode 0): ENOSPC -> kNoSpace.
// Filesystems without fallocate -> kUnimplemented.
Status Preallocate(int fd, uint64_t bytes);

// Makes [0, bytes) of `fd` zeroed, *written* extents with fallocate(FALLOC_FL_WRITE_ZEROES)
// (Linux 6.17+; ext4 and block devices offer it only where the device zeroes by unmapping, so
// it is fast or refused). Then the first direct write into each block is a plain overwrite:
// plain fallocate leaves unwritten extents, which ext4 converts (a journaled extent-tree
// change) at the end of the first write into each. true = done; false = not offered here
// (older kernel, filesystem or device: nothing changed, use Preallocate); errors otherwise
// (ENOSPC -> kNoSpace).
Result<bool> PreallocateWrittenZeroes(int fd, uint64_t bytes);

// fdatasync, with errno converted.
Status SyncData(int fd);

// The file offset alignment direct I/O needs on `fd`'s file (statx STATX_DIOALIGN,
// dio_offset_align: typically the device's logical block size, 512 B). 0 when the kernel
// or filesystem does not say (statx without STATX_DIOALIGN, before Linux 6.1) or the file
// does not support direct I/O. Errors through FromErrno.
Result<uint32_t> DirectIoOffsetAlignment(int fd);

// A zeroed region aligned to the page size (mmap), for O_DIRECT I/O. Allocated once per
// component, never per request.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  static Result<AlignedBuffer> Allocate(size_t bytes);  // rounded up to 4096
  std::byte* data() const { return static_cast<std::byte*>(ptr_.get()); }
  size_t size() const { return ptr_ ? size_ : 0; }

 private:
  struct Unmap {
    size_t bytes;
    void operator()(void* p) const noexcept;
  };
  AlignedBuffer(void* p, size_t n) : ptr_(p, Unmap{n}), size_(n) {}
  std::unique_ptr<void, Unmap> ptr_;
  size_t size_ = 0;
};

}  // namespace kvtier
