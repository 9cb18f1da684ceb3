// HostTier (the DRAM pool) and MemoryBudget: option checks, the budget checks made before a
// page is touched, and what the pool reports about pinning.
#include "host_tier.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

#include "kvtier/logger.h"
#include "memory_budget.h"
#include "pinner.h"

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

class CapturingLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view message) override {
    std::lock_guard lock(mu_);
    lines_.emplace_back(level, std::string(message));
  }
  std::vector<std::pair<LogLevel, std::string>> lines() const {
    std::lock_guard lock(mu_);
    return lines_;
  }
  size_t CountContaining(std::string_view needle) const {
    size_t n = 0;
    for (const auto& [level, text] : lines()) n += Contains(text, needle) ? 1 : 0;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

// A pinner whose outcome and properties the test chooses, recording every call.
class FakePinner final : public MemoryPinner {
 public:
  explicit FakePinner(Status outcome, bool counts_against_memlock = false, bool device_addressable = true)
      : outcome_(std::move(outcome)), counts_(counts_against_memlock), device_(device_addressable) {}
  std::string_view name() const override { return "fake-pinner"; }
  bool counts_against_memlock() const override { return counts_; }
  bool device_addressable() const override { return device_; }
  Status Pin(void* ptr, size_t bytes) override {
    pins.fetch_add(1);
    pinned_ptr = ptr;
    pinned_bytes = bytes;
    return outcome_;
  }
  void Unpin(void* ptr, size_t bytes) noexcept override {
    unpins.fetch_add(1);
    unpinned_ptr = ptr;
    unpinned_bytes = bytes;
  }

  std::atomic<int> pins{0}, unpins{0};
  void* pinned_ptr = nullptr;
  size_t pinned_bytes = 0;
  void* unpinned_ptr = nullptr;
  size_t unpinned_bytes = 0;

 private:
  Status outcome_;
  bool counts_;
  bool device_;
};

HostTierOptions SmallOptions(CapturingLogger* logger) {
  HostTierOptions o;
  o.slot_bytes = 4096;
  o.slot_count = 64;
  o.pinning = PinningPolicy::kAllowUnpinned;
  o.touch_threads = 2;
  o.logger = logger;
  return o;
}

// --- HostTierOptions::Validate ------------------------------------------------------------

TEST(HostTierOptionsTest, ValidateAcceptsASmallPool) {
  HostTierOptions o;
  o.slot_bytes = 4096;
  o.slot_count = 64;
  EXPECT_TRUE(o.Validate().ok()) << o.Validate().ToString();
}

TEST(HostTierOptionsTest, ValidateRejectsZeroSlotBytes) {
  HostTierOptions o;
  o.slot_bytes = 0;
  o.slot_count = 64;
  const Status s = o.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "slot_bytes")) << s.ToString();
}

TEST(HostTierOptionsTest, ValidateRejectsZeroSlotCount) {
  HostTierOptions o;
  o.slot_bytes = 4096;
  o.slot_count = 0;
  const Status s = o.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "slot_count")) << s.ToString();
}

TEST(HostTierOptionsTest, ValidateRejectsAbsurdSlotBytes) {
  HostTierOptions o;
  o.slot_count = 1;
  o.slot_bytes = 2 * kGiB;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.slot_bytes = UINT64_MAX;  // would overflow when rounded up to 4 KiB
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.slot_bytes = kGiB;  // the largest slot allowed
  EXPECT_TRUE(o.Validate().ok()) << o.Validate().ToString();
}

TEST(HostTierOptionsTest, ValidateRejectsAPoolBeyond64TiB) {
  HostTierOptions o;
  o.slot_bytes = kGiB;
  o.slot_count = 64 * 1024 + 1;  // 64 TiB + 1 GiB
  const Status s = o.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "64 TiB")) << s.ToString();
  o.slot_count = UINT32_MAX;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.slot_count = 64 * 1024;  // exactly 64 TiB is the limit, not beyond it
  EXPECT_TRUE(o.Validate().ok()) << o.Validate().ToString();
}

TEST(HostTierOptionsTest, ValidateRejectsANegativeNumaNodeOtherThanAuto) {
  HostTierOptions o;
  o.slot_bytes = 4096;
  o.slot_count = 1;
  o.numa_node = -2;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.numa_node = -1;
  EXPECT_TRUE(o.Validate().ok());
}

TEST(HostTierTest, CreateRejectsInvalidOptionsBeforeAllocating) {
  auto pinner = std::make_shared<FakePinner>(Status());
  HostTierOptions o;
  o.slot_bytes = 0;
  o.slot_count = 4;
  o.pinner = pinner;
  auto tier = HostTier::Create(o);
  EXPECT_EQ(tier.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner->pins.load(), 0);
}

// --- HostTier::Create -------------------------------------------------------------------

TEST(HostTierTest, CreateWithUnpinnedAllowedReportsCoherentInfo) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 5000;  // not a multiple of 4 KiB: rounded up to 8 KiB
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const HostTier& tier = **created;

  EXPECT_EQ(tier.name(), "host-dram");
  const TierCaps& caps = tier.caps();
  EXPECT_EQ(caps.kind, TierKind::kDram);
  EXPECT_EQ(caps.slot_bytes, 8192u);
  EXPECT_EQ(caps.slot_count, 64u);
  EXPECT_EQ(caps.alignment, 4096u);
  EXPECT_FALSE(caps.persistent);

  const HostTierInfo& info = tier.info();
  EXPECT_EQ(info.bytes, 8192u * 64u);
  EXPECT_EQ(tier.bytes(), info.bytes);
  EXPECT_NE(tier.base(), nullptr);
  EXPECT_GE(info.setup_seconds, 0.0);
  // mlock, or pageable memory when the process may not lock this much.
  if (info.pinned) {
    EXPECT_EQ(info.pinner, "mlock");
    EXPECT_EQ(info.unpinned_fallbacks, 0u);
    EXPECT_EQ(logger.CountContaining("NOT pinned"), 0u);
  } else {
    EXPECT_EQ(info.pinner, "none");
    EXPECT_EQ(info.unpinned_fallbacks, 1u);
    EXPECT_EQ(logger.CountContaining("NOT pinned"), 1u);
  }
  EXPECT_FALSE(caps.device_addressable) << "mlocked memory is not registered with any device";
  // Either bound to a node, or the failure was counted (and logged).
  if (info.numa_node >= 0) {
    EXPECT_EQ(info.numa_bind_failures, 0u);
  } else {
    EXPECT_EQ(info.numa_bind_failures, 1u);
    EXPECT_EQ(logger.CountContaining("NUMA"), 1u);
  }
  EXPECT_EQ(tier.usage().free_slots, 64u);
}

TEST(HostTierTest, SlotsAre4KiBAlignedAndLaidOutBackToBack) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 12288;
  o.slot_count = 16;
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  HostTier& tier = **created;
  auto all = tier.Reserve(16);
  ASSERT_TRUE(all.ok());
  for (SlotId s : *all) {
    const auto addr = std::get<MemoryAddress>(tier.Locate(s));
    EXPECT_EQ(addr.device, kHostDevice);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(addr.ptr) % 4096, 0u) << "slot " << s.value();
    // The whole pool is one region (registered with io_uring / the GPU as one buffer).
    EXPECT_EQ(addr.ptr, tier.base() + uint64_t{s.value()} * 12288u);
  }
  tier.Release(*all, Fence());
}

TEST(HostTierTest, PoolIsFirstTouchedAtCreate) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 64 * kKiB;
  o.slot_count = 32;  // 2 MiB
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const HostTier& tier = **created;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((tier.bytes() + page - 1) / page);
  ASSERT_EQ(mincore(tier.base(), tier.bytes(), resident.data()), 0) << std::strerror(errno);
  size_t missing = 0;
  for (unsigned char r : resident) missing += (r & 1u) ? 0 : 1;
  EXPECT_EQ(missing, 0u) << "pages not touched before the pool was handed out";
}

// --- Huge pages -------------------------------------------------------------------------------

TEST(HostTierHugePagesTest, NamesParseAndOnMeansTransparent) {
  EXPECT_EQ(*ParseHugePages("off"), HugePages::kOff);
  EXPECT_EQ(*ParseHugePages("on"), HugePages::kTransparent);
  EXPECT_EQ(*ParseHugePages("transparent"), HugePages::kTransparent);
  EXPECT_EQ(*ParseHugePages("hugetlb"), HugePages::kHugetlb);
  EXPECT_EQ(ParseHugePages("2M").status().code(), StatusCode::kInvalidArgument);
}

TEST(HostTierHugePagesTest, DefaultPoolIsTransparentAnd2MiBAligned) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 64 * kKiB;
  o.slot_count = 128;  // 8 MiB: four whole huge pages
  EXPECT_EQ(o.huge_pages, HugePages::kTransparent);
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const HostTier& tier = **created;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tier.base()) % (2u << 20), 0u) << "a huge page backs only whole aligned 2 MiB";
  EXPECT_EQ(tier.info().huge_pages, HugePages::kTransparent);
  EXPECT_LE(tier.info().huge_page_bytes, tier.bytes());
  auto now = tier.HugePageBytes();
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  // Whether THP gives pages depends on the kernel's setting and fragmentation: report it.
  std::printf("transparent pool: %llu of %zu bytes in huge pages\n", static_cast<unsigned long long>(*now), tier.bytes());
}

TEST(HostTierHugePagesTest, OffMeansNoHugePages) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 64 * kKiB;
  o.slot_count = 128;
  o.huge_pages = HugePages::kOff;
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ((*created)->info().huge_pages, HugePages::kOff);
  EXPECT_EQ((*created)->info().huge_page_bytes, 0u);
  EXPECT_EQ(*(*created)->HugePageBytes(), 0u);
}

TEST(HostTierHugePagesTest, HugetlbIsUsedWhenAvailableElseFallsBackCountedAndLogged) {
  CapturingLogger logger;
  HostTierOptions o = SmallOptions(&logger);
  o.slot_bytes = 64 * kKiB;
  o.slot_count = 64;  // 4 MiB
  o.huge_pages = HugePages::kHugetlb;
  auto created = HostTier::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const HostTier& tier = **created;
  if (tier.info().huge_pages == HugePages::kHugetlb) {
    EXPECT_EQ(tier.info().hugetlb_fallbacks, 0u);
    EXPECT_EQ(tier.info().huge_page_bytes, tier.bytes()) << "hugetlb pages back the whole pool";
  } else {
    EXPECT_EQ(tier.info().huge_pages, HugePages::kTransparent);
    EXPECT_EQ(tier.info().hugetlb_fallbacks, 1u);
    EXPECT_EQ(logger.CountContaining("hugetlbfs"), 1u);
  }
  // Either way the pool is usable memory.
  std::memset(tier.base(), 0x5A, tier.bytes());
}

TEST(HostTierHugePagesTest, HugePageBytesOfAnUnmappedOr4KRangeIsZero) {
  void* p = mmap(nullptr, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(madvise(p, 4 << 20, MADV_NOHUGEPAGE), 0);
  std::memset(p, 1, 4 << 20);
  auto bytes = HugePageBytesOf(p, 4 << 20);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  EXPECT_EQ(*bytes, 0u);
  ASSERT_EQ(munmap(p, 4 << 20), 0);
  EXPECT_EQ(*HugePageBytesOf(p, 4 << 20), 0u);
}

TEST(HostTierTest, UnpinnablePoolFallsBackToPageableOnlyWhenAllowed) {
  CapturingLogger logger;
  auto pinner = std::make_shared<FakePinner>(Status::PermissionDenied("no rights to pin"));
  HostTierOptions o = SmallOptions(&logger);
  o.pinner = pinner;
  {
    auto created = HostTier::Create(o);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    const HostTierInfo& info = (*created)->info();
    EXPECT_FALSE(info.pinned);
    EXPECT_EQ(info.pinner, "none");
    EXPECT_EQ(info.unpinned_fallbacks, 1u);
    EXPECT_FALSE((*created)->caps().device_addressable) << "pageable memory must not claim device access";
    EXPECT_EQ(pinner->pins.load(), 1);
    // One warning line that says so, with the reason.
    size_t warnings = 0;
    for (const auto& [level, text] : logger.lines()) {
      if (Contains(text, "NOT pinned")) {
        EXPECT_EQ(level, LogLevel::kWarning);
        EXPECT_TRUE(Contains(text, "no rights to pin")) << text;
        ++warnings;
      }
    }
    EXPECT_EQ(warnings, 1u);
  }
  EXPECT_EQ(pinner->unpins.load(), 0) << "a pool that was never pinned is not unpinned";

  o.pinning = PinningPolicy::kRequired;
  auto refused = HostTier::Create(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status().ToString();
  EXPECT_TRUE(Contains(refused.status().message(), "no rights to pin")) << refused.status().ToString();
  EXPECT_EQ(pinner->unpins.load(), 0);
}

TEST(HostTierTest, PinnedPoolReportsItsPinnerAndIsUnpinnedOnDestruction) {
  CapturingLogger logger;
  auto pinner = std::make_shared<FakePinner>(Status(), /*counts_against_memlock=*/false, /*device_addressable=*/true);
  HostTierOptions o = SmallOptions(&logger);
  o.pinning = PinningPolicy::kRequired;
  o.pinner = pinner;
  void* base = nullptr;
  size_t bytes = 0;
  {
    auto created = HostTier::Create(o);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    const HostTier& tier = **created;
    EXPECT_TRUE(tier.info().pinned);
    EXPECT_EQ(tier.info().pinner, "fake-pinner");
    EXPECT_EQ(tier.info().unpinned_fallbacks, 0u);
    EXPECT_TRUE(tier.caps().device_addressable);
    base = tier.base();
    bytes = tier.bytes();
    EXPECT_EQ(pinner->pins.load(), 1);
    EXPECT_EQ(pinner->pinned_ptr, base);
    EXPECT_EQ(pinner->pinned_bytes, bytes);
    EXPECT_EQ(pinner->unpins.load(), 0);
  }
  EXPECT_EQ(pinner->unpins.load(), 1);
  EXPECT_EQ(pinner->unpinned_ptr, base);
  EXPECT_EQ(pinner->unpinned_bytes, bytes);
}

// Creates `options` in a child process whose address space is capped a little above what
// it already maps, and exits 0 when Create refused up front: kExhausted from the budget
// check, nothing pinned, nothing logged. The cap means a regression that skipped the
// budget check fails at mmap (with another message) instead of touching several times
// the machine's memory.
[[noreturn]] void CreateInAddressSpaceCappedChild(HostTierOptions options) {
  auto pinner = std::make_shared<FakePinner>(Status(), /*counts_against_memlock=*/true);
  CapturingLogger logger;
  options.pinner = pinner;
  options.logger = &logger;
  long pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  const rlim_t cap = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (1ull << 30);
  const rlimit limit{cap, cap};
  if (pages == 0 || setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(10);
  const auto t0 = std::chrono::steady_clock::now();
  auto tier = HostTier::Create(options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "Create: %s\n", tier.status().ToString().c_str());
  int code = 0;
  if (tier.ok()) {
    code = 1;
  } else if (tier.status().code() != StatusCode::kExhausted) {
    code = 2;
  } else if (!Contains(tier.status().message(), "DRAM pool") || Contains(tier.status().message(), "mmap")) {
    code = 3;  // refused by the kernel, not by the budget check
  } else if (pinner->pins.load() != 0) {
    code = 4;
  } else if (!logger.lines().empty()) {
    code = 5;
  } else if (seconds > 1.0) {
    code = 6;
  }
  std::fflush(stderr);
  std::_Exit(code);
}

TEST(HostTierTest, PoolBeyondAvailableMemoryIsRefusedBeforeAnythingIsAllocated) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const MemoryBudget budget = MemoryBudget::Read();
  uint64_t limit = budget.mem_available;
  if (budget.cgroup_limit) {
    const uint64_t room = *budget.cgroup_limit > budget.cgroup_usage ? *budget.cgroup_limit - budget.cgroup_usage : 0;
    limit = limit == 0 ? room : std::min(limit, room);
  }
  if (limit == 0) GTEST_SKIP() << "neither MemAvailable nor a cgroup limit is known: " << budget.ToString();
  // Four times what is available, in 1 GiB slots (at most 64 TiB).
  const uint64_t slots = std::min<uint64_t>(4 * (limit / kGiB + 1), 64 * 1024);
  ASSERT_GT(slots * kGiB, limit);
  HostTierOptions o;
  o.slot_bytes = kGiB;
  o.slot_count = static_cast<uint32_t>(slots);
  o.pinning = PinningPolicy::kRequired;
  o.touch_threads = 2;
  EXPECT_EXIT(CreateInAddressSpaceCappedChild(o), ::testing::ExitedWithCode(0), "kExhausted: DRAM pool");
  // The budget is checked whatever the pinning policy.
  o.pinning = PinningPolicy::kAllowUnpinned;
  EXPECT_EXIT(CreateInAddressSpaceCappedChild(o), ::testing::ExitedWithCode(0), "kExhausted: DRAM pool");
}

// --- MemoryBudget -----------------------------------------------------------------------

TEST(MemoryBudgetTest, LockBeyondTheMemlockLimitIsDeniedWithAHowToRaiseIt) {
  MemoryBudget b;
  b.memlock_limit = 64 * kKiB;
  b.cap_ipc_lock = false;
  const Status s = b.CheckLockable(1 * kMiB);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(Contains(s.message(), "ulimit -l")) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "CAP_IPC_LOCK")) << s.ToString();
  EXPECT_FALSE(s.retryable());
}

TEST(MemoryBudgetTest, CapIpcLockLiftsTheMemlockLimit) {
  MemoryBudget b;
  b.memlock_limit = 64 * kKiB;
  b.cap_ipc_lock = true;
  EXPECT_TRUE(b.CheckLockable(1 * kGiB).ok());
}

TEST(MemoryBudgetTest, NoMemlockLimitAllowsAnyLock) {
  MemoryBudget b;
  b.memlock_limit = std::nullopt;
  EXPECT_TRUE(b.CheckLockable(1024 * kGiB).ok());
}

TEST(MemoryBudgetTest, MemoryAlreadyLockedCountsAgainstTheLimit) {
  MemoryBudget b;
  b.memlock_limit = 1 * kMiB;
  b.memlock_in_use = 768 * kKiB;
  EXPECT_TRUE(b.CheckLockable(256 * kKiB).ok()) << "exactly the room left fits";
  EXPECT_EQ(b.CheckLockable(256 * kKiB + 1).code(), StatusCode::kPermissionDenied);
  b.memlock_in_use = 2 * kMiB;  // more locked than the (lowered) limit: no room at all
  EXPECT_EQ(b.CheckLockable(1).code(), StatusCode::kPermissionDenied);
}

TEST(MemoryBudgetTest, AllocationBeyondTheCgroupRoomIsExhausted) {
  MemoryBudget b;
  b.cgroup_limit = 1 * kGiB;
  b.cgroup_usage = 900 * kMiB;
  const Status s = b.CheckAllocatable(200 * kMiB);
  EXPECT_EQ(s.code(), StatusCode::kExhausted);
  EXPECT_TRUE(Contains(s.message(), "cgroup")) << s.ToString();
  EXPECT_TRUE(b.CheckAllocatable(124 * kMiB).ok());
  b.cgroup_usage = 2 * kGiB;  // usage above the limit: no room
  EXPECT_EQ(b.CheckAllocatable(4096).code(), StatusCode::kExhausted);
}

TEST(MemoryBudgetTest, AllocationBeyondMemAvailableIsExhausted) {
  MemoryBudget b;
  b.mem_available = 1 * kGiB;
  const Status s = b.CheckAllocatable(2 * kGiB);
  EXPECT_EQ(s.code(), StatusCode::kExhausted);
  EXPECT_TRUE(Contains(s.message(), "available memory")) << s.ToString();
  EXPECT_TRUE(b.CheckAllocatable(1 * kGiB).ok());
}

TEST(MemoryBudgetTest, UnknownLimitsAllowAllocation) {
  MemoryBudget b;  // no cgroup limit, MemAvailable unknown (0)
  EXPECT_TRUE(b.CheckAllocatable(1024 * kGiB).ok());
}

// A fake cgroup mount: files written under a temporary root.
class FakeCgroupRoot {
 public:
  FakeCgroupRoot() {
    root_ = std::filesystem::temp_directory_path() / ("kvtier-cgroup-" + std::to_string(::getpid()) + "-" +
                                                      std::to_string(counter_++));
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  ~FakeCgroupRoot() { std::filesystem::remove_all(root_); }
  void Write(const std::string& rel, const std::string& text) {
    const std::filesystem::path p = root_ / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text << "\n";
  }
  std::string root() const { return root_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path root_;
};

// The limit that binds is found along the process's own cgroup path, not only at the root:
// a parent's limit caps its children, and the level with the least room is reported.
TEST(MemoryBudgetTest, CgroupV2LimitIsTheTightestAlongTheProcessPath) {
  FakeCgroupRoot fs;
  fs.Write("memory.max", "max");
  fs.Write("a/memory.max", std::to_string(2 * kGiB));
  fs.Write("a/memory.current", std::to_string(1 * kGiB));
  fs.Write("a/b/memory.max", "max");
  fs.Write("a/b/memory.current", std::to_string(512 * kMiB));
  CgroupMemory m = ReadCgroupMemory(fs.root(), "0::/a/b\n");
  ASSERT_TRUE(m.limit.has_value());
  EXPECT_EQ(*m.limit, 2 * kGiB) << "the parent's limit binds the child";
  EXPECT_EQ(m.usage, 1 * kGiB) << "and its usage is what counts against it";
  // The process's own cgroup with less room wins.
  fs.Write("a/b/memory.max", std::to_string(1200 * kMiB));
  m = ReadCgroupMemory(fs.root(), "0::/a/b\n");
  ASSERT_TRUE(m.limit.has_value());
  EXPECT_EQ(*m.limit, 1200 * kMiB);
  EXPECT_EQ(m.usage, 512 * kMiB);
  // At the root (a container's cgroup namespace): only the root level.
  EXPECT_FALSE(ReadCgroupMemory(fs.root(), "0::/\n").limit.has_value());
  // A path that does not exist under the mount counts only the levels that do.
  m = ReadCgroupMemory(fs.root(), "0::/a/gone/deeper\n");
  ASSERT_TRUE(m.limit.has_value());
  EXPECT_EQ(*m.limit, 2 * kGiB);
}

// cgroup v1 (or hybrid: v2 mounted without the memory controller): the path of the line that
// lists "memory", under memory/; v1's "unlimited" (a huge number) is no limit.
TEST(MemoryBudgetTest, CgroupV1MemoryControllerPathIsFollowed) {
  FakeCgroupRoot fs;
  fs.Write("memory/memory.limit_in_bytes", "9223372036854771712");
  fs.Write("memory/process_api/x/memory.limit_in_bytes", std::to_string(4 * kGiB));
  fs.Write("memory/process_api/x/memory.usage_in_bytes", std::to_string(1 * kGiB));
  const std::string self = "9:name=systemd:/\n4:memory:/process_api/x\n3:cpu,cpuacct:/\n0::/\n";
  CgroupMemory m = ReadCgroupMemory(fs.root(), self);
  ASSERT_TRUE(m.limit.has_value());
  EXPECT_EQ(*m.limit, 4 * kGiB);
  EXPECT_EQ(m.usage, 1 * kGiB);
  // Controller lists are split on commas: "cpu,memory" names memory, "memoryx" does not.
  m = ReadCgroupMemory(fs.root(), "5:cpu,memory:/process_api/x\n");
  EXPECT_EQ(m.limit.value_or(0), 4 * kGiB);
  EXPECT_FALSE(ReadCgroupMemory(fs.root(), "5:memoryx:/process_api/x\n").limit.has_value());
  // No limit anywhere, or nothing readable: no limit.
  fs.Write("memory/process_api/x/memory.limit_in_bytes", "9223372036854771712");
  EXPECT_FALSE(ReadCgroupMemory(fs.root(), self).limit.has_value());
  EXPECT_FALSE(ReadCgroupMemory(fs.root(), "").limit.has_value());
  EXPECT_FALSE(ReadCgroupMemory(fs.root() + "/nowhere", self).limit.has_value());
}

TEST(MemoryBudgetTest, ReadFindsThisMachinesMemory) {
  const MemoryBudget b = MemoryBudget::Read();
  EXPECT_GT(b.mem_available, 0u) << "Linux always has MemAvailable in /proc/meminfo";
  if (b.cgroup_limit) {
    EXPECT_GT(*b.cgroup_limit, 0u);
  }
  EXPECT_TRUE(Contains(b.ToString(), "memlock")) << b.ToString();
  EXPECT_TRUE(Contains(b.ToString(), "MemAvailable")) << b.ToString();
}

}  // namespace
}  // namespace kvtier
