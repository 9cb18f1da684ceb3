// GpuMover's per-batch state (a submitted batch, and the GPU resources a launched batch uses),
// shared by gpu_mover.cc (submission, the kernel and CPU-assisted paths, completion) and
// gpu_mover_engine.cc (the copy-engine runs). Not part of the interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "gpu_mover.h"

namespace kvtier {

struct GpuMover::Job {
  MoveBatch batch;
  FenceSignal signal;
  std::chrono::steady_clock::time_point submitted, launched;
  uint64_t bytes = 0;
  bool uniform = false;  // every segment the same size: one descriptor per segment
  D2hMode mode = D2hMode::kKernel;
  Status status;  // a launch failure, reported at completion
  Lane* lane = nullptr;
  size_t pieces = 0;  // CPU-assisted D2H: pieces launched in lane->pieces
  uint64_t engine_bytes = 0;  // of `bytes`, those in copy-engine runs
};

// Resources of one batch on the GPU. Reused once the batch's event has completed.
struct GpuMover::Lane {
  PinnedBuffer host_descriptors;
  DeviceBuffer device_descriptors;
  DeviceBuffer device_staging;  // CPU-assisted D2H only
  PinnedBuffer host_staging;
  CudaEvent uploaded;  // kSideStream: after the latest piece's descriptor upload
  CudaEvent engine_uploaded;  // after the upload of the copy-engine path's descriptors
  CudaEvent engine_done;      // D2H: after the batch's last copy-engine run
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

}  // namespace kvtier
