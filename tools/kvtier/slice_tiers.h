// The tiers of the sparse-path benches that replay slice loads (`kvtier bench slice-cache`,
// `kvtier bench admission`): DRAM blocks, an HBM tier of slice-sized slots and the DRAM → HBM
// mover — the emulated HBM tier with MemcpyMover, or (CUDA builds, on a GPU) the GPU tier with
// GpuMover reading pinned DRAM, so the same replay measures the real data path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "host_tier.h"
#include "kvtier/mover.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"

namespace kvtier::cli {

enum class SliceTierKind : uint8_t { kEmulated, kGpu };

// "emulated" or "gpu"; false for anything else.
bool ParseSliceTierKind(const std::string& name, SliceTierKind* kind);
const char* SliceTierName(SliceTierKind kind);

struct SliceTiers {
  std::unique_ptr<HostTier> dram;  // `blocks` slots of block_bytes
  std::unique_ptr<Tier> hbm;       // `capacity` slots of slice_bytes
  std::unique_ptr<Mover> mover;    // dram → hbm
};

// kGpu on a build without CUDA, or without a device: kFailedPrecondition saying so.
Result<SliceTiers> MakeSliceTiers(SliceTierKind kind, uint64_t block_bytes, uint32_t blocks, uint64_t slice_bytes,
                                  uint32_t capacity);

}  // namespace kvtier::cli
