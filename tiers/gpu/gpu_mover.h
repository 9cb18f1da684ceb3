// GpuMover: moves blocks between the pinned DRAM pool and the HBM tier.
//
//   DRAM -> HBM (FlashH2D): one gather kernel per batch reads the DRAM slots through UVA — by
//     default with TMA bulk copies from 16 one-warp CTAs (CopyKernel::kAuto), which leave the
//     SMs to the engine's own kernels.
//   HBM -> DRAM (FlashD2H): kKernel — one scatter kernel writes the DRAM slots through UVA;
//     kCpuAssisted — a gather kernel packs the blocks into a device staging buffer, one
//     contiguous cudaMemcpyAsync brings them to a pinned staging buffer, and TBB threads
//     scatter them into the DRAM slots (no SMs spent on PCIe); kAuto — per block size, from
//     the TransferProfile (`kvtier probe`), the kernel when there is none.
//
// Copy-engine runs (both directions): where consecutive segments of a batch sit in adjacent
// DRAM slots for at least `engine_run_bytes`, that run crosses PCIe as one cudaMemcpyAsync
// between the DRAM slots and a device staging piece, and a copy kernel moves the blocks
// between the staging piece and their HBM slots (device to device). The copy engines issue
// large PCIe requests; SM-issued loads and stores do not, and on an H100 PCIe host the gather
// and scatter kernels together cap near 60-64 GB/s where the two engines move ~100
// (docs/benchmarks.md). SlotPool hands out slots reserved together as one ascending run, so
// blocks offloaded in one batch form such runs, and so do their later loads.
//
// Every batch waits (on the host, without blocking the mover's threads) for the fences in
// its wait_for — the producers of its source bytes and the last users of its destination
// slots — before anything is launched. Each mover owns its streams (copy and descriptor
// upload), its events and its staging; up to `max_in_flight` batches are on the GPU at once.
// Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cuda_util.h"
#include "kvtier/mover.h"
#include "kvtier/tier.h"
#include "stream_copy.h"
#include "transfer_profile.h"

namespace kvtier::kernels {
struct StagedParts;  // copy_blocks.cuh
struct CopyLaunch;   // copy_blocks.cuh
}  // namespace kvtier::kernels

namespace kvtier {

// Where the kernel paths upload each launch piece's descriptors (pinned host -> device).
enum class DescriptorUpload {
  // On the copy stream, right before the piece's kernel: the upload of piece i + 1 waits for
  // kernel i to finish and kernel i + 1 for the upload (a copy-engine round trip between
  // every two kernels, slower still while the other direction loads the link).
  kInline,
  // On the mover's upload stream, as soon as the piece is built; kernel i + 1 waits for its
  // upload through an event and so queues directly behind kernel i.
  kSideStream,
};
std::string_view DescriptorUploadName(DescriptorUpload upload);
Result<DescriptorUpload> ParseDescriptorUpload(std::string_view name);  // "inline" or "side"

// How the H2D gather and D2H scatter kernels move bytes across PCIe.
enum class CopyKernel {
  // 16-byte loads and stores from every thread (several in flight per thread), as many CTAs
  // as the work and ctas_per_sm allow: the whole GPU while a batch crosses.
  kLoads,
  // Tensor Memory Accelerator bulk copies (cp.async.bulk) through shared-memory stages, one
  // warp per CTA, 16 CTAs: the same PCIe rate from ~0.4% of the warps.
  kBulk,
  // kBulk for H2D, kLoads for D2H. Measured on an H100 (docs/benchmarks.md, "Bulk copies"):
  // alone, either kernel moves the same GB/s both ways; next to a device-bound kernel on every
  // SM, that kernel keeps 82-84% of its HBM rate beside the bulk gather against 53-54% beside
  // the loads one, while beside the bulk scatter it keeps no more than beside the loads one
  // (53-66%) and the scatter itself slows more.
  kAuto,
};
std::string_view CopyKernelName(CopyKernel kernel);
Result<CopyKernel> ParseCopyKernel(std::string_view name);  // "loads", "bulk" or "auto"

struct GpuMoverOptions {
  int device = 0;
  D2hMode d2h_mode = D2hMode::kAuto;
  uint64_t chunk_bytes = 64 << 10;  // ragged batches: descriptors split into pieces of at most this
  uint32_t ctas = 0;                // copy kernel blocks; 0 = sized to the work, capped per SM:
  // with ctas = 0, at most this many copy kernel blocks per SM (1..8); 0 = by direction: 4 for
  // H2D (gather) and 2 for the D2H scatter kernel, where 2 measured 0.908 of a contiguous copy
  // against 0.890 for 4 at 16 KiB blocks (64 KiB: 0.926 vs 0.931; H100, medians of 5 and 3 runs,
  // docs/benchmarks.md). The CPU-assisted path's pack kernel (device to device) keeps 4.
  uint32_t ctas_per_sm = 0;
  uint32_t unroll = 4;              // 16-byte loads in flight per thread (4 or 8)
  CopyKernel copy_kernel = CopyKernel::kAuto;
  // kBulk: chunks of at most this many bytes (a multiple of 16, <= 64 KiB) through
  // `bulk_stages` shared-memory stages per CTA (2..8); `ctas` then counts one-warp CTAs (0 =
  // 16) and ctas_per_sm, unroll and streaming do not apply.
  uint32_t bulk_chunk_bytes = 16 << 10;
  uint32_t bulk_stages = 4;
  bool streaming = false;           // evict-first loads and stores in the copy kernel
  uint32_t cpu_threads = 8;         // CPU-assisted scatter threads
  // How those threads copy: kAuto = non-temporal stores (AVX-512, else AVX2), which skip
  // the read-for-ownership of the DRAM slots (2 instead of 3 bytes of DRAM traffic per byte;
  // `kvtier bench host-scatter`); kMemcpy = plain memcpy. A path this CPU lacks fails Create.
  HostCopyPath cpu_copy = HostCopyPath::kAuto;
  // CPU-assisted D2H is pipelined in pieces of this many bytes: the CPU scatters piece i
  // while the GPU packs and copies piece i+1.
  uint64_t cpu_piece_bytes = 16 << 20;
  uint32_t max_in_flight = 4;       // batches launched and not yet completed
  // Kernel paths: a batch is launched in pieces of about this many bytes, so the GPU copies
  // piece i while the host builds (and uploads) the descriptors of piece i + 1 — at 4 KiB
  // blocks building a 1 GiB batch's 262,144 descriptors is milliseconds of host time, which
  // one launch per batch would add to the copy. 0 = one launch per batch; else >= 1 MiB.
  uint64_t launch_bytes = 32 << 20;
  // The first piece of a batch, so the GPU starts after microseconds of host work instead of
  // a whole launch_bytes piece's; each next piece doubles, up to launch_bytes. 0 = every
  // piece launch_bytes; else >= 64 KiB. Ignored when launch_bytes is 0.
  uint64_t first_launch_bytes = 1 << 20;
  DescriptorUpload descriptor_upload = DescriptorUpload::kSideStream;
  // Runs of adjacent DRAM slots of at least this many bytes go by the copy engines (above).
  // 0 = never: every block by the SM kernels (or the CPU-assisted path). Else >= 64 KiB.
  // 128 KiB: with both directions at once over a churned pool (requests of 8..256 blocks) it
  // moved 0.92-0.96 of the contiguous pair at 16 KiB blocks against 0.83-0.86 at 256 KiB and
  // 0.75 at 1 MiB (H100, alternating runs; 64 KiB blocks: 0.96-0.98 either way), one
  // direction alone unchanged. At 64 KiB every 64 KiB block is a run of its own and H2D alone
  // fell to 0.60 (docs/benchmarks.md).
  uint64_t engine_run_bytes = 128 << 10;
  // The copy-engine path stages through a ring of `engine_pieces` device buffers of
  // `engine_piece_bytes` (>= 1 MiB and >= chunk_bytes; 2..64 pieces), so the engines copy
  // piece i while a kernel packs or unpacks piece i + 1. Allocated when engine_run_bytes > 0.
  uint64_t engine_piece_bytes = 8 << 20;
  uint32_t engine_pieces = 4;
  // 2: the engine copies on their own stream, overlapping the pack/unpack kernels; 1: copies,
  // descriptor uploads and kernels in order on the copy stream (a diagnostic: no cross-stream
  // waits, but copy and kernel serialize per piece; both directions measured ~0.71 of the
  // contiguous pair against ~0.92 with 2, H200).
  uint32_t engine_streams = 2;
  TransferProfile profile;          // for kAuto; empty = the kernel everywhere
  Status Validate() const;
};

class GpuMover final : public Mover {
 public:
  // `source` and `destination` are a device-addressable DRAM tier and a GPU HBM tier (either
  // order); both are borrowed and must outlive the mover.
  static Result<std::unique_ptr<GpuMover>> Create(Tier* source, Tier* destination, GpuMoverOptions options);
  ~GpuMover() override;  // completes every submitted batch first

  std::string_view name() const override { return name_; }
  TierKind source() const override { return src_->kind(); }
  TierKind destination() const override { return dst_->kind(); }
  Fence Submit(MoveBatch batch) override;
  MoverStats stats() const override;

  // The D2H path a batch of `block_bytes` blocks takes (kKernel for H2D movers).
  D2hMode ModeFor(uint64_t block_bytes) const;
  // The copy kernel of the kernel path (options' copy_kernel, kAuto resolved by direction).
  CopyKernel copy_kernel() const;
  // The launch of that kernel for a batch of segments all of `uniform_bytes` (0 = ragged).
  kernels::CopyLaunch KernelLaunch(uint64_t uniform_bytes) const;
  // The copy the CPU-assisted scatter uses (options' cpu_copy, kAuto resolved).
  HostCopyPath cpu_copy_path() const { return copier_.path(); }

 private:
  struct Job;
  struct Lane;
  struct Counters;
  GpuMover(Tier* source, Tier* destination, GpuMoverOptions options);
  Status Init();
  void LaunchLoop();
  void CompleteLoop();
  Status Launch(Job& job, Lane& lane);
  // The three paths, each on the segments it is given; `first_desc` is the first of the
  // lane's descriptor slots it may use.
  Status LaunchKernelPieces(std::span<const CopySegment> segments, bool uniform, Lane& lane, size_t first_desc);
  Status LaunchCpuAssisted(Job& job, std::span<const CopySegment> segments, uint64_t bytes, Lane& lane);
  Status LaunchEngineRuns(std::span<const CopySegment> segments, bool uniform, Lane& lane, size_t first_desc);
  // The DRAM address of a segment (its source for H2D, its destination for D2H).
  const std::byte* DramAddress(const CopySegment& c) const;
  // Address of a slot (the tier's Locate).
  const std::byte* SourceSlot(SlotId slot) const;
  std::byte* DestinationSlot(SlotId slot) const;

  Tier* src_;
  Tier* dst_;
  GpuMoverOptions options_;
  bool to_device_;
  std::string name_;
  int sm_count_ = 0;
  StreamCopier copier_;  // CPU-assisted scatter (options_.cpu_copy, resolved)
  CudaStream stream_;         // copies (kernels, CPU-assisted D2H memcpys), in batch order
  CudaStream upload_stream_;  // descriptor uploads (DescriptorUpload::kSideStream)
  CudaStream engine_stream_;  // copy-engine runs (DRAM <-> staging)
  // The copy-engine path's staging ring; only the launcher thread uses ring_next_.
  DeviceBuffer engine_staging_;
  std::vector<CudaEvent> engine_filled_, engine_freed_;  // per piece: data staged; staging free again
  std::unique_ptr<kernels::StagedParts> staged_parts_;    // a uniform piece's slot list (32 KiB)
  uint64_t ring_next_ = 0;
  std::unique_ptr<Counters> counters_;

  std::mutex mu_;
  std::condition_variable cv_;       // launch queue or free lanes changed
  std::condition_variable done_cv_;  // launched queue changed or work drained
  std::deque<std::shared_ptr<Job>> ready_;     // fences met, waiting for a lane
  std::deque<std::shared_ptr<Job>> launched_;  // on the GPU, in stream order
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::vector<Lane*> free_lanes_;
  size_t outstanding_ = 0;  // submitted and not yet signaled
  bool stop_ = false;
  std::thread launcher_;
  std::thread completer_;
};

}  // namespace kvtier
