// The one place that knows which tiers this build has. BuildTiers assembles a TierSet from a
// TierConfig: HBM (the GPU tier when the build and machine have one, else the emulated
// tier), the pinned DRAM pool, and the movers between them.
#pragma once

#include <string>

#include "kvtier/geometry.h"
#include "kvtier/logger.h"
#include "kvtier/tier_manager.h"

namespace kvtier {

enum class HbmBackend : uint8_t {
  kAuto,      // the GPU tier if this build and machine have one, else emulated
  kGpu,       // the GPU tier, or an error saying why not
  kEmulated,  // always the emulated tier
  kNone,      // no HBM tier (DRAM only)
};

struct TierConfig {
  KvGeometry geometry{};
  uint64_t hbm_bytes = 256ull << 20;
  uint64_t dram_bytes = 1ull << 30;
  HbmBackend hbm = HbmBackend::kAuto;
  bool allow_unpinned_dram = false;  // else an unpinnable pool is an error
  int numa_node = -1;
  int device = 0;                    // CUDA device of the GPU tier
  std::string transfer_profile{};    // `kvtier probe` output; empty = built-in defaults
  uint32_t copy_threads = 2;         // CPU copy parallelism of the emulated movers
  std::string nvme_dir;              // NVMe tier directory (slab + index); empty = no NVMe tier
  uint64_t nvme_bytes = 0;           // NVMe slab payload capacity (used when nvme_dir is set)
  uint32_t nvme_queue_depth = 64;    // io_uring segments in flight per NVMe mover
  Logger* logger = nullptr;

  Status Validate() const;
};

// What BuildTiers chose, for logs and the demo banner.
struct TierSetInfo {
  std::string hbm;        // "emulated-hbm (256.0 MiB, 4096 slots)", "gpu-hbm (...)" or "none"
  std::string dram;       // "host-dram (1.0 GiB, pinned by mlock, NUMA node 0)"
  std::string nvme = "none";
  bool dram_pinned = false;
  bool hbm_is_gpu = false;  // HBM slots are device memory (not host-addressable)
};

Result<TierSet> BuildTiers(const TierConfig& config, TierSetInfo* info = nullptr);

// "cuda: yes (1 device)" / "cuda: built, no device" / "cuda: not built".
std::string DescribeBuild();

}  // namespace kvtier
