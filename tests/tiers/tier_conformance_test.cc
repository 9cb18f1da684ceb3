// Runs the Tier conformance suite (tier_conformance.h) against every tier this build has
// without a GPU or NVMe: the emulated HBM tier, the DRAM pool, and the fault-injecting
// decorator with every fault rate at 0 (it must then be indistinguishable from its inner tier).
#include <memory>
#include <string>
#include <type_traits>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "kvtier/logger.h"
#include "tiers/tier_conformance.h"

namespace kvtier::testing {
namespace {

// Keeps warnings such as "not bound to a NUMA node" out of the test output.
class QuietLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
  static QuietLogger* Get() {
    static QuietLogger logger;
    return &logger;
  }
};

std::unique_ptr<Tier> MakeEmulatedHbm(uint64_t slot_bytes, uint32_t slot_count) {
  auto tier = EmulatedHbmTier::Create({.slot_bytes = slot_bytes, .slot_count = slot_count});
  EXPECT_TRUE(tier.ok()) << tier.status().ToString();
  return tier.ok() ? std::move(tier).value() : nullptr;
}

struct EmulatedHbmFactory {
  static std::unique_ptr<Tier> Make(uint64_t slot_bytes, uint32_t slot_count) {
    return MakeEmulatedHbm(slot_bytes, slot_count);
  }
};

struct HostTierFactory {
  static std::unique_ptr<Tier> Make(uint64_t slot_bytes, uint32_t slot_count) {
    HostTierOptions options;
    options.slot_bytes = slot_bytes;
    options.slot_count = slot_count;
    options.pinning = PinningPolicy::kAllowUnpinned;  // runs without memlock rights
    options.touch_threads = 2;
    options.logger = QuietLogger::Get();
    auto tier = HostTier::Create(std::move(options));
    EXPECT_TRUE(tier.ok()) << tier.status().ToString();
    return tier.ok() ? std::move(tier).value() : nullptr;
  }
};

struct TransparentFaultyTierFactory {
  static std::unique_ptr<Tier> Make(uint64_t slot_bytes, uint32_t slot_count) {
    std::unique_ptr<Tier> inner = MakeEmulatedHbm(slot_bytes, slot_count);
    if (inner == nullptr) return nullptr;
    auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = 7});  // every rate 0
    return std::make_unique<FaultyTier>(std::move(inner), std::move(plan));
  }
};

struct FactoryName {
  template <class T>
  static std::string GetName(int) {
    if constexpr (std::is_same_v<T, EmulatedHbmFactory>) return "EmulatedHbm";
    if constexpr (std::is_same_v<T, HostTierFactory>) return "HostDram";
    if constexpr (std::is_same_v<T, TransparentFaultyTierFactory>) return "FaultyTierWithoutFaults";
    return "Unknown";
  }
};

using Factories = ::testing::Types<EmulatedHbmFactory, HostTierFactory, TransparentFaultyTierFactory>;
INSTANTIATE_TYPED_TEST_SUITE_P(Tiers, TierConformance, Factories, FactoryName);

}  // namespace
}  // namespace kvtier::testing
