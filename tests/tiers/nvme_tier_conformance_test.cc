// The Tier conformance suite against the NVMe tier (a slab in a temp directory).
#include <list>
#include <memory>

#include "tiers/nvme_testing.h"
#include "tiers/tier_conformance.h"

namespace kvtier::testing {
namespace {

struct NvmeTierFactory {
  static std::unique_ptr<Tier> Make(uint64_t slot_bytes, uint32_t slot_count) {
    static std::list<TempDir> dirs;  // removed at exit
    dirs.emplace_back();
    auto t = NvmeTier::Open({.dir = dirs.back().str(), .slot_bytes = slot_bytes, .slot_count = slot_count,
                             .logger = QuietNvmeLogger::Get()});
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : nullptr;
  }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Nvme, TierConformance, NvmeTierFactory);

}  // namespace
}  // namespace kvtier::testing
