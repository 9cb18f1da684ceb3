// UringQueue: one io_uring ring, owned by one I/O thread (submit and reap on that thread).
// Not thread-safe. liburing stays inside uring_queue.cc.
//
//   Prep*     queue a read or write (kUnavailable when the queue is full: reap, then retry;
//             never blocks)
//   Submit    hand the queued requests to the kernel
//   Reap      deliver finished requests as done(tag, Status); a short read or write is
//             resubmitted for its remainder (never reported as done), a cqe->res < 0 becomes
//             a Status through FromErrno.
//
// Buffers registered with RegisterBuffers are used by index (read_fixed / write_fixed).
// kReadv / kWritev move up to kMaxIovecs pieces of memory to or from one contiguous file
// range in one request (IORING_OP_READV / WRITEV; no registered buffers: the kernel pins the
// pages per request). The queue keeps its own copy of the pieces, so the caller's array may
// go away after Prep, and a short transfer is resubmitted for the remainder across them.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "kvtier/status.h"

namespace kvtier {

struct UringOptions {
  uint32_t queue_depth = 64;  // requests in flight at most (ring entries)

  Status Validate() const;
};

enum class IoOp : uint8_t { kRead, kWrite, kSyncData, kReadv, kWritev };

inline constexpr size_t kMaxIovecs = 4;  // pieces of one kReadv / kWritev

// One request. `buffer_index` >= 0 names a registered buffer that contains [data, data+len).
// kReadv / kWritev: `iov` (1..kMaxIovecs pieces, in file order from `offset`) replaces `data`
// and `buffer_index`; Prep sets `length` to the pieces' total. In the request a CompletionFault
// sees, `iov` and `length` describe what is still to transfer.
struct IoRequest {
  IoOp op = IoOp::kRead;
  int fd = -1;
  uint64_t offset = 0;
  std::byte* data = nullptr;
  uint32_t length = 0;
  int buffer_index = -1;
  uint64_t tag = 0;  // returned to done(); indexes the caller's own table
  std::span<const iovec> iov = {};
};

// Fault injection for tests (seeded by the caller): called with each completion before it is
// processed; returns the result to use instead of `res` (e.g. -EIO, or a shorter length).
using CompletionFault = std::function<int(const IoRequest& request, int res)>;

struct IoCounters {
  uint64_t submitted = 0;       // SQEs handed to the kernel (resubmissions included)
  uint64_t completed = 0;       // requests done (ok or not)
  uint64_t errors = 0;          // requests done with an error
  uint64_t short_resubmits = 0; // short transfers resubmitted for the remainder
  // Timing of the owning thread (steady clock; a few clock reads per Submit / Reap call):
  uint64_t submit_calls = 0;    // io_uring_submit calls
  uint64_t submit_ns = 0;       // ... time in them
  uint64_t waits = 0;           // io_uring_wait_cqe calls (Reap with min_complete > 0)
  uint64_t wait_ns = 0;         // ... time blocked in them (the thread was idle)
  uint64_t reap_calls = 0;      // Reap calls
};

class UringQueue {
 public:
  static Result<UringQueue> Create(const UringOptions& options);
  UringQueue(UringQueue&&) noexcept;
  UringQueue& operator=(UringQueue&&) noexcept;
  ~UringQueue();

  // Registers `buffers` (replacing none: once per queue). Errors through FromErrno
  // (ENOMEM when RLIMIT_MEMLOCK is too low).
  Status RegisterBuffers(std::span<const iovec> buffers);

  // Queues one request. kUnavailable when `queue_depth` requests are already in flight;
  // kInvalidArgument for a vectored request of 0 or more than kMaxIovecs pieces, or of
  // 4 GiB or more in all.
  Status Prep(const IoRequest& request);
  // Submits queued requests; returns how many the kernel took.
  Result<uint32_t> Submit();
  // Waits for at least `min_complete` finished requests (0: only what is ready), calling
  // done(tag, status) for each, and stops after `max_complete` (>= min_complete) so that the
  // caller can submit the work those completions freed before handling the rest (which
  // stay in the completion queue for the next call). Returns how many finished.
  Result<uint32_t> Reap(uint32_t min_complete, const std::function<void(uint64_t, Status)>& done,
                        uint32_t max_complete = UINT32_MAX);

  uint32_t in_flight() const;  // prepped, not yet done
  uint32_t capacity() const;
  const IoCounters& counters() const;
  void set_fault(CompletionFault fault);

 private:
  struct Impl;
  explicit UringQueue(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
