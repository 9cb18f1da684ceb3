#include "registry.h"

#include <fmt/format.h>

#include "emulated_hbm_tier.h"
#include "host_tier.h"
#include "memcpy_mover.h"
#ifdef KVTIER_HAVE_CUDA
#include "cuda_host_pinner.h"
#endif

namespace kvtier {

namespace {
std::string Mib(uint64_t b) { return fmt::format("{:.1f} MiB", double(b) / double(1 << 20)); }
}  // namespace

Status TierConfig::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  const uint64_t block = geometry.block_bytes();
  if (dram_bytes < block) {
    return Status::InvalidArgument(fmt::format("dram_bytes {} holds no {} B block", dram_bytes, block));
  }
  if (hbm != HbmBackend::kNone && hbm_bytes < block) {
    return Status::InvalidArgument(fmt::format("hbm_bytes {} holds no {} B block", hbm_bytes, block));
  }
  if (copy_threads == 0) return Status::InvalidArgument("copy_threads is 0");
  return Status();
}

std::string DescribeBuild() {
#ifdef KVTIER_HAVE_CUDA
  const int n = CudaDeviceCount();
  return n > 0 ? fmt::format("cuda: built, {} device(s)", n) : "cuda: built, no device";
#else
  return "cuda: not built";
#endif
}

Result<TierSet> BuildTiers(const TierConfig& config, TierSetInfo* info) {
  KVT_RETURN_IF_ERROR(config.Validate());
  Logger* log = config.logger ? config.logger : StderrLogger::Default();
  TierSetInfo local;
  TierSetInfo& out = info ? *info : local;
  const uint64_t block = config.geometry.block_bytes();
  TierSet set;

  HostTierOptions host;
  host.slot_bytes = block;
  host.slot_count = static_cast<uint32_t>(config.dram_bytes / ((block + 4095) / 4096 * 4096));
  host.numa_node = config.numa_node;
  host.pinning = config.allow_unpinned_dram ? PinningPolicy::kAllowUnpinned : PinningPolicy::kRequired;
  host.logger = log;
#ifdef KVTIER_HAVE_CUDA
  if (auto pinner = CudaHostPinner::Create(); pinner.ok()) host.pinner = *pinner;
#endif
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<HostTier> dram, HostTier::Create(host));
  const HostTierInfo& hi = dram->info();
  out.dram = fmt::format("{} ({}, {} slots, {}{})", dram->name(), Mib(hi.bytes), dram->caps().slot_count,
                         hi.pinned ? "pinned by " + hi.pinner : std::string("NOT pinned"),
                         hi.numa_node >= 0 ? fmt::format(", NUMA node {}", hi.numa_node) : std::string());
  out.dram_pinned = hi.pinned;
  Tier* dram_ptr = dram.get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);

  if (config.hbm != HbmBackend::kNone) {
    // The CUDA HBM tier arrives with the GPU data path; until then every build emulates HBM.
    EmulatedHbmOptions eo{.slot_bytes = block, .slot_count = static_cast<uint32_t>(config.hbm_bytes / ((block + 255) / 256 * 256))};
    KVT_ASSIGN_OR_RETURN(std::unique_ptr<EmulatedHbmTier> hbm, EmulatedHbmTier::Create(eo));
    out.hbm = fmt::format("{} ({}, {} slots)", hbm->name(), Mib(hbm->caps().slot_bytes * hbm->caps().slot_count),
                          hbm->caps().slot_count);
    Tier* hbm_ptr = hbm.get();
    set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
    MemcpyMoverOptions mo{.threads = config.copy_threads};
    KVT_ASSIGN_OR_RETURN(auto up, MemcpyMover::Create(dram_ptr, hbm_ptr, mo));
    KVT_ASSIGN_OR_RETURN(auto down, MemcpyMover::Create(hbm_ptr, dram_ptr, mo));
    set.movers.push_back(std::move(up));
    set.movers.push_back(std::move(down));
  } else {
    out.hbm = "none";
  }
  return set;
}

}  // namespace kvtier
