#include "slice_tiers.h"

#include <fmt/format.h>

#include "emulated_hbm_tier.h"
#include "memcpy_mover.h"
#ifdef KVTIER_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_host_pinner.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#endif

namespace kvtier::cli {

bool ParseSliceTierKind(const std::string& name, SliceTierKind* kind) {
  if (name == "emulated") {
    *kind = SliceTierKind::kEmulated;
  } else if (name == "gpu") {
    *kind = SliceTierKind::kGpu;
  } else {
    return false;
  }
  return true;
}

const char* SliceTierName(SliceTierKind kind) { return kind == SliceTierKind::kGpu ? "gpu" : "emulated"; }

Result<SliceTiers> MakeSliceTiers(SliceTierKind kind, uint64_t block_bytes, uint32_t blocks, uint64_t slice_bytes,
                                  uint32_t capacity) {
  SliceTiers t;
  HostTierOptions ho;
  ho.slot_bytes = block_bytes;
  ho.slot_count = blocks;
  ho.touch_threads = 1;
  if (kind == SliceTierKind::kEmulated) {
    ho.pinning = PinningPolicy::kAllowUnpinned;  // contents and hit rates do not depend on it
    KVT_ASSIGN_OR_RETURN(t.dram, HostTier::Create(ho));
    KVT_ASSIGN_OR_RETURN(auto hbm, EmulatedHbmTier::Create({.slot_bytes = slice_bytes, .slot_count = capacity}));
    KVT_ASSIGN_OR_RETURN(auto mover, MemcpyMover::Create(t.dram.get(), hbm.get(), {.threads = 1}));
    t.hbm = std::move(hbm);
    t.mover = std::move(mover);
    return t;
  }
#ifdef KVTIER_HAVE_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    return Status::FailedPrecondition("--tier gpu: no CUDA device");
  }
  KVT_ASSIGN_OR_RETURN(ho.pinner, CudaHostPinner::Create());  // device-addressable: the mover's kernel reads it
  KVT_ASSIGN_OR_RETURN(t.dram, HostTier::Create(ho));
  KVT_ASSIGN_OR_RETURN(auto hbm, GpuHbmTier::Create({.device = 0, .slot_bytes = slice_bytes, .slot_count = capacity}));
  KVT_ASSIGN_OR_RETURN(auto mover, GpuMover::Create(t.dram.get(), hbm.get(), {}));
  t.hbm = std::move(hbm);
  t.mover = std::move(mover);
  return t;
#else
  (void)slice_bytes;
  (void)capacity;
  return Status::FailedPrecondition("--tier gpu needs a CUDA build (this build has no CUDA)");
#endif
}

}  // namespace kvtier::cli
