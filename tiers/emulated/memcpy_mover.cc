#include "memcpy_mover.h"

#include <fmt/format.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <chrono>

#include "mover_counters.h"
#include "reference/copy_blocks.h"

namespace kvtier {

struct MemcpyMover::Job {
  MoveBatch batch;
  FenceSignal signal;
  std::chrono::steady_clock::time_point submitted;
  uint64_t bytes = 0;
};

struct MemcpyMover::Counters {
  MoverCounters stats;
  tbb::task_arena arena;  // the mover's own CPU threads
  explicit Counters(int threads) : arena(threads) {}
};

Status ValidateSegments(const MoveBatch& batch, const Tier& source, const Tier& destination) {
  const TierCaps& s = source.caps();
  const TierCaps& d = destination.caps();
  for (size_t i = 0; i < batch.segments.size(); ++i) {
    const CopySegment& c = batch.segments[i];
    if (c.bytes == 0) return Status::InvalidArgument(fmt::format("segment {} copies 0 bytes", i));
    if (c.src.value() >= s.slot_count || c.dst.value() >= d.slot_count) {
      return Status::InvalidArgument(fmt::format("segment {}: slot {} -> {} out of range ({} / {} slots)", i,
                                                 c.src.value(), c.dst.value(), s.slot_count, d.slot_count));
    }
    if (c.src_offset + c.bytes > s.slot_bytes || c.dst_offset + c.bytes > d.slot_bytes ||
        c.src_offset + c.bytes < c.bytes || c.dst_offset + c.bytes < c.bytes) {
      return Status::InvalidArgument(fmt::format("segment {}: {} B at offsets {} -> {} overrun {} / {} B slots", i,
                                                 c.bytes, c.src_offset, c.dst_offset, s.slot_bytes, d.slot_bytes));
    }
  }
  return Status();
}

Result<std::unique_ptr<MemcpyMover>> MemcpyMover::Create(Tier* source, Tier* destination, MemcpyMoverOptions options) {
  if (source == nullptr || destination == nullptr) return Status::InvalidArgument("memcpy mover: null tier");
  if (source == destination) return Status::InvalidArgument("memcpy mover: source and destination are one tier");
  if (options.threads == 0 || options.threads > 256) {
    return Status::InvalidArgument(fmt::format("memcpy mover: {} threads", options.threads));
  }
  for (const Tier* t : {source, destination}) {
    if (t->caps().slot_count == 0 || !std::holds_alternative<MemoryAddress>(t->Locate(SlotId{0}))) {
      return Status::InvalidArgument(fmt::format("memcpy mover: tier '{}' is not memory", t->name()));
    }
  }
  return std::unique_ptr<MemcpyMover>(new MemcpyMover(source, destination, options));
}

MemcpyMover::MemcpyMover(Tier* source, Tier* destination, MemcpyMoverOptions options)
    : src_(source),
      dst_(destination),
      options_(options),
      name_(fmt::format("memcpy {}->{}", TierName(source->kind()), TierName(destination->kind()))),
      counters_(std::make_unique<Counters>(static_cast<int>(options.threads))) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

MemcpyMover::~MemcpyMover() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
  stop_ = true;
  lock.unlock();
  cv_.notify_all();
  worker_.join();
}

Fence MemcpyMover::Submit(MoveBatch batch) {
  if (Status s = ValidateSegments(batch, *src_, *dst_); !s.ok()) {
    counters_->stats.RecordRejected();
    return Fence::Failed(std::move(s).Annotate(name_));
  }
  auto [fence, signal] = Fence::Make();
  auto job = std::make_shared<Job>();
  job->signal = std::move(signal);
  job->submitted = std::chrono::steady_clock::now();
  for (const CopySegment& c : batch.segments) job->bytes += c.bytes;
  std::vector<Fence> waits = std::move(batch.wait_for);
  job->batch = std::move(batch);
  {
    std::lock_guard lock(mu_);
    ++outstanding_;
  }
  // Queue once every producer/consumer fence has signaled; the worker never blocks on one.
  Fence::All(waits).OnReady([this, job](const Status& s) {
    if (!s.ok()) {
      counters_->stats.RecordRejected();
      job->signal.Signal(Status(s.code(), fmt::format("{}: a fence this batch waited for failed: {}", name_, s.message())));
      std::lock_guard lock(mu_);
      if (--outstanding_ == 0) idle_cv_.notify_all();
      return;
    }
    Enqueue(job);
  });
  return fence;
}

void MemcpyMover::Enqueue(std::shared_ptr<Job> job) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

Status MemcpyMover::Run(const Job& job) {
  std::vector<kernels::CopyDescriptor> descs;
  descs.reserve(job.batch.segments.size());
  for (const CopySegment& c : job.batch.segments) {
    const auto s = std::get<MemoryAddress>(src_->Locate(c.src));
    const auto d = std::get<MemoryAddress>(dst_->Locate(c.dst));
    descs.push_back({s.ptr + c.src_offset, d.ptr + c.dst_offset, c.bytes});
  }
  counters_->arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, descs.size(), 4), [&](const tbb::blocked_range<size_t>& r) {
      kernels::CopyBlocksReference(std::span(descs).subspan(r.begin(), r.size()));
    });
  });
  return Status();
}

void MemcpyMover::WorkerLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ with nothing left
    std::shared_ptr<Job> job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    Status s = Run(*job);
    const auto done = std::chrono::steady_clock::now();
    auto ns = [](auto d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
    counters_->stats.RecordBatch(job->batch.segments.size(), job->bytes, s.ok(), ns(done - job->submitted),
                                 ns(done - started));
    job->signal.Signal(std::move(s));
    lock.lock();
    if (--outstanding_ == 0) idle_cv_.notify_all();
  }
}

MoverStats MemcpyMover::stats() const { return counters_->stats.Snapshot(name_, src_->kind(), dst_->kind()); }

}  // namespace kvtier
