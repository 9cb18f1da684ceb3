#include "gpu_mover.h"

#include <fmt/format.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <chrono>
#include <cstring>

#include "copy_blocks.cuh"
#include "memcpy_mover.h"  // ValidateSegments
#include "mover_counters.h"

namespace kvtier {

using kernels::DeviceCopyDescriptor;

struct GpuMover::Job {
  MoveBatch batch;
  FenceSignal signal;
  std::chrono::steady_clock::time_point submitted, launched;
  uint64_t bytes = 0;
  D2hMode mode = D2hMode::kKernel;
  Status status;  // a launch failure, reported at completion
  Lane* lane = nullptr;
  size_t pieces = 0;  // CPU-assisted D2H: pieces launched in lane->pieces
};

// Resources of one batch on the GPU. Reused once the batch's event has completed.
struct GpuMover::Lane {
  PinnedBuffer host_descriptors;
  DeviceBuffer device_descriptors;
  DeviceBuffer device_staging;  // CPU-assisted D2H only
  PinnedBuffer host_staging;
  CudaEvent done;
  // CPU-assisted D2H: pieces of the batch, each with the event after its D2H copy, and the
  // (staging -> DRAM slot, bytes) scatters of its segments.
  struct Piece {
    CudaEvent copied;
    size_t first = 0, end = 0;  // range of `scatter` entries
  };
  std::vector<Piece> pieces;
  std::vector<std::pair<const std::byte*, std::byte*>> scatter;
  std::vector<uint64_t> scatter_bytes;
};

struct GpuMover::Counters {
  MoverCounters stats;
  tbb::task_arena arena;  // the mover's own CPU threads
  explicit Counters(int threads) : arena(threads) {}
};

Status GpuMoverOptions::Validate() const {
  if (device < 0) return Status::InvalidArgument(fmt::format("gpu mover: device {}", device));
  if (chunk_bytes < 16 || chunk_bytes % 16 != 0) {
    return Status::InvalidArgument(fmt::format("gpu mover: chunk_bytes {} is not a multiple of 16", chunk_bytes));
  }
  if (cpu_threads == 0 || cpu_threads > 256) return Status::InvalidArgument("gpu mover: cpu_threads out of [1, 256]");
  if (max_in_flight == 0 || max_in_flight > 64) return Status::InvalidArgument("gpu mover: max_in_flight out of [1, 64]");
  if (unroll != 4 && unroll != 8) return Status::InvalidArgument(fmt::format("gpu mover: unroll {} (4 or 8)", unroll));
  if (cpu_piece_bytes < (1u << 20)) return Status::InvalidArgument("gpu mover: cpu_piece_bytes below 1 MiB");
  if (launch_bytes != 0 && launch_bytes < (1u << 20)) return Status::InvalidArgument("gpu mover: launch_bytes below 1 MiB");
  return Status();
}

Result<std::unique_ptr<GpuMover>> GpuMover::Create(Tier* source, Tier* destination, GpuMoverOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  if (source == nullptr || destination == nullptr) return Status::InvalidArgument("gpu mover: null tier");
  const bool h2d = source->kind() == TierKind::kDram && destination->kind() == TierKind::kHbm;
  const bool d2h = source->kind() == TierKind::kHbm && destination->kind() == TierKind::kDram;
  if (!h2d && !d2h) return Status::InvalidArgument("gpu mover: joins DRAM and HBM only");
  const Tier* dram = h2d ? source : destination;
  if (!dram->caps().device_addressable) {
    return Status::FailedPrecondition(fmt::format(
        "gpu mover: the DRAM tier '{}' is not registered with the device (pinned by cudaHostRegister); the gather "
        "and scatter kernels cannot reach it",
        dram->name()));
  }
  for (const Tier* t : {source, destination}) {
    if (t->caps().alignment % 16 != 0 || t->caps().slot_bytes % 16 != 0) {
      return Status::InvalidArgument(fmt::format("gpu mover: tier '{}' slots are not 16-byte aligned", t->name()));
    }
  }
  KVT_ASSIGN_OR_RETURN(StreamCopier copier, StreamCopier::For(options.cpu_copy));
  std::unique_ptr<GpuMover> m(new GpuMover(source, destination, std::move(options)));
  m->copier_ = copier;
  KVT_RETURN_IF_ERROR(m->Init());
  return m;
}

GpuMover::GpuMover(Tier* source, Tier* destination, GpuMoverOptions options)
    : src_(source),
      dst_(destination),
      options_(std::move(options)),
      to_device_(destination->kind() == TierKind::kHbm),
      name_(fmt::format("gpu {}->{}", TierName(source->kind()), TierName(destination->kind()))),
      counters_(std::make_unique<Counters>(static_cast<int>(options_.cpu_threads))) {}

Status GpuMover::Init() {
  KVT_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, options_.device),
                           "reading the multiprocessor count");
  KVT_ASSIGN_OR_RETURN(stream_, CudaStream::Create(options_.device));
  for (uint32_t i = 0; i < options_.max_in_flight; ++i) {
    auto lane = std::make_unique<Lane>();
    KVT_ASSIGN_OR_RETURN(lane->done, CudaEvent::Create(options_.device));
    free_lanes_.push_back(lane.get());
    lanes_.push_back(std::move(lane));
  }
  launcher_ = std::thread([this] { LaunchLoop(); });
  completer_ = std::thread([this] { CompleteLoop(); });
  return Status();
}

GpuMover::~GpuMover() {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return outstanding_ == 0; });
  stop_ = true;
  lock.unlock();
  cv_.notify_all();
  done_cv_.notify_all();
  if (launcher_.joinable()) launcher_.join();
  if (completer_.joinable()) completer_.join();
}

D2hMode GpuMover::ModeFor(uint64_t block_bytes) const {
  if (to_device_) return D2hMode::kKernel;
  if (options_.d2h_mode != D2hMode::kAuto) return options_.d2h_mode;
  return options_.profile.ChooseD2h(block_bytes);
}

Fence GpuMover::Submit(MoveBatch batch) {
  if (Status s = ValidateSegments(batch, *src_, *dst_); !s.ok()) {
    counters_->stats.RecordRejected();
    return Fence::Failed(std::move(s).Annotate(name_));
  }
  for (size_t i = 0; i < batch.segments.size(); ++i) {
    const CopySegment& c = batch.segments[i];
    if (c.bytes % 16 != 0 || c.src_offset % 16 != 0 || c.dst_offset % 16 != 0) {
      counters_->stats.RecordRejected();
      return Fence::Failed(Status::InvalidArgument(
          fmt::format("{}: segment {} ({} B at offsets {} -> {}) is not 16-byte aligned", name_, i, c.bytes,
                      c.src_offset, c.dst_offset)));
    }
  }
  auto [fence, signal] = Fence::Make();
  auto job = std::make_shared<Job>();
  job->signal = std::move(signal);
  job->submitted = std::chrono::steady_clock::now();
  for (const CopySegment& c : batch.segments) job->bytes += c.bytes;
  job->mode = batch.segments.empty() ? D2hMode::kKernel : ModeFor(batch.segments.front().bytes);
  std::vector<Fence> waits = std::move(batch.wait_for);
  job->batch = std::move(batch);
  {
    std::lock_guard lock(mu_);
    ++outstanding_;
  }
  // Producers of the source and last users of the destination first; nothing blocks.
  Fence::All(waits).OnReady([this, job](const Status& s) {
    std::lock_guard lock(mu_);
    if (!s.ok()) job->status = Status(s.code(), fmt::format("{}: a fence this batch waited for failed: {}", name_, s.message()));
    ready_.push_back(job);
    cv_.notify_all();
  });
  return fence;
}

Status GpuMover::Launch(Job& job, Lane& lane) {
  DeviceGuard guard(options_.device);
  const auto& segments = job.batch.segments;
  const bool cpu_assisted = !to_device_ && job.mode == D2hMode::kCpuAssisted;
  // Uniform batches (every segment the same size: whole blocks or slices) take the flat
  // kernel with one descriptor per segment; ragged ones are split into chunks.
  bool uniform = !segments.empty();
  for (const CopySegment& c : segments) uniform = uniform && c.bytes == segments.front().bytes;
  size_t count = 0;
  for (const CopySegment& c : segments) count += uniform ? 1 : (c.bytes + options_.chunk_bytes - 1) / options_.chunk_bytes;
  const size_t desc_bytes = std::max<size_t>(count, 1) * sizeof(DeviceCopyDescriptor);
  if (lane.host_descriptors.size() < desc_bytes) {
    KVT_ASSIGN_OR_RETURN(lane.host_descriptors, PinnedBuffer::Allocate(desc_bytes * 2));
    KVT_ASSIGN_OR_RETURN(lane.device_descriptors, DeviceBuffer::Allocate(options_.device, desc_bytes * 2));
  }
  if (cpu_assisted && lane.device_staging.size() < job.bytes) {
    lane.device_staging = DeviceBuffer();
    lane.host_staging = PinnedBuffer();
    KVT_ASSIGN_OR_RETURN(lane.device_staging, DeviceBuffer::Allocate(options_.device, job.bytes));
    KVT_ASSIGN_OR_RETURN(lane.host_staging, PinnedBuffer::Allocate(job.bytes));
  }
  auto* descs = reinterpret_cast<DeviceCopyDescriptor*>(lane.host_descriptors.data());
  lane.scatter.clear();
  lane.scatter_bytes.clear();
  std::vector<size_t> scatter_end;  // CPU-assisted: per segment, the end of its scatter pieces
  std::vector<size_t> first_desc;  // per segment, its first descriptor
  first_desc.reserve(segments.size() + 1);
  size_t n = 0;
  uint64_t staged = 0;
  cudaStream_t st = stream_.get();
  const auto* dev_descs = reinterpret_cast<const DeviceCopyDescriptor*>(lane.device_descriptors.data());
  kernels::CopyLaunch launch{.ctas = options_.ctas, .unroll = options_.unroll,
                             .uniform_bytes = uniform ? segments.front().bytes : 0, .streaming = options_.streaming};
  // Kernel paths: upload and launch descriptors [flushed, n) while the next ones are built.
  size_t flushed = 0;
  uint64_t pending_bytes = 0;
  auto flush = [&]() -> Status {
    if (n == flushed) return Status();
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(lane.device_descriptors.data() + flushed * sizeof(DeviceCopyDescriptor),
                                             descs + flushed, (n - flushed) * sizeof(DeviceCopyDescriptor),
                                             cudaMemcpyHostToDevice, st),
                             "copying descriptors");
    KVT_RETURN_IF_CUDA_ERROR(kernels::LaunchCopyBlocks(dev_descs + flushed, static_cast<uint32_t>(n - flushed), launch, st),
                             "launching the copy kernel");
    flushed = n;
    pending_bytes = 0;
    return Status();
  };
  for (const CopySegment& c : segments) {
    first_desc.push_back(n);
    const std::byte* s = std::get<MemoryAddress>(src_->Locate(c.src)).ptr + c.src_offset;
    std::byte* d = std::get<MemoryAddress>(dst_->Locate(c.dst)).ptr + c.dst_offset;
    if (cpu_assisted) {
      // Scatter work in pieces of at most 256 KiB, so large blocks spread over the threads.
      constexpr uint64_t kScatterPiece = 256 << 10;
      for (uint64_t off = 0; off < c.bytes; off += kScatterPiece) {
        lane.scatter.emplace_back(lane.host_staging.data() + staged + off, d + off);
        lane.scatter_bytes.push_back(std::min(kScatterPiece, c.bytes - off));
      }
      scatter_end.push_back(lane.scatter.size());
      d = lane.device_staging.data() + staged;  // pack on the device first
      staged += c.bytes;
    }
    const uint64_t piece = uniform ? c.bytes : options_.chunk_bytes;
    for (uint64_t off = 0; off < c.bytes; off += piece) {
      descs[n++] = DeviceCopyDescriptor{reinterpret_cast<uint64_t>(s + off), reinterpret_cast<uint64_t>(d + off),
                                        std::min<uint64_t>(piece, c.bytes - off), 0};
    }
    pending_bytes += c.bytes;
    if (!cpu_assisted && options_.launch_bytes != 0 && pending_bytes >= options_.launch_bytes) KVT_RETURN_IF_ERROR(flush());
  }
  first_desc.push_back(n);
  if (!cpu_assisted) {
    KVT_RETURN_IF_ERROR(flush());
  } else {
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(lane.device_descriptors.data(), descs, n * sizeof(DeviceCopyDescriptor),
                                             cudaMemcpyHostToDevice, st),
                             "copying descriptors");
    // Pieces: pack a run of segments into staging, copy that run to the host, mark it; the
    // completion thread scatters piece i while the GPU works on piece i+1.
    size_t pieces = 0;
    uint64_t start = 0;  // staging offset of the piece
    for (size_t seg = 0; seg < segments.size();) {
      size_t end = seg;
      uint64_t bytes = 0;
      while (end < segments.size() && (end == seg || bytes + segments[end].bytes <= options_.cpu_piece_bytes)) {
        bytes += segments[end++].bytes;
      }
      if (lane.pieces.size() <= pieces) {
        Lane::Piece p;
        KVT_ASSIGN_OR_RETURN(p.copied, CudaEvent::Create(options_.device));
        lane.pieces.push_back(std::move(p));
      }
      Lane::Piece& piece = lane.pieces[pieces++];
      piece.first = seg == 0 ? 0 : scatter_end[seg - 1];  // scatter entries of segments [seg, end)
      piece.end = scatter_end[end - 1];
      KVT_RETURN_IF_CUDA_ERROR(
          kernels::LaunchCopyBlocks(dev_descs + first_desc[seg], static_cast<uint32_t>(first_desc[end] - first_desc[seg]),
                                    launch, st),
          "launching the pack kernel");
      KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(lane.host_staging.data() + start, lane.device_staging.data() + start,
                                               bytes, cudaMemcpyDeviceToHost, st),
                               "contiguous device-to-host copy");
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(piece.copied.get(), st), "recording a piece event");
      seg = end;
      start += bytes;
    }
    job.pieces = pieces;
  }
  KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(lane.done.get(), st), "recording the batch event");
  return Status();
}

void GpuMover::LaunchLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || (!ready_.empty() && !free_lanes_.empty()); });
    if (stop_ && ready_.empty()) return;
    if (ready_.empty() || free_lanes_.empty()) continue;
    std::shared_ptr<Job> job = std::move(ready_.front());
    ready_.pop_front();
    Lane* lane = free_lanes_.back();
    free_lanes_.pop_back();
    lock.unlock();
    job->lane = lane;
    job->launched = std::chrono::steady_clock::now();
    if (job->status.ok()) {
      job->status = Launch(*job, *lane);
      // A launch that failed part-way may have left earlier pieces on the GPU: let them finish
      // before the lane (its descriptors and staging) is handed to the next batch.
      if (!job->status.ok()) (void)cudaStreamSynchronize(stream_.get());
    }
    lock.lock();
    launched_.push_back(std::move(job));
    done_cv_.notify_all();
  }
}

void GpuMover::CompleteLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    done_cv_.wait(lock, [&] { return stop_ || !launched_.empty(); });
    if (launched_.empty()) {
      if (stop_) return;
      continue;
    }
    std::shared_ptr<Job> job = std::move(launched_.front());
    launched_.pop_front();
    lock.unlock();
    Status s = job->status;
    if (s.ok() && !to_device_ && job->mode == D2hMode::kCpuAssisted) {
      // Scatter each piece as soon as its copy has landed, while later pieces are in flight.
      Lane& lane = *job->lane;
      for (size_t p = 0; p < job->pieces && s.ok(); ++p) {
        const Lane::Piece& piece = lane.pieces[p];
        s = FromCuda(cudaEventSynchronize(piece.copied.get()), fmt::format("{} piece", name_));
        if (!s.ok()) break;
        counters_->arena.execute([&] {
          tbb::parallel_for(tbb::blocked_range<size_t>(piece.first, piece.end, 2), [&](const tbb::blocked_range<size_t>& r) {
            for (size_t i = r.begin(); i != r.end(); ++i) {
              copier_.CopyUnfenced(lane.scatter[i].second, lane.scatter[i].first, lane.scatter_bytes[i]);
            }
            copier_.Fence();  // streaming stores visible before the batch's fence is signaled
          });
        });
      }
    }
    if (s.ok()) s = FromCuda(cudaEventSynchronize(job->lane->done.get()), fmt::format("{} batch", name_));
    const auto done = std::chrono::steady_clock::now();
    auto ns = [](auto d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
    counters_->stats.RecordBatch(job->batch.segments.size(), job->bytes, s.ok(), ns(done - job->submitted),
                                 ns(done - job->launched));
    Lane* lane = job->lane;
    job->signal.Signal(std::move(s));
    lock.lock();
    if (lane != nullptr) free_lanes_.push_back(lane);
    --outstanding_;
    cv_.notify_all();
    done_cv_.notify_all();
  }
}

MoverStats GpuMover::stats() const { return counters_->stats.Snapshot(name_, src_->kind(), dst_->kind()); }

}  // namespace kvtier
