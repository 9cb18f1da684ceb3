// GpuMover's copy-engine runs (GpuMoverOptions::engine_run_bytes; gpu_mover.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "copy_blocks.cuh"
#include "gpu_mover.h"
#include "gpu_mover_internal.h"

namespace kvtier {

using kernels::DeviceCopyDescriptor;

// Copy-engine runs, piece by piece through the staging ring. Piece j uses ring buffer
// k = j mod engine_pieces; its first use waits for that buffer's previous user (engine_freed_).
//   H2D: engine stream: DRAM runs -> staging k, filled[k]; copy stream: unpack kernel
//        staging k -> HBM slots, freed[k].
//   D2H: copy stream: pack kernel HBM slots -> staging k, filled[k]; engine stream: staging k
//        -> DRAM runs, freed[k].
// A piece is built, its descriptors uploaded and its copies enqueued before the next piece is
// built, so the engines start after one piece of host work, not a whole batch's. The runs of
// a piece go as one cudaMemcpyBatchAsync (one cudaMemcpyAsync when there is one run). Every
// event is recorded and waited for from the launcher thread, in order, so each wait binds to
// the record just before it.
Status GpuMover::LaunchEngineRuns(std::span<const CopySegment> segments, bool uniform, Lane& lane, size_t first_desc) {
  const uint64_t piece_cap = options_.engine_piece_bytes;
  const uint64_t chunk = uniform ? UINT64_MAX : options_.chunk_bytes;
  // Uniform pieces carry their HBM slot list in the pack/unpack kernel's parameters; ragged
  // ones upload descriptors (on the upload stream) for the ragged copy kernel.
  const size_t max_parts = uniform ? kernels::kStagedMaxParts : SIZE_MAX;
  auto* descs = reinterpret_cast<DeviceCopyDescriptor*>(lane.host_descriptors.data()) + first_desc;
  auto* dev_descs = reinterpret_cast<DeviceCopyDescriptor*>(lane.device_descriptors.data()) + first_desc;
  const cudaStream_t st = stream_.get();
  const cudaStream_t eng = options_.engine_streams == 2 ? engine_stream_.get() : st;
  const cudaStream_t up = options_.engine_streams == 2 ? upload_stream_.get() : st;
  const kernels::CopyLaunch launch{.ctas = options_.ctas, .unroll = options_.unroll,
                                   .uniform_bytes = uniform ? segments.front().bytes : 0,
                                   .streaming = options_.streaming};
  kernels::StagedParts& staged = *staged_parts_;
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  size_t n = 0;          // ragged descriptors written
  size_t seg = 0;        // next segment
  uint64_t seg_off = 0;  // next byte of it (ragged chunks)
  while (seg < segments.size()) {
    const uint32_t k = static_cast<uint32_t>(ring_next_++ % options_.engine_pieces);
    std::byte* staging = engine_staging_.data() + uint64_t{k} * piece_cap;
    const size_t first = n;
    size_t parts = 0;
    uint64_t off = 0;
    dsts.clear();
    srcs.clear();
    sizes.clear();
    const std::byte* run_end = nullptr;
    while (seg < segments.size() && parts < max_parts) {
      const CopySegment& c = segments[seg];
      const uint64_t bytes = std::min(chunk, c.bytes - seg_off);
      if (off + bytes > piece_cap) break;
      std::byte* src = const_cast<std::byte*>(SourceSlot(c.src)) + c.src_offset + seg_off;
      std::byte* dst = DestinationSlot(c.dst) + c.dst_offset + seg_off;
      std::byte* hbm = to_device_ ? dst : src;
      std::byte* dram = to_device_ ? src : dst;
      if (uniform) {
        staged.slots[parts] = reinterpret_cast<uint64_t>(hbm);
      } else {
        descs[n++] = to_device_ ? DeviceCopyDescriptor{reinterpret_cast<uint64_t>(staging + off),
                                                       reinterpret_cast<uint64_t>(hbm), bytes, 0}
                                : DeviceCopyDescriptor{reinterpret_cast<uint64_t>(hbm),
                                                       reinterpret_cast<uint64_t>(staging + off), bytes, 0};
      }
      ++parts;
      if (dram == run_end) {
        sizes.back() += bytes;  // extends the piece's current run
      } else {
        dsts.push_back(to_device_ ? static_cast<void*>(staging + off) : static_cast<void*>(dram));
        srcs.push_back(to_device_ ? static_cast<const void*>(dram) : static_cast<const void*>(staging + off));
        sizes.push_back(bytes);
      }
      run_end = dram + bytes;
      off += bytes;
      seg_off += bytes;
      if (seg_off == c.bytes) {
        ++seg;
        seg_off = 0;
      }
    }
    if (parts == 0) return Status::Internal("gpu mover: a copy-engine part larger than engine_piece_bytes");
    if (!uniform) {
      KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(dev_descs + first, descs + first, (n - first) * sizeof(DeviceCopyDescriptor),
                                               cudaMemcpyHostToDevice, up),
                               "copying engine-run descriptors");
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(lane.engine_uploaded.get(), up), "recording a descriptor upload");
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(st, lane.engine_uploaded.get(), 0), "waiting for a descriptor upload");
    }
    auto device_copy = [&](bool pack) -> cudaError_t {
      if (!uniform) return kernels::LaunchCopyBlocks(dev_descs + first, static_cast<uint32_t>(parts), launch, st);
      staged.staging = reinterpret_cast<uint64_t>(staging);
      staged.part_bytes = segments.front().bytes;
      staged.count = static_cast<uint32_t>(parts);
      return kernels::LaunchStagedCopy(staged, pack, launch, st);  // the parameters are copied at launch
    };
    auto engine_copies = [&]() -> Status {
      if (sizes.size() == 1) {
        KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(dsts[0], srcs[0], sizes[0],
                                                 to_device_ ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, eng),
                                 "copy-engine run");
        return Status();
      }
      cudaMemcpyAttributes attr{};
      attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
      size_t attr_index = 0;
      KVT_RETURN_IF_CUDA_ERROR(
          cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), sizes.size(), &attr, &attr_index, 1, eng),
          "copy-engine runs (cudaMemcpyBatchAsync)");
      return Status();
    };
    cudaEvent_t filled = engine_filled_[k].get(), freed = engine_freed_[k].get();
    if (to_device_) {
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(eng, freed, 0), "waiting for a staging buffer");
      KVT_RETURN_IF_ERROR(engine_copies());
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(filled, eng), "recording a staged piece");
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(st, filled, 0), "waiting for a staged piece");
      KVT_RETURN_IF_CUDA_ERROR(device_copy(false), "launching the unpack kernel");
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(freed, st), "recording a free staging buffer");
    } else {
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(st, freed, 0), "waiting for a staging buffer");
      KVT_RETURN_IF_CUDA_ERROR(device_copy(true), "launching the pack kernel");
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(filled, st), "recording a packed piece");
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(eng, filled, 0), "waiting for a packed piece");
      KVT_RETURN_IF_ERROR(engine_copies());
      KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(freed, eng), "recording a free staging buffer");
    }
  }
  return Status();
}

}  // namespace kvtier
