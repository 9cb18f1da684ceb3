#include "uring_queue.h"

#include <fmt/format.h>
#include <liburing.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <limits>
#include <vector>

namespace kvtier {

namespace {
uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}
bool Vectored(IoOp op) { return op == IoOp::kReadv || op == IoOp::kWritev; }
const char* OpName(IoOp op) {
  switch (op) {
    case IoOp::kRead: return "read";
    case IoOp::kWrite: return "write";
    case IoOp::kSyncData: return "fdatasync";
    case IoOp::kReadv: return "readv";
    case IoOp::kWritev: return "writev";
  }
  return "?";
}
}  // namespace

struct UringQueue::Impl {
  io_uring ring{};
  bool ring_ok = false;
  uint32_t depth = 0;
  // The in-flight table: cqe user_data is an index here, never a pointer. Fixed size.
  struct Op {
    IoRequest req;         // the remaining part (advanced on short transfers)
    bool busy = false;
    bool queued = false;   // waiting for an SQE (a resubmission that found the SQ full)
    // Vectored requests: the queue's own copy of the pieces; req.iov views
    // [iov_first, iov_count), the first one trimmed by what a short transfer already moved.
    std::array<iovec, kMaxIovecs> iov{};
    uint32_t iov_first = 0;
    uint32_t iov_count = 0;
  };
  std::vector<Op> ops;
  std::vector<uint32_t> free_ops;
  std::vector<uint32_t> retry;  // ops needing an SQE
  uint32_t busy = 0;
  IoCounters counters;
  CompletionFault fault;

  ~Impl() {
    if (ring_ok) io_uring_queue_exit(&ring);
  }

  // A short transfer of `n` bytes (0 < n < op.req.length): the rest is what is left to do.
  static void Advance(Op& op, uint32_t n) {
    op.req.offset += n;
    op.req.length -= n;
    if (!Vectored(op.req.op)) {
      op.req.data += n;
      return;
    }
    uint64_t left = n;
    while (op.iov_first < op.iov_count && left >= op.iov[op.iov_first].iov_len) {
      left -= op.iov[op.iov_first].iov_len;
      ++op.iov_first;
    }
    KVT_CHECK(op.iov_first < op.iov_count);  // n < length: some bytes are left
    iovec& v = op.iov[op.iov_first];
    v.iov_base = static_cast<std::byte*>(v.iov_base) + left;
    v.iov_len -= left;
    op.req.iov = {op.iov.data() + op.iov_first, op.iov_count - op.iov_first};
  }

  bool PrepSqe(uint32_t index) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == nullptr) return false;
    const IoRequest& r = ops[index].req;
    switch (r.op) {
      case IoOp::kRead:
        if (r.buffer_index >= 0) {
          io_uring_prep_read_fixed(sqe, r.fd, r.data, r.length, r.offset, r.buffer_index);
        } else {
          io_uring_prep_read(sqe, r.fd, r.data, r.length, r.offset);
        }
        break;
      case IoOp::kWrite:
        if (r.buffer_index >= 0) {
          io_uring_prep_write_fixed(sqe, r.fd, r.data, r.length, r.offset, r.buffer_index);
        } else {
          io_uring_prep_write(sqe, r.fd, r.data, r.length, r.offset);
        }
        break;
      case IoOp::kSyncData:
        io_uring_prep_fsync(sqe, r.fd, IORING_FSYNC_DATASYNC);
        break;
      case IoOp::kReadv:
        io_uring_prep_readv(sqe, r.fd, r.iov.data(), static_cast<unsigned>(r.iov.size()), r.offset);
        break;
      case IoOp::kWritev:
        io_uring_prep_writev(sqe, r.fd, r.iov.data(), static_cast<unsigned>(r.iov.size()), r.offset);
        break;
    }
    io_uring_sqe_set_data64(sqe, index);
    return true;
  }
};

Status UringOptions::Validate() const {
  if (queue_depth == 0 || queue_depth > 4096) {
    return Status::InvalidArgument(fmt::format("uring queue depth {} (1..4096)", queue_depth));
  }
  return Status();
}

UringQueue::UringQueue(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UringQueue::UringQueue(UringQueue&&) noexcept = default;
UringQueue& UringQueue::operator=(UringQueue&&) noexcept = default;
UringQueue::~UringQueue() = default;

Result<UringQueue> UringQueue::Create(const UringOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER;
  int rc = io_uring_queue_init_params(options.queue_depth, &impl->ring, &params);
  if (rc == -EINVAL) {  // kernels before 6.0 lack SINGLE_ISSUER
    params = {};
    rc = io_uring_queue_init_params(options.queue_depth, &impl->ring, &params);
  }
  if (rc < 0) return Status::FromErrno(-rc, "io_uring_queue_init");
  impl->ring_ok = true;
  impl->depth = options.queue_depth;
  impl->ops.resize(options.queue_depth);
  impl->free_ops.reserve(options.queue_depth);
  for (uint32_t i = options.queue_depth; i > 0; --i) impl->free_ops.push_back(i - 1);
  return UringQueue(std::move(impl));
}

Status UringQueue::RegisterBuffers(std::span<const iovec> buffers) {
  const int rc = io_uring_register_buffers(&impl_->ring, buffers.data(), static_cast<unsigned>(buffers.size()));
  if (rc < 0) return Status::FromErrno(-rc, fmt::format("registering {} buffers with io_uring", buffers.size()));
  return Status();
}

Status UringQueue::Prep(const IoRequest& request) {
  Impl& m = *impl_;
  uint64_t total = 0;
  if (Vectored(request.op)) {
    if (request.iov.empty() || request.iov.size() > kMaxIovecs) {
      return Status::InvalidArgument(fmt::format("{} of {} pieces (1..{})", OpName(request.op), request.iov.size(), kMaxIovecs));
    }
    for (const iovec& v : request.iov) total += v.iov_len;
    if (total > std::numeric_limits<uint32_t>::max()) {
      return Status::InvalidArgument(fmt::format("{} of {} B (under 4 GiB)", OpName(request.op), total));
    }
  }
  if (m.free_ops.empty()) return Status::Unavailable("io_uring queue full: reap and retry");
  const uint32_t index = m.free_ops.back();
  Impl::Op& op = m.ops[index];
  op = Impl::Op{};
  op.req = request;
  op.busy = true;
  op.req.iov = {};
  if (Vectored(request.op)) {
    std::copy(request.iov.begin(), request.iov.end(), op.iov.begin());
    op.iov_count = static_cast<uint32_t>(request.iov.size());
    op.req.iov = {op.iov.data(), op.iov_count};
    op.req.length = static_cast<uint32_t>(total);
    op.req.data = nullptr;
    op.req.buffer_index = -1;
  }
  if (!m.PrepSqe(index)) {  // cannot happen while ops <= ring entries, but never block
    m.ops[index].busy = false;
    return Status::Unavailable("io_uring SQ full: submit and retry");
  }
  m.free_ops.pop_back();
  ++m.busy;
  return Status();
}

Result<uint32_t> UringQueue::Submit() {
  Impl& m = *impl_;
  while (!m.retry.empty() && m.PrepSqe(m.retry.back())) {
    m.ops[m.retry.back()].queued = false;
    m.retry.pop_back();
  }
  const uint64_t t0 = NowNs();
  const int rc = io_uring_submit(&m.ring);
  m.counters.submit_ns += NowNs() - t0;
  ++m.counters.submit_calls;
  if (rc < 0) return Status::FromErrno(-rc, "io_uring_submit");
  m.counters.submitted += static_cast<uint64_t>(rc);
  return static_cast<uint32_t>(rc);
}

Result<uint32_t> UringQueue::Reap(uint32_t min_complete, const std::function<void(uint64_t, Status)>& done,
                                  uint32_t max_complete) {
  Impl& m = *impl_;
  max_complete = std::max({max_complete, min_complete, 1u});
  uint32_t finished = 0;
  bool resubmit = !m.retry.empty();
  ++m.counters.reap_calls;
  while (finished < max_complete) {
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (finished < min_complete && m.busy > 0) {
      if (resubmit || !m.retry.empty()) {  // never wait on a request the kernel has not got
        KVT_RETURN_IF_ERROR(Submit().status());
        resubmit = false;
      }
      const uint64_t t0 = NowNs();
      rc = io_uring_wait_cqe(&m.ring, &cqe);
      m.counters.wait_ns += NowNs() - t0;
      ++m.counters.waits;
    } else {
      rc = io_uring_peek_cqe(&m.ring, &cqe);
      if (rc == -EAGAIN) break;
    }
    if (rc == -EINTR) continue;
    if (rc < 0) return Status::FromErrno(-rc, "io_uring_wait_cqe");
    const auto index = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(&m.ring, cqe);
    KVT_CHECK(index < m.ops.size() && m.ops[index].busy);
    Impl::Op& op = m.ops[index];
    if (m.fault) res = m.fault(op.req, res);
    Status status;
    if (res < 0) {
      status = Status::FromErrno(-res, fmt::format("{} of {} B at offset {}", OpName(op.req.op), op.req.length, op.req.offset));
    } else if (op.req.op != IoOp::kSyncData && static_cast<uint32_t>(res) < op.req.length) {
      if (res == 0) {
        status = Status::IoError(fmt::format("{} at offset {} made no progress (end of file?)", OpName(op.req.op), op.req.offset));
      } else {
        // Short: the remainder goes back to the kernel (vectored: from the piece where the
        // transfer stopped); the request is not done.
        Impl::Advance(op, static_cast<uint32_t>(res));
        ++m.counters.short_resubmits;
        if (!m.PrepSqe(index)) {
          op.queued = true;
          m.retry.push_back(index);
        }
        resubmit = true;
        continue;
      }
    }
    const uint64_t tag = op.req.tag;
    op.busy = false;
    m.free_ops.push_back(index);
    --m.busy;
    ++finished;
    ++m.counters.completed;
    if (!status.ok()) ++m.counters.errors;
    done(tag, std::move(status));
  }
  if (resubmit) KVT_RETURN_IF_ERROR(Submit().status());
  return finished;
}

uint32_t UringQueue::in_flight() const { return impl_->busy; }
uint32_t UringQueue::capacity() const { return impl_->depth; }
const IoCounters& UringQueue::counters() const { return impl_->counters; }
void UringQueue::set_fault(CompletionFault fault) { impl_->fault = std::move(fault); }

}  // namespace kvtier
