#include "nvme_mover.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <future>
#include <unordered_map>
#include <vector>

namespace kvtier {

using nvme::kSectorBytes;

namespace {
constexpr int kPoolBuffer = 0;  // registered buffer index of the DRAM pool (reads)
constexpr uint64_t kSyncTag = ~uint64_t{0};
uint64_t RoundUp(uint64_t n) { return (n + kSectorBytes - 1) / kSectorBytes * kSectorBytes; }
uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

// Relaxed, thread-safe recorder behind an NvmeStageHistogram.
struct StageRecorder {
  std::array<std::atomic<uint64_t>, NvmeStageHistogram::kBuckets> counts{};
  std::atomic<uint64_t> sum_ns{0};
  void Record(uint64_t ns) {
    counts[NvmeStageHistogram::BucketOf(ns)].fetch_add(1, std::memory_order_relaxed);
    sum_ns.fetch_add(ns, std::memory_order_relaxed);
  }
  NvmeStageHistogram Snapshot() const {
    NvmeStageHistogram h;
    for (size_t i = 0; i < h.counts.size(); ++i) h.counts[i] = counts[i].load(std::memory_order_relaxed);
    h.sum_ns = sum_ns.load(std::memory_order_relaxed);
    return h;
  }
};
// Saturating difference of two clock readings (a stage that did not happen reads 0).
uint64_t Span(uint64_t from, uint64_t to) { return to > from ? to - from : 0; }
}  // namespace

size_t NvmeStageHistogram::BucketOf(uint64_t ns) {
  if (ns < 8) return static_cast<size_t>(ns);
  const auto msb = static_cast<size_t>(63 - std::countl_zero(ns));  // >= 3
  const auto sub = static_cast<size_t>((ns >> (msb - 3)) & 7);
  return std::min(kBuckets - 1, 8 + (msb - 3) * 8 + sub);
}
uint64_t NvmeStageHistogram::total() const {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}
double NvmeStageHistogram::MeanUs() const {
  const uint64_t n = total();
  return n == 0 ? 0.0 : double(sum_ns) / double(n) / 1000.0;
}
double NvmeStageHistogram::QuantileUs(double q) const {
  const uint64_t n = total();
  if (n == 0) return 0;
  const auto rank = static_cast<uint64_t>(std::clamp(q, 0.0, 1.0) * double(n - 1));
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += counts[i];
    if (seen <= rank) continue;
    if (i < 8) return (double(i) + 0.5) / 1000.0;
    const size_t msb = (i - 8) / 8 + 3, sub = (i - 8) % 8;
    const double lo = double((8 + sub) << (msb - 3)), width = double(uint64_t{1} << (msb - 3));
    return (lo + width / 2) / 1000.0;
  }
  return 0;
}

const char* NvmeMoverBreakdown::StageName(size_t stage) {
  static constexpr const char* kNames[kStages] = {"wait_for", "queue hop", "slot wait", "to submit", "device+reap",
                                                  "verify",   "to signal", "callbacks", "total"};
  return stage < kStages ? kNames[stage] : "?";
}

NvmeMoverBreakdown NvmeMoverBreakdown::Since(const NvmeMoverBreakdown& before) const {
  auto diff = [](const NvmeStageHistogram& a, const NvmeStageHistogram& b) {
    NvmeStageHistogram d;
    for (size_t i = 0; i < d.counts.size(); ++i) d.counts[i] = a.counts[i] - b.counts[i];
    d.sum_ns = a.sum_ns - b.sum_ns;
    return d;
  };
  NvmeMoverBreakdown d;
  for (size_t i = 0; i < kStages; ++i) d.stages[i] = diff(stages[i], before.stages[i]);
  d.passes = passes - before.passes;
  d.idle_ns = idle_ns - before.idle_ns;
  d.submit_calls = submit_calls - before.submit_calls;
  d.submit_ns = submit_ns - before.submit_ns;
  d.reap_calls = reap_calls - before.reap_calls;
  d.reaped = reaped - before.reaped;
  d.reap_pass = diff(reap_pass, before.reap_pass);
  return d;
}

struct NvmeMover::Job {
  MoveBatch batch;
  FenceSignal signal;
  uint64_t submitted_ns = 0;
  uint64_t started_ns = 0;
  uint64_t queued_ns = 0;     // its wait_for fences signaled: queued for the I/O thread
  uint64_t verified_ns = 0;   // its last segment finished (timing only)
  size_t next = 0;          // next segment to start
  size_t unfinished = 0;    // segments started or not, not yet finished
  Status status;            // first error
  std::vector<nvme::SlotHeader> headers;  // writes: as written, per segment
};

// In-flight state, owned by the I/O thread.
struct NvmeMover::Io {
  UringQueue queue;
  AlignedBuffer record_area;  // queue_depth header records of nvme::kRecordBytes
  struct Segment {
    std::shared_ptr<Job> job;
    size_t index = 0;
    uint64_t prepped_ns = 0, submitted_ns = 0;  // timing only
  };
  std::vector<Segment> segments;  // by in-flight index (= its record in record_area)
  std::vector<uint32_t> free_segments;
  std::vector<uint32_t> unsubmitted;  // segments prepped since the last io_uring_submit (timing)
  std::deque<std::shared_ptr<Job>> active;
  std::vector<std::shared_ptr<Job>> awaiting_sync;  // durable mode: written, fdatasync not yet issued
  std::vector<std::shared_ptr<Job>> syncing;        // durable mode: the jobs whose fdatasync is in flight
  std::vector<std::shared_ptr<Job>> to_publish;     // written (and synced): indexed at the end of the reap pass
  std::atomic<uint64_t> bytes{0}, batches{0}, segment_count{0}, errors{0}, busy_ns{0};
  LatencyRecorder latency;
  std::array<StageRecorder, NvmeMoverBreakdown::kStages> stages;
  StageRecorder reap_pass;
  // The queue's counters, mirrored after each loop pass for breakdown() on other threads.
  std::atomic<uint64_t> passes{0}, idle_ns{0}, submit_calls{0}, submit_ns{0}, reap_calls{0}, reaped{0};
  explicit Io(UringQueue q) : queue(std::move(q)) {}
  std::span<std::byte> record(uint32_t i) {
    return {record_area.data() + uint64_t{i} * nvme::kRecordBytes, nvme::kRecordBytes};
  }
};

Result<std::unique_ptr<NvmeMover>> NvmeMover::Create(HostTier* dram, NvmeTier* nvme, NvmeDirection direction,
                                                     NvmeMoverOptions options) {
  if (dram == nullptr || nvme == nullptr) return Status::InvalidArgument("nvme mover: null tier");
  if (options.queue_depth == 0 || options.queue_depth > 1024) {
    return Status::InvalidArgument(fmt::format("nvme mover: queue depth {} (1..1024)", options.queue_depth));
  }
  if (dram->caps().slot_bytes > nvme->caps().slot_bytes) {
    return Status::InvalidArgument(fmt::format("nvme mover: DRAM slots of {} B do not fit NVMe slots of {} B",
                                               dram->caps().slot_bytes, nvme->caps().slot_bytes));
  }
  auto mover = std::unique_ptr<NvmeMover>(new NvmeMover(dram, nvme, direction, std::move(options)));
  // The ring is created and its buffers registered on the I/O thread: the ring is
  // single-issuer, so that thread must be the one that sets it up.
  std::promise<Status> ready;
  std::future<Status> ready_f = ready.get_future();
  NvmeMover* m = mover.get();
  m->thread_ = std::thread([m, &ready] {
    const uint32_t qd = m->options_.queue_depth;
    // One request per in-flight segment, plus a durable mode's fdatasync.
    auto q = UringQueue::Create({.queue_depth = qd + 1});
    if (!q.ok()) return ready.set_value(q.status());
    auto area = AlignedBuffer::Allocate(uint64_t{qd} * nvme::kRecordBytes);
    if (!area.ok()) return ready.set_value(area.status());
    auto io = std::make_unique<Io>(std::move(q).value());
    io->record_area = std::move(area).value();
    const iovec pool{m->dram_->base(), m->dram_->bytes()};
    if (Status s = io->queue.RegisterBuffers({&pool, 1}); !s.ok()) return ready.set_value(std::move(s).Annotate(m->name_));
    if (m->options_.fault) io->queue.set_fault(m->options_.fault);
    io->segments.resize(qd);
    for (uint32_t i = qd; i > 0; --i) io->free_segments.push_back(i - 1);
    m->io_ = std::move(io);
    ready.set_value(Status());
    m->IoLoop();
  });
  if (Status s = ready_f.get(); !s.ok()) {
    mover->thread_.join();
    return s;
  }
  return mover;
}

NvmeMover::NvmeMover(HostTier* dram, NvmeTier* nvme, NvmeDirection direction, NvmeMoverOptions options)
    : dram_(dram),
      nvme_(nvme),
      direction_(direction),
      options_(std::move(options)),
      name_(direction == NvmeDirection::kDramToNvme ? "io_uring dram->nvme" : "io_uring nvme->dram") {}

NvmeMover::~NvmeMover() {
  if (!thread_.joinable()) return;
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
  stop_ = true;
  lock.unlock();
  cv_.notify_all();
  thread_.join();
}

TierKind NvmeMover::source() const { return direction_ == NvmeDirection::kDramToNvme ? TierKind::kDram : TierKind::kNvme; }
TierKind NvmeMover::destination() const {
  return direction_ == NvmeDirection::kDramToNvme ? TierKind::kNvme : TierKind::kDram;
}

Fence NvmeMover::Submit(MoveBatch batch) {
  const Tier& src = direction_ == NvmeDirection::kDramToNvme ? static_cast<const Tier&>(*dram_) : *nvme_;
  const Tier& dst = direction_ == NvmeDirection::kDramToNvme ? static_cast<const Tier&>(*nvme_) : *dram_;
  for (size_t i = 0; i < batch.segments.size(); ++i) {
    const CopySegment& c = batch.segments[i];
    Status bad;
    if (c.bytes == 0) {
      bad = Status::InvalidArgument(fmt::format("segment {} copies 0 bytes", i));
    } else if (c.src.value() >= src.caps().slot_count || c.dst.value() >= dst.caps().slot_count) {
      bad = Status::InvalidArgument(fmt::format("segment {}: slot {} -> {} out of range", i, c.src.value(), c.dst.value()));
    } else if (c.src_offset != 0 || c.dst_offset != 0) {
      bad = Status::InvalidArgument(fmt::format("segment {}: NVMe moves whole blocks (offsets {} -> {})", i, c.src_offset, c.dst_offset));
    } else if (RoundUp(c.bytes) > dram_->caps().slot_bytes || c.bytes > nvme_->caps().slot_bytes) {
      bad = Status::InvalidArgument(fmt::format("segment {}: {} B overrun the slots", i, c.bytes));
    }
    if (!bad.ok()) {
      io_->errors.fetch_add(1, std::memory_order_relaxed);
      return Fence::Failed(std::move(bad).Annotate(name_));
    }
  }
  if (!batch.keys.empty() && batch.keys.size() != batch.segments.size()) {
    io_->errors.fetch_add(1, std::memory_order_relaxed);
    return Fence::Failed(Status::InvalidArgument(fmt::format("{}: {} keys for {} segments", name_, batch.keys.size(),
                                                             batch.segments.size())));
  }
  if (direction_ == NvmeDirection::kDramToNvme) {
    // Keyed blocks are published in the index once written (they survive a restart).
    for (size_t i = 0; i < batch.keys.size(); ++i) nvme_->Bind(batch.segments[i].dst, batch.keys[i]);
  }
  auto [fence, signal] = Fence::Make();
  auto job = std::make_shared<Job>();
  job->signal = std::move(signal);
  job->submitted_ns = NowNs();
  job->unfinished = batch.segments.size();
  job->headers.resize(batch.segments.size());
  std::vector<Fence> waits = std::move(batch.wait_for);
  job->batch = std::move(batch);
  {
    std::lock_guard lock(mu_);
    ++outstanding_;
  }
  Fence::All(waits).OnReady([this, job](const Status& s) {
    if (!s.ok()) {
      io_->errors.fetch_add(1, std::memory_order_relaxed);
      job->signal.Signal(Status(s.code(), fmt::format("{}: a fence this batch waited for failed: {}", name_, s.message())));
      std::lock_guard lock(mu_);
      if (--outstanding_ == 0) idle_cv_.notify_all();
      return;
    }
    {
      std::lock_guard lock(mu_);
      job->queued_ns = NowNs();
      queue_.push_back(job);
    }
    cv_.notify_one();
  });
  return fence;
}

void NvmeMover::Finish(const std::shared_ptr<Job>& job) {
  Io& io = *io_;
  const uint64_t now = NowNs();
  io.latency.Record(now - job->submitted_ns);
  io.busy_ns.fetch_add(now - job->started_ns, std::memory_order_relaxed);
  io.batches.fetch_add(1, std::memory_order_relaxed);
  io.segment_count.fetch_add(job->batch.segments.size(), std::memory_order_relaxed);
  if (!job->batch.segments.empty()) {
    io.stages[NvmeMoverBreakdown::kToSignal].Record(Span(job->verified_ns, now));
    io.stages[NvmeMoverBreakdown::kTotal].Record(now - job->submitted_ns);
  }
  if (job->status.ok()) {
    uint64_t b = 0;
    for (const CopySegment& c : job->batch.segments) b += c.bytes;
    io.bytes.fetch_add(b, std::memory_order_relaxed);
  } else {
    io.errors.fetch_add(1, std::memory_order_relaxed);
  }
  job->signal.Signal(job->status);
  if (!job->batch.segments.empty()) io.stages[NvmeMoverBreakdown::kCallbacks].Record(NowNs() - now);
  std::lock_guard lock(mu_);
  if (--outstanding_ == 0) idle_cv_.notify_all();
}

void NvmeMover::IoLoop() {
  Io& io = *io_;
  const bool writing = direction_ == NvmeDirection::kDramToNvme;
  const uint32_t reap_batch = options_.reap_batch != 0 ? options_.reap_batch : std::max(1u, options_.queue_depth / 8);
  const int fd = nvme_->fd();
  const nvme::SlabGeometry& g = nvme_->geometry();
  // Segment `h` moves one block in one request, tag h: a write is a WRITEV of record h of the
  // record area then the DRAM pool slot's payload, at the slot's record offset (a vectored
  // request cannot use the registered pool: the kernel pins the pages per request); a read is
  // the payload alone (READ_FIXED into the DRAM pool slot). Records and payloads are 4 KiB
  // multiples at 4 KiB offsets.
  auto prep_write = [&](uint32_t slot, uint32_t h, std::byte* payload, uint64_t len) {
    const std::span<std::byte> record = io.record(h);
    const iovec pieces[2] = {{record.data(), record.size()}, {payload, len}};
    KVT_CHECK(io.queue.Prep({.op = IoOp::kWritev, .fd = fd, .offset = g.record_offset(slot), .tag = h, .iov = pieces}).ok());
  };
  auto prep_read = [&](uint32_t slot, uint32_t h, std::byte* payload, uint64_t len) {
    KVT_CHECK(io.queue.Prep({IoOp::kRead, fd, g.payload_offset(slot), payload, static_cast<uint32_t>(len), kPoolBuffer,
                             uint64_t{h}}).ok());
  };

  // Indexes every job in to_publish in one WriteBatch (their writes, and in durable mode
  // their fdatasync, have completed successfully), then signals them.
  auto publish = [&] {
    if (io.to_publish.empty()) return;
    std::vector<SlotId> slots;
    std::vector<nvme::SlotHeader> headers;
    for (const auto& job : io.to_publish) {
      for (const CopySegment& c : job->batch.segments) slots.push_back(c.dst);
      headers.insert(headers.end(), job->headers.begin(), job->headers.end());
    }
    Status s = nvme_->Publish(slots, headers);
    for (const auto& job : io.to_publish) {
      if (!s.ok()) job->status = Status(s).Annotate(name_);
      Finish(job);
    }
    io.to_publish.clear();
  };
  // All segments of `job` have finished (and, durable, its fdatasync): publish (writes), then signal.
  auto complete = [&](const std::shared_ptr<Job>& job) {
    if (!writing || !job->status.ok()) return Finish(job);
    io.to_publish.push_back(job);
    if (options_.publish_per_batch) publish();
  };
  auto segment_done = [&](const std::shared_ptr<Job>& job, Status s) {
    if (!s.ok() && job->status.ok()) job->status = std::move(s).Annotate(name_);
    if (--job->unfinished > 0) return;
    if (writing && job->status.ok() && nvme_->mode() == NvmeMode::kDurable) {
      io.awaiting_sync.push_back(job);  // fdatasync before the blocks are published
      return;
    }
    complete(job);
  };
  // Durable mode: one fdatasync for every job awaiting one (none in flight).
  auto start_sync = [&] {
    if (io.awaiting_sync.empty() || !io.syncing.empty()) return;
    io.syncing.swap(io.awaiting_sync);
    Status p = io.queue.Prep({IoOp::kSyncData, fd, 0, nullptr, 0, -1, kSyncTag});
    KVT_CHECK(p.ok());  // called before new segments start: the finished jobs' segments left room
  };
  // Starts segment `job->next` as in-flight segment `h`.
  auto start = [&](const std::shared_ptr<Job>& job, uint32_t h) {
    const size_t i = job->next++;
    const CopySegment& c = job->batch.segments[i];
    const uint64_t len = RoundUp(c.bytes);
    Io::Segment& seg = io.segments[h];
    seg = Io::Segment{job, i, 0, 0};
    if (writing) {
      std::byte* payload = std::get<MemoryAddress>(dram_->Locate(c.src)).ptr;
      nvme::SlotHeader hd;
      if (auto key = nvme_->BoundKey(c.dst)) hd.key = *key;
      hd.generation = nvme_->NextGeneration();
      hd.payload_bytes = c.bytes;
      hd.slot_offset = g.payload_offset(c.dst.value());
      hd.checksum = nvme::SlotChecksum(hd, {payload, c.bytes});
      nvme::EncodeSlotRecord(hd, io.record(h));
      job->headers[i] = hd;
      prep_write(c.dst.value(), h, payload, len);
      seg.prepped_ns = NowNs();
      io.unsubmitted.push_back(h);
    } else {
      std::byte* payload = std::get<MemoryAddress>(dram_->Locate(c.dst)).ptr;
      nvme::SlotExpectation want;
      BlockKey key;
      Status no_block;
      const bool held = nvme_->Expect(c.src, &want, &key);
      if (held && !job->batch.keys.empty()) {
        key = job->batch.keys[i];  // the block asked for, whatever the slot holds now
        want.key = &key;
      }
      if (!held) {
        no_block = Status::DataLoss(fmt::format("nvme slot {} holds no block", c.src.value()));
      } else if (want.payload_bytes != c.bytes) {
        // A block of another size (another geometry before a restart): never half-served.
        no_block = Status::DataLoss(fmt::format("nvme slot {} holds a {} B block, read as {} B", c.src.value(),
                                                want.payload_bytes, c.bytes));
      }
      if (!no_block.ok()) {
        seg.job.reset();
        io.free_segments.push_back(h);
        segment_done(job, std::move(no_block));
        return;
      }
      // The expected offset is the slot's own payload offset (NvmeTier::Expect): a payload
      // written for another slot fails the checksum (misplaced or swapped block).
      KVT_CHECK(want.slot_offset == g.payload_offset(c.src.value()));
      prep_read(c.src.value(), h, payload, len);
      seg.prepped_ns = NowNs();
      io.unsubmitted.push_back(h);
    }
  };
  auto on_complete = [&](uint64_t tag, Status s) {
    if (tag == kSyncTag) {
      std::vector<std::shared_ptr<Job>> jobs;
      jobs.swap(io.syncing);
      for (const auto& job : jobs) {
        if (!s.ok()) job->status = Status(s).Annotate(name_);
        complete(job);
      }
      return;
    }
    const auto h = static_cast<uint32_t>(tag);
    Io::Segment& seg = io.segments[h];
    const uint64_t reaped_ns = NowNs();
    std::shared_ptr<Job> job = std::move(seg.job);
    Status result = std::move(s);
    const CopySegment& c = job->batch.segments[seg.index];
    if (!writing && result.ok()) {
      nvme::SlotExpectation want;
      BlockKey key;
      std::byte* payload = std::get<MemoryAddress>(dram_->Locate(c.dst)).ptr;
      if (!nvme_->Expect(c.src, &want, &key)) {
        result = Status::DataLoss(fmt::format("nvme slot {} was dropped while being read", c.src.value()));
      } else {
        if (!job->batch.keys.empty()) {
          key = job->batch.keys[seg.index];
          want.key = &key;
        }
        result = nvme::VerifyPayload({payload, c.bytes}, want);
      }
      if (!result.ok()) nvme_->ReportDataLoss(c.src);
    }
    const uint64_t verified_ns = NowNs();
    io.stages[NvmeMoverBreakdown::kWaitFor].Record(Span(job->submitted_ns, job->queued_ns));
    io.stages[NvmeMoverBreakdown::kQueueHop].Record(Span(job->queued_ns, job->started_ns));
    io.stages[NvmeMoverBreakdown::kSlotWait].Record(Span(job->started_ns, seg.prepped_ns));
    io.stages[NvmeMoverBreakdown::kToSubmit].Record(Span(seg.prepped_ns, seg.submitted_ns));
    io.stages[NvmeMoverBreakdown::kDevice].Record(Span(seg.submitted_ns, reaped_ns));
    io.stages[NvmeMoverBreakdown::kVerify].Record(verified_ns - reaped_ns);
    job->verified_ns = verified_ns;
    // A failed read (an I/O error) is a miss too: the block may be fine on disk, but it
    // was not loaded, so the batch fails.
    io.free_segments.push_back(h);
    segment_done(job, std::move(result));
  };

  while (true) {
    {
      std::unique_lock lock(mu_);
      if (io.active.empty() && io.queue.in_flight() == 0 && io.awaiting_sync.empty()) {
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
      }
      while (!queue_.empty()) {
        queue_.front()->started_ns = NowNs();
        io.active.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    // Start as many segments as there are free ones (one fdatasync keeps one segment's worth
    // of queue room: hold back while a sync is in flight).
    start_sync();
    while (!io.active.empty() && !io.free_segments.empty() && io.syncing.empty()) {
      std::shared_ptr<Job> job = io.active.front();
      if (job->next == job->batch.segments.size()) {
        io.active.pop_front();
        if (job->batch.segments.empty()) Finish(job);
        continue;
      }
      const uint32_t h = io.free_segments.back();
      io.free_segments.pop_back();
      start(job, h);
    }
    if (io.queue.in_flight() == 0) continue;
    if (auto n = io.queue.Submit(); !n.ok()) {
      // The ring itself failed: nothing in flight can complete. A broken invariant.
      KVT_CHECK_MSG(false, n.status().ToString());
    }
    const uint64_t submitted_ns = NowNs();
    for (uint32_t h : io.unsubmitted) io.segments[h].submitted_ns = submitted_ns;
    io.unsubmitted.clear();
    const uint64_t wait_before = io.queue.counters().wait_ns;
    const uint64_t reap_start = NowNs();
    auto r = io.queue.Reap(1, on_complete, reap_batch);
    if (!r.ok()) KVT_CHECK_MSG(false, r.status().ToString());
    publish();  // everything this pass completed, in one index WriteBatch
    const IoCounters& qc = io.queue.counters();
    io.reap_pass.Record(Span(qc.wait_ns - wait_before, NowNs() - reap_start));
    io.reaped.fetch_add(*r, std::memory_order_relaxed);
    io.passes.fetch_add(1, std::memory_order_relaxed);
    io.idle_ns.store(qc.wait_ns, std::memory_order_relaxed);
    io.submit_calls.store(qc.submit_calls, std::memory_order_relaxed);
    io.submit_ns.store(qc.submit_ns, std::memory_order_relaxed);
    io.reap_calls.store(qc.reap_calls, std::memory_order_relaxed);
  }
}

NvmeMoverBreakdown NvmeMover::breakdown() const {
  NvmeMoverBreakdown b;
  const Io& io = *io_;
  for (size_t i = 0; i < b.stages.size(); ++i) b.stages[i] = io.stages[i].Snapshot();
  b.reap_pass = io.reap_pass.Snapshot();
  b.passes = io.passes.load(std::memory_order_relaxed);
  b.idle_ns = io.idle_ns.load(std::memory_order_relaxed);
  b.submit_calls = io.submit_calls.load(std::memory_order_relaxed);
  b.submit_ns = io.submit_ns.load(std::memory_order_relaxed);
  b.reap_calls = io.reap_calls.load(std::memory_order_relaxed);
  b.reaped = io.reaped.load(std::memory_order_relaxed);
  return b;
}

MoverStats NvmeMover::stats() const {
  MoverStats m;
  m.name = name_;
  m.source = source();
  m.destination = destination();
  m.bytes = io_->bytes.load(std::memory_order_relaxed);
  m.batches = io_->batches.load(std::memory_order_relaxed);
  m.segments = io_->segment_count.load(std::memory_order_relaxed);
  m.errors = io_->errors.load(std::memory_order_relaxed);
  m.busy_ns = io_->busy_ns.load(std::memory_order_relaxed);
  m.latency = io_->latency.Snapshot();
  return m;
}

}  // namespace kvtier
