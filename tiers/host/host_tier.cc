#include "host_tier.h"

#include <fmt/format.h>
#include <hwloc.h>
#include <sys/mman.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "memory_budget.h"

namespace kvtier {
namespace {

constexpr uint64_t kSlotAlign = 4096;

// Binds [ptr, ptr+bytes) to NUMA node `node` (by OS index). Returns the bound node or an error.
Status BindToNode(void* ptr, size_t bytes, int node) {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0) return Status::Internal("hwloc_topology_init failed");
  Status result;
  if (hwloc_topology_load(topo) != 0) {
    result = Status::Internal("hwloc_topology_load failed");
  } else {
    hwloc_obj_t obj = hwloc_get_numanode_obj_by_os_index(topo, static_cast<unsigned>(node));
    if (obj == nullptr) {
      result = Status::NotFound(fmt::format("NUMA node {} does not exist", node));
    } else if (hwloc_set_area_membind(topo, ptr, bytes, obj->nodeset, HWLOC_MEMBIND_BIND,
                                      HWLOC_MEMBIND_BYNODESET) != 0) {
      result = Status::FromErrno(errno, fmt::format("binding the DRAM pool to NUMA node {}", node));
    }
  }
  hwloc_topology_destroy(topo);
  return result;
}

}  // namespace

Status HostTierOptions::Validate() const {
  if (slot_bytes == 0) return Status::InvalidArgument("host tier: slot_bytes is 0");
  if (slot_count == 0) return Status::InvalidArgument("host tier: slot_count is 0");
  if (slot_bytes > (1ull << 30)) return Status::InvalidArgument(fmt::format("host tier: slot of {} B is absurd", slot_bytes));
  const uint64_t rounded = (slot_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  if (rounded * slot_count / slot_count != rounded || rounded * slot_count > (1ull << 46)) {
    return Status::InvalidArgument(fmt::format("host tier: {} slots of {} B exceed 64 TiB", slot_count, rounded));
  }
  if (numa_node < -1) return Status::InvalidArgument(fmt::format("host tier: numa_node {} is invalid", numa_node));
  return Status();
}

HostTier::HostTier(HostTierOptions options, PoolMapping region, TierCaps caps)
    : options_(std::move(options)), region_(std::move(region)), caps_(caps), slots_(caps.slot_count) {}

Result<std::unique_ptr<HostTier>> HostTier::Create(HostTierOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  Logger* log = options.logger ? options.logger : StderrLogger::Default();
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t slot_bytes = (options.slot_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  const uint64_t total = slot_bytes * options.slot_count;

  // 1. Budget, before a single page is touched.
  const MemoryBudget budget = MemoryBudget::Read();
  KVT_RETURN_IF_ERROR(budget.CheckAllocatable(total).Annotate("DRAM pool"));
  std::shared_ptr<MemoryPinner> pinner = options.pinner ? options.pinner : std::make_shared<MlockPinner>();
  Status pinnable = pinner->counts_against_memlock() ? budget.CheckLockable(total) : Status();
  if (!pinnable.ok() && options.pinning == PinningPolicy::kRequired) return std::move(pinnable).Annotate("DRAM pool");

  // 2. Map, bind, touch.
  HostTierInfo info;
  Result<PoolMapping> mapped = PoolMapping::Map(total, options.huge_pages);
  if (!mapped.ok() && options.huge_pages == HugePages::kHugetlb && mapped.status().code() == StatusCode::kExhausted) {
    ++info.hugetlb_fallbacks;
    log->Log(LogLevel::kWarning, "DRAM pool: no hugetlbfs pages for {:.2f} GiB, using transparent huge pages: {}",
             double(total) / double(1ull << 30), mapped.status().ToString());
    mapped = PoolMapping::Map(total, HugePages::kTransparent);
  }
  if (!mapped.ok()) return std::move(mapped).status().Annotate("mapping the DRAM pool");
  PoolMapping region = std::move(mapped).value();
  info.huge_pages = region.backing();
  info.bytes = total;
  const int node = options.numa_node >= 0 ? options.numa_node : 0;
  if (Status s = BindToNode(region.data(), region.size(), node); s.ok()) {
    info.numa_node = node;
  } else {
    ++info.numa_bind_failures;
    log->Log(LogLevel::kWarning, "DRAM pool not bound to a NUMA node: {}", s.ToString());
  }
  {
    const unsigned threads = options.touch_threads ? options.touch_threads : std::thread::hardware_concurrency();
    tbb::task_arena arena(static_cast<int>(std::max(1u, threads)));
    std::byte* base = region.data();
    const size_t chunk = 2u << 20;
    const size_t chunks = (region.size() + chunk - 1) / chunk;
    arena.execute([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, chunks), [&](const tbb::blocked_range<size_t>& r) {
        for (size_t c = r.begin(); c != r.end(); ++c) {
          const size_t off = c * chunk;
          std::memset(base + off, 0, std::min(chunk, region.size() - off));
        }
      });
    });
  }

  // 3. Pin.
  if (pinnable.ok()) pinnable = pinner->Pin(region.data(), region.size());
  if (pinnable.ok()) {
    info.pinned = true;
    info.pinner = std::string(pinner->name());
  } else {
    if (options.pinning == PinningPolicy::kRequired) return std::move(pinnable).Annotate("pinning the DRAM pool");
    info.pinner = "none";
    ++info.unpinned_fallbacks;
    log->Log(LogLevel::kWarning,
             "DRAM pool of {:.2f} GiB is NOT pinned (pageable memory; transfers will be slower): {}",
             double(total) / double(1ull << 30), pinnable.ToString());
  }
  info.setup_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (Result<uint64_t> huge = HugePageBytesOf(region.data(), region.size()); huge.ok()) {
    info.huge_page_bytes = *huge;
  } else {
    log->Log(LogLevel::kWarning, "DRAM pool: huge page backing unknown: {}", huge.status().ToString());
  }
  if (options.huge_pages != HugePages::kOff && info.huge_page_bytes < region.size() / 2) {
    log->Log(LogLevel::kInfo, "DRAM pool: {:.1f}% of {:.2f} GiB in huge pages (asked for {})",
             100.0 * double(info.huge_page_bytes) / double(region.size()), double(region.size()) / double(1ull << 30),
             HugePagesName(options.huge_pages));
  }

  TierCaps caps;
  caps.kind = TierKind::kDram;
  caps.slot_bytes = slot_bytes;
  caps.slot_count = options.slot_count;
  caps.alignment = kSlotAlign;
  caps.device_addressable = info.pinned && pinner->device_addressable();
  caps.persistent = false;
  options.pinner = info.pinned ? pinner : nullptr;  // kept to unpin at destruction
  std::unique_ptr<HostTier> tier(new HostTier(std::move(options), std::move(region), caps));
  tier->info_ = info;
  return tier;
}

HostTier::~HostTier() {
  if (options_.pinner && region_.size() != 0) options_.pinner->Unpin(region_.data(), region_.size());
}

Location HostTier::Locate(SlotId slot) const {
  KVT_CHECK_MSG(slot.value() < caps_.slot_count, fmt::format("dram slot {} out of range", slot.value()));
  return MemoryAddress{kHostDevice, region_.data() + static_cast<uint64_t>(slot.value()) * caps_.slot_bytes};
}

}  // namespace kvtier
