#include "registry.h"

#include <fmt/format.h>

#include "emulated_hbm_tier.h"
#include "host_tier.h"
#include "memcpy_mover.h"
#include "nvme_mover.h"
#include "nvme_tier.h"
#ifdef KVTIER_HAVE_CUDA
#include "cuda_host_pinner.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#endif

namespace kvtier {

namespace {
std::string Mib(uint64_t b) { return fmt::format("{:.1f} MiB", double(b) / double(1 << 20)); }

// The slot a block takes in each tier: DRAM slots are whole 4 KiB pages (O_DIRECT-ready),
// HBM slots keep cudaMalloc's 256 B alignment.
uint64_t DramSlotBytes(uint64_t block) { return (block + 4095) / 4096 * 4096; }
uint64_t HbmSlotBytes(uint64_t block) { return (block + 255) / 256 * 256; }

// A capacity must hold at least one slot, and no more slots than a SlotId can count
// (BuildTiers narrows the count to 32 bits).
Status CheckCapacity(std::string_view what, uint64_t bytes, uint64_t block, uint64_t slot) {
  if (bytes < slot) {
    return Status::InvalidArgument(fmt::format("{} {} holds no {} B block ({} B slots)", what, bytes, block, slot));
  }
  if (bytes / slot > UINT32_MAX) {
    return Status::InvalidArgument(
        fmt::format("{} {} is {} slots of {} B, more than {}", what, bytes, bytes / slot, slot, UINT32_MAX));
  }
  return Status();
}
}  // namespace

Status TierConfig::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  const uint64_t block = geometry.block_bytes();
  KVT_RETURN_IF_ERROR(CheckCapacity("dram_bytes", dram_bytes, block, DramSlotBytes(block)));
  if (hbm != HbmBackend::kNone) KVT_RETURN_IF_ERROR(CheckCapacity("hbm_bytes", hbm_bytes, block, HbmSlotBytes(block)));
  if (copy_threads == 0) return Status::InvalidArgument("copy_threads is 0");
  if (!nvme_dir.empty()) KVT_RETURN_IF_ERROR(CheckCapacity("nvme_bytes", nvme_bytes, block, DramSlotBytes(block)));
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

namespace {

// Adds the CUDA HBM tier and its movers. kUnimplemented without CUDA in the build,
// kUnavailable without a device.
Status AddGpuTier(const TierConfig& config, Tier* dram, TierSet& set, TierSetInfo& out, Logger* log) {
#ifdef KVTIER_HAVE_CUDA
  if (CudaDeviceCount() <= config.device) {
    return Status::Unavailable(fmt::format("CUDA device {} is not visible ({} devices)", config.device, CudaDeviceCount()));
  }
  const uint64_t block = config.geometry.block_bytes();
  GpuHbmOptions go{.device = config.device, .slot_bytes = (block + 15) / 16 * 16,
                   .slot_count = static_cast<uint32_t>(config.hbm_bytes / HbmSlotBytes(block))};
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<GpuHbmTier> hbm, GpuHbmTier::Create(go));
  GpuMoverOptions mo;
  mo.device = config.device;
  if (!config.transfer_profile.empty()) {
    auto profile = TransferProfile::Load(config.transfer_profile);
    if (profile.ok()) {
      mo.profile = std::move(profile).value();
    } else {
      log->Log(LogLevel::kWarning, "transfer profile not used (built-in defaults instead): {}", profile.status().ToString());
    }
  }
  KVT_ASSIGN_OR_RETURN(auto up, GpuMover::Create(dram, hbm.get(), mo));
  KVT_ASSIGN_OR_RETURN(auto down, GpuMover::Create(hbm.get(), dram, mo));
  out.hbm = fmt::format("{} (device {}, {}, {} slots; H2D {} kernel, D2H {})", hbm->name(), config.device,
                        Mib(hbm->caps().slot_bytes * hbm->caps().slot_count), hbm->caps().slot_count,
                        CopyKernelName(up->copy_kernel()), D2hModeName(down->ModeFor(block)));
  out.hbm_is_gpu = true;
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
  set.movers.push_back(std::move(up));
  set.movers.push_back(std::move(down));
  return Status();
#else
  (void)config, (void)dram, (void)set, (void)out, (void)log;
  return Status::Unimplemented("this build has no CUDA");
#endif
}

}  // namespace

Result<TierSet> BuildTiers(const TierConfig& config, TierSetInfo* info) {
  KVT_RETURN_IF_ERROR(config.Validate());
  Logger* log = config.logger ? config.logger : StderrLogger::Default();
  TierSetInfo local;
  TierSetInfo& out = info ? *info : local;
  const uint64_t block = config.geometry.block_bytes();
  TierSet set;

  HostTierOptions host;
  host.slot_bytes = block;
  host.slot_count = static_cast<uint32_t>(config.dram_bytes / DramSlotBytes(block));  // fits: Validate
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

  if (config.hbm == HbmBackend::kAuto || config.hbm == HbmBackend::kGpu) {
    Status gpu = AddGpuTier(config, dram_ptr, set, out, log);
    if (!gpu.ok() && config.hbm == HbmBackend::kGpu) return gpu;
    if (!gpu.ok() && gpu.code() != StatusCode::kUnimplemented && gpu.code() != StatusCode::kUnavailable) {
      log->Log(LogLevel::kWarning, "GPU HBM tier not used, emulating HBM instead: {}", gpu.ToString());
    }
  }
  if (config.hbm != HbmBackend::kNone && set.tiers[TierIndex(TierKind::kHbm)] == nullptr) {
    EmulatedHbmOptions eo{.slot_bytes = block, .slot_count = static_cast<uint32_t>(config.hbm_bytes / HbmSlotBytes(block))};
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
  } else if (config.hbm == HbmBackend::kNone) {
    out.hbm = "none";
  }
  if (!config.nvme_dir.empty()) {
    // The NVMe tier and its io_uring movers, which read and write the DRAM pool's slots.
    NvmeTierOptions no{.dir = config.nvme_dir, .slot_bytes = block,
                       .slot_count = static_cast<uint32_t>(config.nvme_bytes / DramSlotBytes(block)), .logger = log};
    KVT_ASSIGN_OR_RETURN(std::unique_ptr<NvmeTier> nvme, NvmeTier::Open(no));
    auto* pool = static_cast<HostTier*>(dram_ptr);
    NvmeMoverOptions mo;
    mo.queue_depth = config.nvme_queue_depth;
    KVT_ASSIGN_OR_RETURN(auto down, NvmeMover::Create(pool, nvme.get(), NvmeDirection::kDramToNvme, mo));
    KVT_ASSIGN_OR_RETURN(auto up, NvmeMover::Create(pool, nvme.get(), NvmeDirection::kNvmeToDram, mo));
    // Blocks indexed by an earlier run stay reserved until TierManager::Create adopts them
    // (Tier::TakeRecovered).
    out.nvme = fmt::format("{} ({}, {} slots, {}, {})", nvme->name(), config.nvme_dir, nvme->caps().slot_count,
                           Mib(nvme->caps().slot_bytes * nvme->caps().slot_count),
                           nvme->stats().direct ? "O_DIRECT" : "buffered");
    set.tiers[TierIndex(TierKind::kNvme)] = std::move(nvme);
    set.movers.push_back(std::move(down));
    set.movers.push_back(std::move(up));
  }
  return set;
}

}  // namespace kvtier
