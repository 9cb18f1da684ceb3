#include "gpu_mover.h"

#include <fmt/format.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <variant>

#include "copy_blocks.cuh"
#include "gpu_mover_internal.h"
#include "memcpy_mover.h"  // ValidateSegments
#include "mover_counters.h"

namespace kvtier {

using kernels::DeviceCopyDescriptor;

// Copy kernel blocks per SM of the D2H scatter kernel by default (GpuMoverOptions::ctas_per_sm).
constexpr uint32_t kD2hCtasPerSm = 2;

struct GpuMover::Counters {
  MoverCounters stats;
  tbb::task_arena arena;  // the mover's own CPU threads
  explicit Counters(int threads) : arena(threads) {}
};

std::string_view DescriptorUploadName(DescriptorUpload upload) {
  return upload == DescriptorUpload::kInline ? "inline" : "side";
}

Result<DescriptorUpload> ParseDescriptorUpload(std::string_view name) {
  if (name == "inline") return DescriptorUpload::kInline;
  if (name == "side") return DescriptorUpload::kSideStream;
  return Status::InvalidArgument(fmt::format("descriptor upload '{}' (inline or side)", name));
}

std::string_view CopyKernelName(CopyKernel kernel) {
  switch (kernel) {
    case CopyKernel::kLoads: return "loads";
    case CopyKernel::kBulk: return "bulk";
    case CopyKernel::kAuto: return "auto";
  }
  return "?";
}

Result<CopyKernel> ParseCopyKernel(std::string_view name) {
  for (CopyKernel k : {CopyKernel::kLoads, CopyKernel::kBulk, CopyKernel::kAuto}) {
    if (name == CopyKernelName(k)) return k;
  }
  return Status::InvalidArgument(fmt::format("copy kernel '{}' (loads, bulk or auto)", name));
}

Status GpuMoverOptions::Validate() const {
  if (device < 0) return Status::InvalidArgument(fmt::format("gpu mover: device {}", device));
  if (chunk_bytes < 16 || chunk_bytes % 16 != 0) {
    return Status::InvalidArgument(fmt::format("gpu mover: chunk_bytes {} is not a multiple of 16", chunk_bytes));
  }
  if (cpu_threads == 0 || cpu_threads > 256) return Status::InvalidArgument("gpu mover: cpu_threads out of [1, 256]");
  if (max_in_flight == 0 || max_in_flight > 64) return Status::InvalidArgument("gpu mover: max_in_flight out of [1, 64]");
  if (unroll != 4 && unroll != 8) return Status::InvalidArgument(fmt::format("gpu mover: unroll {} (4 or 8)", unroll));
  if (ctas_per_sm > 8) return Status::InvalidArgument(fmt::format("gpu mover: ctas_per_sm {} (0..8)", ctas_per_sm));
  if (cpu_piece_bytes < (1u << 20)) return Status::InvalidArgument("gpu mover: cpu_piece_bytes below 1 MiB");
  if (launch_bytes != 0 && launch_bytes < (1u << 20)) return Status::InvalidArgument("gpu mover: launch_bytes below 1 MiB");
  if (first_launch_bytes != 0 && first_launch_bytes < (64u << 10)) {
    return Status::InvalidArgument("gpu mover: first_launch_bytes below 64 KiB");
  }
  if (descriptor_upload != DescriptorUpload::kInline && descriptor_upload != DescriptorUpload::kSideStream) {
    return Status::InvalidArgument("gpu mover: unknown descriptor_upload");
  }
  if (copy_kernel != CopyKernel::kLoads && copy_kernel != CopyKernel::kBulk && copy_kernel != CopyKernel::kAuto) {
    return Status::InvalidArgument("gpu mover: unknown copy_kernel");
  }
  if (bulk_chunk_bytes == 0 || bulk_chunk_bytes % 16 != 0 || bulk_chunk_bytes > kernels::kBulkMaxChunk) {
    return Status::InvalidArgument(
        fmt::format("gpu mover: bulk_chunk_bytes {} (a positive multiple of 16 up to 64 KiB)", bulk_chunk_bytes));
  }
  if (bulk_stages < 2 || bulk_stages > kernels::kBulkMaxStages) {
    return Status::InvalidArgument(fmt::format("gpu mover: bulk_stages {} out of [2, 8]", bulk_stages));
  }
  if (engine_run_bytes != 0) {
    if (engine_run_bytes < (64u << 10)) {
      return Status::InvalidArgument(fmt::format("gpu mover: engine_run_bytes {} below 64 KiB (0 = off)", engine_run_bytes));
    }
    if (engine_piece_bytes < (1u << 20) || engine_piece_bytes < chunk_bytes || engine_piece_bytes % 16 != 0) {
      return Status::InvalidArgument(fmt::format(
          "gpu mover: engine_piece_bytes {} (a multiple of 16, >= 1 MiB and >= chunk_bytes {})", engine_piece_bytes,
          chunk_bytes));
    }
    if (engine_pieces < 2 || engine_pieces > 64) {
      return Status::InvalidArgument(fmt::format("gpu mover: engine_pieces {} out of [2, 64]", engine_pieces));
    }
    if (engine_streams != 1 && engine_streams != 2) {
      return Status::InvalidArgument(fmt::format("gpu mover: engine_streams {} (1 or 2)", engine_streams));
    }
  }
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
  KVT_ASSIGN_OR_RETURN(upload_stream_, CudaStream::Create(options_.device));
  if (options_.engine_run_bytes != 0) {
    KVT_ASSIGN_OR_RETURN(engine_stream_, CudaStream::Create(options_.device));
    staged_parts_ = std::make_unique<kernels::StagedParts>();
    KVT_ASSIGN_OR_RETURN(engine_staging_, DeviceBuffer::Allocate(options_.device, options_.engine_piece_bytes *
                                                                                      options_.engine_pieces));
    for (uint32_t i = 0; i < options_.engine_pieces; ++i) {
      KVT_ASSIGN_OR_RETURN(CudaEvent filled, CudaEvent::Create(options_.device));
      KVT_ASSIGN_OR_RETURN(CudaEvent freed, CudaEvent::Create(options_.device));
      engine_filled_.push_back(std::move(filled));
      engine_freed_.push_back(std::move(freed));
    }
  }
  for (uint32_t i = 0; i < options_.max_in_flight; ++i) {
    auto lane = std::make_unique<Lane>();
    KVT_ASSIGN_OR_RETURN(lane->uploaded, CudaEvent::Create(options_.device));
    KVT_ASSIGN_OR_RETURN(lane->engine_uploaded, CudaEvent::Create(options_.device));
    KVT_ASSIGN_OR_RETURN(lane->engine_done, CudaEvent::Create(options_.device));
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

const std::byte* GpuMover::SourceSlot(SlotId slot) const {
  return std::get<MemoryAddress>(src_->Locate(slot)).ptr;
}

std::byte* GpuMover::DestinationSlot(SlotId slot) const {
  return std::get<MemoryAddress>(dst_->Locate(slot)).ptr;
}

Fence GpuMover::Submit(MoveBatch batch) {
  // One branch-free pass over the segments (at 4 KiB blocks a 1 GiB batch has 262,144 of
  // them, and this runs on the caller's thread before anything moves): the checks of
  // ValidateSegments plus 16-byte alignment, the byte total and whether the batch is uniform.
  // Only a batch that fails goes through the per-check passes, for their messages.
  const TierCaps& sc = src_->caps();
  const TierCaps& dc = dst_->caps();
  const uint64_t src_slots = sc.slot_count, dst_slots = dc.slot_count;
  const uint64_t src_bytes = sc.slot_bytes, dst_bytes = dc.slot_bytes;
  const auto& segments = batch.segments;
  const uint64_t first_bytes = segments.empty() ? 0 : segments.front().bytes;
  bool bad = false, uniform = !segments.empty();
  uint64_t total = 0;
  for (const CopySegment& c : segments) {
    const uint64_t src_end = c.src_offset + c.bytes, dst_end = c.dst_offset + c.bytes;
    bad |= (c.bytes == 0) | (c.src.value() >= src_slots) | (c.dst.value() >= dst_slots) | (src_end > src_bytes) |
           (dst_end > dst_bytes) | (src_end < c.bytes) | (dst_end < c.bytes) |
           (((c.bytes | c.src_offset | c.dst_offset) & 15u) != 0);
    uniform &= c.bytes == first_bytes;
    total += c.bytes;
  }
  if (bad) {
    Status s = ValidateSegments(batch, *src_, *dst_);
    for (size_t i = 0; s.ok() && i < segments.size(); ++i) {
      const CopySegment& c = segments[i];
      if (c.bytes % 16 != 0 || c.src_offset % 16 != 0 || c.dst_offset % 16 != 0) {
        s = Status::InvalidArgument(fmt::format("segment {} ({} B at offsets {} -> {}) is not 16-byte aligned", i,
                                                c.bytes, c.src_offset, c.dst_offset));
      }
    }
    KVT_CHECK_MSG(!s.ok(), "gpu mover: the fused segment check and ValidateSegments disagree");
    counters_->stats.RecordRejected();
    return Fence::Failed(std::move(s).Annotate(name_));
  }
  auto [fence, signal] = Fence::Make();
  auto job = std::make_shared<Job>();
  job->signal = std::move(signal);
  job->submitted = std::chrono::steady_clock::now();
  job->bytes = total;
  job->uniform = uniform;
  job->mode = segments.empty() ? D2hMode::kKernel : ModeFor(first_bytes);
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

const std::byte* GpuMover::DramAddress(const CopySegment& c) const {
  return to_device_ ? SourceSlot(c.src) + c.src_offset : DestinationSlot(c.dst) + c.dst_offset;
}

namespace {

// Descriptors a segment takes: one in a uniform batch, else one per chunk.
size_t DescriptorsOf(const CopySegment& c, bool uniform, uint64_t chunk) {
  return uniform ? 1 : (c.bytes + chunk - 1) / chunk;
}

}  // namespace

Status GpuMover::Launch(Job& job, Lane& lane) {
  DeviceGuard guard(options_.device);
  const std::span<const CopySegment> segments = job.batch.segments;
  // Runs of segments in adjacent DRAM slots, at least engine_run_bytes long, go by the copy
  // engines; the rest by the kernels (or the CPU-assisted path). A batch with no such run
  // (blocks at scattered slots) takes the kernel paths as before, and one that is all runs
  // the engines; only a mixed batch is copied into two lists.
  std::vector<std::pair<size_t, size_t>> runs;  // [first, end) segments of each engine run
  if (options_.engine_run_bytes != 0 && !segments.empty()) {
    size_t run_start = 0;
    uint64_t run_bytes = 0;
    const std::byte* run_end = nullptr;
    for (size_t i = 0; i <= segments.size(); ++i) {
      const std::byte* at = i < segments.size() ? DramAddress(segments[i]) : nullptr;
      if (i == segments.size() || (i > 0 && at != run_end)) {
        if (run_bytes >= options_.engine_run_bytes) {
          runs.emplace_back(run_start, i);
          job.engine_bytes += run_bytes;
        }
        run_start = i;
        run_bytes = 0;
      }
      if (i < segments.size()) {
        run_bytes += segments[i].bytes;
        run_end = at + segments[i].bytes;
      }
    }
  }
  std::vector<CopySegment> engine, rest;
  std::span<const CopySegment> by_engine, by_kernel = segments;
  if (job.engine_bytes == job.bytes && job.bytes != 0) {
    by_engine = segments;
    by_kernel = {};
  } else if (!runs.empty()) {
    size_t at = 0;
    for (auto [first, end] : runs) {
      rest.insert(rest.end(), segments.begin() + static_cast<ptrdiff_t>(at), segments.begin() + static_cast<ptrdiff_t>(first));
      engine.insert(engine.end(), segments.begin() + static_cast<ptrdiff_t>(first), segments.begin() + static_cast<ptrdiff_t>(end));
      at = end;
    }
    rest.insert(rest.end(), segments.begin() + static_cast<ptrdiff_t>(at), segments.end());
    by_engine = engine;
    by_kernel = rest;
  }
  // Uniform batches (every segment the same size: whole blocks or slices) take the flat
  // kernel with one descriptor per segment; ragged ones are split into chunks.
  size_t kernel_count = 0, engine_count = 0;
  for (const CopySegment& c : by_kernel) kernel_count += DescriptorsOf(c, job.uniform, options_.chunk_bytes);
  const bool engine_uniform = job.uniform && !by_engine.empty() && by_engine.front().bytes <= options_.engine_piece_bytes;
  if (!engine_uniform) {  // uniform engine pieces pass their slots as kernel parameters
    for (const CopySegment& c : by_engine) engine_count += DescriptorsOf(c, false, options_.chunk_bytes);
  }
  const size_t desc_bytes = std::max<size_t>(kernel_count + engine_count, 1) * sizeof(DeviceCopyDescriptor);
  if (lane.host_descriptors.size() < desc_bytes) {
    KVT_ASSIGN_OR_RETURN(lane.host_descriptors, PinnedBuffer::Allocate(desc_bytes * 2));
    KVT_ASSIGN_OR_RETURN(lane.device_descriptors, DeviceBuffer::Allocate(options_.device, desc_bytes * 2));
  }
  // A mixed batch: the copy stream runs the kernels of one part behind the other. The staging
  // ring lets the engines run ahead of the copy stream by engine_pieces pieces, so H2D
  // enqueues the gather first (the engines fill the ring meanwhile) and D2H the packs first
  // (the engines drain the ring while the scatter kernel runs).
  auto by_kernels = [&]() -> Status {
    if (by_kernel.empty()) return Status();
    const bool cpu_assisted = !to_device_ && job.mode == D2hMode::kCpuAssisted;
    return cpu_assisted ? LaunchCpuAssisted(job, by_kernel, job.bytes - job.engine_bytes, lane)
                        : LaunchKernelPieces(by_kernel, job.uniform, lane, 0);
  };
  if (to_device_) KVT_RETURN_IF_ERROR(by_kernels());
  if (!by_engine.empty()) KVT_RETURN_IF_ERROR(LaunchEngineRuns(by_engine, engine_uniform, lane, kernel_count));
  if (!to_device_) KVT_RETURN_IF_ERROR(by_kernels());
  if (!by_engine.empty() && !to_device_) {
    // The batch is done when its last engine copy has landed too.
    KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(lane.engine_done.get(), engine_stream_.get()), "recording engine runs");
    KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(stream_.get(), lane.engine_done.get(), 0), "waiting for engine runs");
  }
  KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(lane.done.get(), stream_.get()), "recording the batch event");
  return Status();
}

CopyKernel GpuMover::copy_kernel() const {
  if (options_.copy_kernel != CopyKernel::kAuto) return options_.copy_kernel;
  return to_device_ ? CopyKernel::kBulk : CopyKernel::kLoads;
}

kernels::CopyLaunch GpuMover::KernelLaunch(uint64_t uniform_bytes) const {
  const bool bulk = copy_kernel() == CopyKernel::kBulk;
  const uint32_t per_sm = options_.ctas_per_sm != 0 ? options_.ctas_per_sm : to_device_ ? 4u : kD2hCtasPerSm;
  return kernels::CopyLaunch{.ctas = options_.ctas, .ctas_per_sm = per_sm, .unroll = options_.unroll,
                             .uniform_bytes = uniform_bytes, .streaming = options_.streaming,
                             .bulk_chunk = bulk ? options_.bulk_chunk_bytes : 0, .bulk_stages = options_.bulk_stages};
}

// Kernel paths: descriptors [flushed, n) are uploaded and launched while the next ones are
// built. Every piece has its own range of the lane's descriptor buffers, so nothing a queued
// upload or kernel reads is rewritten within the batch; the lane (and so its buffers) is
// reused only after `done` — recorded behind the last kernel, which waited for every
// upload — has completed.
Status GpuMover::LaunchKernelPieces(std::span<const CopySegment> segments, bool uniform, Lane& lane, size_t first_desc) {
  auto* descs = reinterpret_cast<DeviceCopyDescriptor*>(lane.host_descriptors.data()) + first_desc;
  const auto* dev_descs = reinterpret_cast<const DeviceCopyDescriptor*>(lane.device_descriptors.data()) + first_desc;
  const cudaStream_t st = stream_.get();
  const bool side = options_.descriptor_upload == DescriptorUpload::kSideStream;
  const cudaStream_t up = side ? upload_stream_.get() : st;
  const kernels::CopyLaunch launch = KernelLaunch(uniform ? segments.front().bytes : 0);
  const uint64_t launch_bytes = options_.launch_bytes == 0 ? UINT64_MAX : options_.launch_bytes;
  uint64_t target = options_.launch_bytes == 0 || options_.first_launch_bytes == 0
                        ? launch_bytes
                        : std::min(options_.first_launch_bytes, launch_bytes);
  size_t n = 0, flushed = 0;
  uint64_t pending = 0;
  auto flush = [&]() -> Status {
    if (n == flushed) return Status();
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(const_cast<DeviceCopyDescriptor*>(dev_descs) + flushed, descs + flushed, (n - flushed) * sizeof(DeviceCopyDescriptor),
                                             cudaMemcpyHostToDevice, up),
                             "copying descriptors");
    if (side) {
      // The wait binds to this record; re-recording the event for the next piece is safe.
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(lane.uploaded.get(), up), "recording a descriptor upload");
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(st, lane.uploaded.get(), 0), "waiting for a descriptor upload");
    }
    KVT_RETURN_IF_CUDA_ERROR(kernels::LaunchCopyBlocks(dev_descs + flushed, static_cast<uint32_t>(n - flushed), launch, st),
                             "launching the copy kernel");
    flushed = n;
    pending = 0;
    target = target > launch_bytes / 2 ? launch_bytes : target * 2;
    return Status();
  };
  if (uniform) {
    for (const CopySegment& c : segments) {
      descs[n++] = DeviceCopyDescriptor{reinterpret_cast<uint64_t>(SourceSlot(c.src) + c.src_offset),
                                        reinterpret_cast<uint64_t>(DestinationSlot(c.dst) + c.dst_offset), c.bytes, 0};
      pending += c.bytes;
      if (pending >= target) KVT_RETURN_IF_ERROR(flush());
    }
  } else {
    const uint64_t chunk = options_.chunk_bytes;
    for (const CopySegment& c : segments) {
      const std::byte* s = SourceSlot(c.src) + c.src_offset;
      std::byte* d = DestinationSlot(c.dst) + c.dst_offset;
      for (uint64_t off = 0; off < c.bytes; off += chunk) {
        descs[n++] = DeviceCopyDescriptor{reinterpret_cast<uint64_t>(s + off), reinterpret_cast<uint64_t>(d + off),
                                          std::min<uint64_t>(chunk, c.bytes - off), 0};
      }
      pending += c.bytes;
      if (pending >= target) KVT_RETURN_IF_ERROR(flush());
    }
  }
  return flush();
}

// CPU-assisted D2H: pack a run of segments into device staging, copy that run to pinned
// staging, mark it; the completion thread scatters piece i while the GPU works on piece i+1.
Status GpuMover::LaunchCpuAssisted(Job& job, std::span<const CopySegment> segments, uint64_t bytes_total, Lane& lane) {
  if (lane.device_staging.size() < bytes_total) {
    lane.device_staging = DeviceBuffer();
    lane.host_staging = PinnedBuffer();
    KVT_ASSIGN_OR_RETURN(lane.device_staging, DeviceBuffer::Allocate(options_.device, bytes_total));
    KVT_ASSIGN_OR_RETURN(lane.host_staging, PinnedBuffer::Allocate(bytes_total));
  }
  auto* descs = reinterpret_cast<DeviceCopyDescriptor*>(lane.host_descriptors.data());
  const auto* dev_descs = reinterpret_cast<const DeviceCopyDescriptor*>(lane.device_descriptors.data());
  const cudaStream_t st = stream_.get();
  const kernels::CopyLaunch launch{.ctas = options_.ctas, .unroll = options_.unroll,
                                   .uniform_bytes = job.uniform ? segments.front().bytes : 0,
                                   .streaming = options_.streaming};
  lane.scatter.clear();
  lane.scatter_bytes.clear();
  std::vector<size_t> scatter_end;  // per segment, the end of its scatter pieces
  std::vector<size_t> first_desc;   // per segment, its first descriptor
  scatter_end.reserve(segments.size());
  first_desc.reserve(segments.size() + 1);
  size_t n = 0;
  uint64_t staged = 0;
  for (const CopySegment& c : segments) {
    first_desc.push_back(n);
    const std::byte* s = SourceSlot(c.src) + c.src_offset;
    std::byte* d = DestinationSlot(c.dst) + c.dst_offset;
    // Scatter work in pieces of at most 256 KiB, so large blocks spread over the threads.
    constexpr uint64_t kScatterPiece = 256 << 10;
    for (uint64_t off = 0; off < c.bytes; off += kScatterPiece) {
      lane.scatter.emplace_back(lane.host_staging.data() + staged + off, d + off);
      lane.scatter_bytes.push_back(std::min(kScatterPiece, c.bytes - off));
    }
    scatter_end.push_back(lane.scatter.size());
    d = lane.device_staging.data() + staged;  // pack on the device first
    staged += c.bytes;
    const uint64_t piece = job.uniform ? c.bytes : options_.chunk_bytes;
    for (uint64_t off = 0; off < c.bytes; off += piece) {
      descs[n++] = DeviceCopyDescriptor{reinterpret_cast<uint64_t>(s + off), reinterpret_cast<uint64_t>(d + off),
                                        std::min<uint64_t>(piece, c.bytes - off), 0};
    }
  }
  first_desc.push_back(n);
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(lane.device_descriptors.data(), descs, n * sizeof(DeviceCopyDescriptor),
                                           cudaMemcpyHostToDevice, st),
                           "copying descriptors");
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
      // A launch that failed part-way may have left earlier pieces (kernels, uploads) on the
      // GPU: let them finish before the lane (its descriptors and staging) is handed to the
      // next batch. The batch's fence reports the failure.
      if (!job->status.ok()) {
        (void)cudaStreamSynchronize(stream_.get());
        (void)cudaStreamSynchronize(upload_stream_.get());
        if (options_.engine_run_bytes != 0) (void)cudaStreamSynchronize(engine_stream_.get());
      }
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
    // A launched batch's event is waited for even when a piece failed above: the lane is
    // handed back only after its last use on the GPU is over.
    if (job->status.ok() && job->lane != nullptr) {
      Status batch = FromCuda(cudaEventSynchronize(job->lane->done.get()), fmt::format("{} batch", name_));
      if (s.ok()) s = std::move(batch);
    }
    const auto done = std::chrono::steady_clock::now();
    auto ns = [](auto d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
    counters_->stats.RecordBatch(job->batch.segments.size(), job->bytes, s.ok(), ns(done - job->submitted),
                                 ns(done - job->launched));
    if (s.ok()) counters_->stats.RecordEngineBytes(job->engine_bytes);
    // The lane's last use (done, or the failure path's synchronize) is over: hand it back
    // before signaling, so a batch submitted by the fence's waiter finds it free.
    lock.lock();
    if (job->lane != nullptr) free_lanes_.push_back(job->lane);
    cv_.notify_all();
    lock.unlock();
    job->signal.Signal(std::move(s));
    lock.lock();
    --outstanding_;
    cv_.notify_all();
    done_cv_.notify_all();
  }
}

MoverStats GpuMover::stats() const { return counters_->stats.Snapshot(name_, src_->kind(), dst_->kind()); }

}  // namespace kvtier
