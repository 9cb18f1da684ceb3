// The crash stress harness, a few cycles per mode: a child writing keyed blocks through the
// NVMe tier is SIGKILLed at random points; every block served after the reopen is byte-exact
// and, in durable mode, every acknowledged block is served. (`kvtier stress nvme` runs
// hundreds of cycles.)
#include <gtest/gtest.h>

#include <random>

#include "crash_stress.h"
#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

void RunCycles(NvmeMode mode) {
  TempDir dir;
  NvmeStressOptions o;
  o.dir = dir.str();
  o.cycles = 6;
  o.mode = mode;
  o.block_bytes = 8192;
  o.slots = 64;
  o.batch = 4;
  o.min_kill_ms = 2;
  o.max_kill_ms = 40;
  o.seed = std::random_device{}();
  auto r = RunNvmeCrashStress(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->cycles, o.cycles);
  EXPECT_EQ(r->wrong, 0u);
  EXPECT_EQ(r->lost, 0u);
  for (const auto& v : r->violations) ADD_FAILURE() << v << " (seed " << o.seed << ")";
  EXPECT_GT(r->acked, 0u) << "the children never wrote: the kills came too early to test anything";
  EXPECT_GT(r->served, 0u);
}

TEST(NvmeCrash, CacheModeNeverServesAWrongBlockAfterSigkill) { RunCycles(NvmeMode::kCache); }
TEST(NvmeCrash, DurableModeKeepsEveryAcknowledgedBlockAfterSigkill) { RunCycles(NvmeMode::kDurable); }

}  // namespace
}  // namespace kvtier::testing
