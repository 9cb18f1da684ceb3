// HostTier: the DRAM pool. One region of fixed slots, mapped with mmap (2 MiB aligned, huge
// pages as HostTierOptions::huge_pages says), bound to one NUMA node through hwloc,
// first-touched in parallel, then pinned (cudaHostRegister through an
// injected CudaHostPinner when a GPU exists, else mlock). The memlock and cgroup budget is
// checked before anything is touched; when pinning is impossible the pool refuses with a
// clear error, unless the options allow unpinned memory, and then one log line and the
// counter unpinned_fallbacks say so.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "kvtier/logger.h"
#include "kvtier/tier.h"
#include "pinner.h"
#include "pool_mapping.h"
#include "slot_pool.h"

namespace kvtier {

enum class PinningPolicy : uint8_t {
  kRequired,        // fail when the pool cannot be pinned
  kAllowUnpinned,   // fall back to pageable memory: logged once and counted
};

struct HostTierOptions {
  uint64_t slot_bytes = 0;        // a multiple of 4096 after rounding (O_DIRECT-ready slots)
  uint32_t slot_count = 0;
  // NUMA node to bind to: -1 = the node given by the GPU tier, else node 0.
  int numa_node = -1;
  PinningPolicy pinning = PinningPolicy::kRequired;
  std::shared_ptr<MemoryPinner> pinner;  // null = mlock
  uint32_t touch_threads = 0;            // first-touch parallelism; 0 = all cores
  // Page backing of the pool (pool_mapping.h). Default kTransparent: it costs nothing where
  // THP is off, and 2 MiB pages cut the translations of a multi-GiB pool 512-fold. kHugetlb
  // falls back to kTransparent when the hugetlbfs pool is short: logged once and counted
  // (HostTierInfo::hugetlb_fallbacks). HostTierInfo::huge_page_bytes says what was obtained.
  HugePages huge_pages = HugePages::kTransparent;
  Logger* logger = nullptr;

  Status Validate() const;
};

struct HostTierInfo {
  uint64_t bytes = 0;
  bool pinned = false;
  std::string pinner;        // "cuda-host-register", "mlock" or "none"
  int numa_node = -1;        // bound node; -1 if binding failed or was not possible
  uint64_t unpinned_fallbacks = 0;
  uint64_t numa_bind_failures = 0;
  double setup_seconds = 0;  // map + touch + pin
  HugePages huge_pages = HugePages::kOff;  // the backing the pool got (after any fallback)
  uint64_t huge_page_bytes = 0;  // bytes of the pool in huge pages after pinning (smaps)
  uint64_t hugetlb_fallbacks = 0;  // kHugetlb asked, kTransparent used
};

class HostTier final : public Tier {
 public:
  static Result<std::unique_ptr<HostTier>> Create(HostTierOptions options);
  ~HostTier() override;

  std::string_view name() const override { return "host-dram"; }
  const TierCaps& caps() const override { return caps_; }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override { return slots_.Reserve(count, "dram"); }
  void Release(std::span<const SlotId> slots, Fence last_use) override { slots_.Release(slots, last_use); }
  Location Locate(SlotId slot) const override;
  TierUsage usage() const override { return slots_.usage(); }

  const HostTierInfo& info() const { return info_; }
  // Bytes of the pool in huge pages now (reads /proc/self/smaps; not for hot paths).
  Result<uint64_t> HugePageBytes() const { return HugePageBytesOf(region_.data(), region_.size()); }
  // The whole pool, for registering with io_uring or a device.
  std::byte* base() const { return region_.data(); }
  size_t bytes() const { return region_.size(); }

 private:
  HostTier(HostTierOptions options, PoolMapping region, TierCaps caps);
  HostTierOptions options_;
  PoolMapping region_;
  TierCaps caps_;
  SlotPool slots_;
  HostTierInfo info_;
};

}  // namespace kvtier
