// Latency histograms and the runtime statistics table (kvtier/stats.h).
#include "kvtier/stats.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kvtier {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The lines of `text` that start with `prefix`.
std::vector<std::string> LinesStartingWith(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& line : Lines(text)) {
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// LatencyHistogram

TEST(LatencyHistogramTest, BucketOfUsesPowerOfTwoMicrosecondEdges) {
  // Bucket 0 is [0, 1) µs; bucket b >= 1 is [2^(b-1), 2^b) µs.
  EXPECT_EQ(LatencyHistogram::BucketOf(0), 0u);
  EXPECT_EQ(LatencyHistogram::BucketOf(999), 0u);
  EXPECT_EQ(LatencyHistogram::BucketOf(1'000), 1u);
  EXPECT_EQ(LatencyHistogram::BucketOf(1'999), 1u);
  EXPECT_EQ(LatencyHistogram::BucketOf(2'000), 2u);
  EXPECT_EQ(LatencyHistogram::BucketOf(3'999), 2u);
  EXPECT_EQ(LatencyHistogram::BucketOf(4'000), 3u);
  EXPECT_EQ(LatencyHistogram::BucketOf(1'000'000), 10u);  // 1 ms = 1000 µs in [512, 1024)
  EXPECT_EQ(LatencyHistogram::BucketOf(1'024'000), 11u);
}

TEST(LatencyHistogramTest, BucketOfEveryEdgeMatchesItsDefinition) {
  for (size_t b = 1; b + 1 < LatencyHistogram::kBuckets; ++b) {
    const uint64_t lower_us = uint64_t{1} << (b - 1);
    EXPECT_EQ(LatencyHistogram::BucketOf(lower_us * 1000), b) << "lower edge of bucket " << b;
    EXPECT_EQ(LatencyHistogram::BucketOf(lower_us * 2000 - 1), b) << "upper edge of bucket " << b;
  }
}

TEST(LatencyHistogramTest, BucketOfClampsHugeLatenciesIntoTheLastBucket) {
  EXPECT_EQ(LatencyHistogram::BucketOf(UINT64_MAX), LatencyHistogram::kBuckets - 1);
  EXPECT_EQ(LatencyHistogram::BucketOf(3'600ull * 1'000'000'000), LatencyHistogram::kBuckets - 1);  // 1 hour
}

TEST(LatencyHistogramTest, EmptyHistogramHasZeroTotalAndZeroQuantiles) {
  const LatencyHistogram h;
  EXPECT_EQ(h.total(), 0u);
  EXPECT_EQ(h.QuantileUs(0.0), 0.0);
  EXPECT_EQ(h.QuantileUs(0.5), 0.0);
  EXPECT_EQ(h.QuantileUs(1.0), 0.0);
}

TEST(LatencyHistogramTest, QuantileIsTheUpperEdgeOfTheBucketHoldingIt) {
  LatencyHistogram h;
  h.counts[LatencyHistogram::BucketOf(5'000)] = 90;   // 5 µs -> bucket [4, 8)
  h.counts[LatencyHistogram::BucketOf(700'000)] = 10;  // 700 µs -> bucket [512, 1024)
  EXPECT_EQ(h.total(), 100u);
  EXPECT_EQ(h.QuantileUs(0.0), 8.0);
  EXPECT_EQ(h.QuantileUs(0.5), 8.0);
  EXPECT_EQ(h.QuantileUs(0.9), 8.0);
  EXPECT_EQ(h.QuantileUs(0.91), 1024.0);
  EXPECT_EQ(h.QuantileUs(0.99), 1024.0);
  EXPECT_EQ(h.QuantileUs(1.0), 1024.0);
}

TEST(LatencyHistogramTest, QuantileSkipsEmptyLeadingBuckets) {
  LatencyHistogram h;
  h.counts[6] = 1;
  EXPECT_EQ(h.QuantileUs(0.0), 64.0);
  EXPECT_EQ(h.QuantileUs(1.0), 64.0);
}

TEST(LatencyHistogramTest, QuantileOfSubMicrosecondSamplesIsOne) {
  LatencyHistogram h;
  h.counts[0] = 3;
  EXPECT_EQ(h.QuantileUs(0.5), 1.0);
}

TEST(LatencyHistogramTest, QuantilesAreMonotonic) {
  LatencyHistogram h;
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) h.counts[b] = (b * 7) % 5;
  double previous = 0.0;
  for (int i = 0; i <= 100; ++i) {
    const double q = h.QuantileUs(i / 100.0);
    EXPECT_GE(q, previous) << "q=" << i / 100.0;
    previous = q;
  }
}

// ---------------------------------------------------------------------------------------
// LatencyRecorder

TEST(LatencyRecorderTest, SnapshotCountsEachRecordInItsBucket) {
  LatencyRecorder r;
  EXPECT_EQ(r.Snapshot().total(), 0u);
  r.Record(500);        // bucket 0
  r.Record(1'500);      // bucket 1
  r.Record(1'600);      // bucket 1
  r.Record(10'000'000);  // 10 ms = 10000 µs: bucket 14
  const LatencyHistogram h = r.Snapshot();
  EXPECT_EQ(h.total(), 4u);
  EXPECT_EQ(h.counts[0], 1u);
  EXPECT_EQ(h.counts[1], 2u);
  EXPECT_EQ(h.counts[14], 1u);
  EXPECT_EQ(h.QuantileUs(0.5), 2.0);
  EXPECT_EQ(h.QuantileUs(1.0), 16384.0);
}

TEST(LatencyRecorderTest, SnapshotIsACopyThatLaterRecordsDoNotChange) {
  LatencyRecorder r;
  r.Record(1'000);
  const LatencyHistogram before = r.Snapshot();
  r.Record(1'000);
  EXPECT_EQ(before.total(), 1u);
  EXPECT_EQ(r.Snapshot().total(), 2u);
}

TEST(LatencyRecorderTest, ConcurrentRecordsAreAllCounted) {
  LatencyRecorder r;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&r, t] {
      for (int i = 0; i < kPerThread; ++i) r.Record(static_cast<uint64_t>(t) * 1'000'000 + static_cast<uint64_t>(i));
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(r.Snapshot().total(), uint64_t{kThreads} * kPerThread);
}

// ---------------------------------------------------------------------------------------
// MoverStats and RuntimeStats

TEST(MoverStatsTest, GbpsIsBytesPerBusyNanosecond) {
  MoverStats m;
  EXPECT_EQ(m.gbps(), 0.0);  // no division by zero
  m.bytes = 25'000'000'000;
  m.busy_ns = 1'000'000'000;
  EXPECT_DOUBLE_EQ(m.gbps(), 25.0);
}

TEST(RuntimeStatsTest, TextHasARowPerPresentTierOnly) {
  RuntimeStats s;
  s.tiers[TierIndex(TierKind::kHbm)] = TierStats{.tier = TierKind::kHbm,
                                                  .present = true,
                                                  .capacity_slots = 1024,
                                                  .slot_bytes = 64 << 10,
                                                  .used_slots = 512,
                                                  .peak_used_slots = 1000,
                                                  .hits = 1234567,
                                                  .misses = 89,
                                                  .evictions = 42,
                                                  .demoted_blocks = 40,
                                                  .dropped_blocks = 0,
                                                  .reserve_failures = 3};
  s.tiers[TierIndex(TierKind::kDram)] = TierStats{.tier = TierKind::kDram, .present = true, .capacity_slots = 16,
                                                   .slot_bytes = 1 << 30, .dropped_blocks = 777};
  s.tiers[TierIndex(TierKind::kNvme)] = TierStats{.tier = TierKind::kNvme, .present = false};
  const std::string text = s.ToText();

  const std::vector<std::string> header = LinesStartingWith(text, "tier");
  ASSERT_EQ(header.size(), 1u) << text;
  EXPECT_NE(header[0].find("hits"), std::string::npos);
  EXPECT_NE(header[0].find("evictions"), std::string::npos);

  const std::vector<std::string> hbm = LinesStartingWith(text, "hbm ");
  ASSERT_EQ(hbm.size(), 1u) << text;
  EXPECT_NE(hbm[0].find("64.0 MiB"), std::string::npos) << hbm[0];   // capacity 1024 x 64 KiB
  EXPECT_NE(hbm[0].find("32.0 MiB"), std::string::npos) << hbm[0];   // used 512 x 64 KiB
  EXPECT_NE(hbm[0].find("1234567"), std::string::npos) << hbm[0];    // hits
  EXPECT_NE(hbm[0].find(" 89"), std::string::npos) << hbm[0];        // misses
  EXPECT_NE(hbm[0].find(" 42"), std::string::npos) << hbm[0];        // evictions

  const std::vector<std::string> dram = LinesStartingWith(text, "dram ");
  ASSERT_EQ(dram.size(), 1u) << text;
  EXPECT_NE(dram[0].find("16.0 GiB"), std::string::npos) << dram[0];
  EXPECT_NE(dram[0].find("777"), std::string::npos) << dram[0];

  EXPECT_TRUE(LinesStartingWith(text, "nvme").empty()) << "absent tier listed:\n" << text;
}

TEST(RuntimeStatsTest, TextHasAMoverRowPerMoverStartingWithItsName) {
  RuntimeStats s;
  s.tiers[0] = TierStats{.tier = TierKind::kHbm, .present = true, .capacity_slots = 1, .slot_bytes = 1};
  MoverStats up;
  up.name = "cuda dram->hbm";  // movers name their own direction
  up.source = TierKind::kDram;
  up.destination = TierKind::kHbm;
  up.bytes = 3ull << 30;
  up.batches = 12;
  up.segments = 345;
  up.errors = 2;
  up.busy_ns = 1'000'000'000;
  up.engine_bytes = 2ull << 30;
  up.latency.counts[LatencyHistogram::BucketOf(100'000)] = 10;  // 100 µs -> [64, 128)
  MoverStats down;
  down.name = "uring dram->nvme";
  down.source = TierKind::kDram;
  down.destination = TierKind::kNvme;
  s.movers = {up, down};
  const std::string text = s.ToText();

  ASSERT_EQ(LinesStartingWith(text, "mover").size(), 1u) << text;
  const std::vector<std::string> up_rows = LinesStartingWith(text, "cuda dram->hbm ");
  ASSERT_EQ(up_rows.size(), 1u) << text;
  EXPECT_NE(up_rows[0].find("3.0 GiB"), std::string::npos) << up_rows[0];
  EXPECT_NE(up_rows[0].find("2.0 GiB"), std::string::npos) << up_rows[0];  // by the copy engines
  EXPECT_NE(up_rows[0].find(" 345"), std::string::npos) << up_rows[0];
  EXPECT_NE(up_rows[0].find("3.22"), std::string::npos) << up_rows[0];  // 3 GiB / 1 s in GB/s
  EXPECT_NE(up_rows[0].find(" 128"), std::string::npos) << up_rows[0];  // p50 and p99
  EXPECT_EQ(LinesStartingWith(text, "uring dram->nvme ").size(), 1u) << text;
}

TEST(RuntimeStatsTest, TextOmitsTheMoverTableWithoutMovers) {
  RuntimeStats s;
  s.tiers[0] = TierStats{.tier = TierKind::kHbm, .present = true};
  EXPECT_TRUE(LinesStartingWith(s.ToText(), "mover").empty());
}

TEST(RuntimeStatsTest, TextEndsWithTheBlockCounters) {
  RuntimeStats s;
  s.indexed_blocks = 101;
  s.blocks_allocated = 202;
  s.blocks_committed = 303;
  s.blocks_aborted = 4;
  s.onboard_blocks = 505;
  s.offload_blocks = 606;
  s.failed_copies = 7;
  s.pins = 8;
  const std::string text = s.ToText();
  for (const char* needle : {"indexed blocks 101", "allocated 202", "committed 303", "aborted 4", "onboarded 505",
                             "offloaded 606", "failed copies 7", "pins held 8"}) {
    EXPECT_NE(text.find(needle), std::string::npos) << needle << " missing from\n" << text;
  }
}

TEST(TierNameTest, NamesEachTier) {
  EXPECT_EQ(TierName(TierKind::kHbm), "hbm");
  EXPECT_EQ(TierName(TierKind::kDram), "dram");
  EXPECT_EQ(TierName(TierKind::kNvme), "nvme");
}

}  // namespace
}  // namespace kvtier
