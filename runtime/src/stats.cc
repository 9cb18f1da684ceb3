#include "kvtier/stats.h"

#include <fmt/format.h>

#include <bit>

namespace kvtier {

uint64_t LatencyHistogram::total() const {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

size_t LatencyHistogram::BucketOf(uint64_t ns) {
  const uint64_t us = ns / 1000;
  const size_t b = us == 0 ? 0 : static_cast<size_t>(std::bit_width(us));
  return b < kBuckets ? b : kBuckets - 1;
}

double LatencyHistogram::QuantileUs(double q) const {
  const uint64_t n = total();
  if (n == 0) return 0.0;
  const double target = q * static_cast<double>(n);
  uint64_t seen = 0;
  for (size_t b = 0; b < kBuckets; ++b) {
    seen += counts[b];
    if (static_cast<double>(seen) >= target && counts[b] > 0) return static_cast<double>(uint64_t{1} << b);
  }
  return static_cast<double>(uint64_t{1} << (kBuckets - 1));
}

LatencyHistogram LatencyRecorder::Snapshot() const {
  LatencyHistogram h;
  for (size_t i = 0; i < h.counts.size(); ++i) h.counts[i] = counts_[i].load(std::memory_order_relaxed);
  return h;
}

namespace {
std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  return fmt::format("{:.1f} {}", b, units[u]);
}
}  // namespace

std::string RuntimeStats::ToText() const {
  std::string out;
  out += fmt::format("{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "tier", "capacity",
                     "used", "peak", "hits", "misses", "evictions", "demoted", "dropped");
  for (const TierStats& t : tiers) {
    if (!t.present) continue;
    out += fmt::format("{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", TierName(t.tier),
                       HumanBytes(double(t.capacity_slots * t.slot_bytes)),
                       HumanBytes(double(t.used_slots * t.slot_bytes)),
                       HumanBytes(double(t.peak_used_slots * t.slot_bytes)), t.hits, t.misses, t.evictions,
                       t.demoted_blocks, t.dropped_blocks);
  }
  if (!movers.empty()) {
    // "by engines": bytes a GPU mover sent as copy-engine runs (MoverStats::engine_bytes).
    out += fmt::format("\n{:<26} {:>12} {:>12} {:>9} {:>10} {:>7} {:>9} {:>9} {:>9}\n", "mover", "bytes",
                       "by engines", "batches", "segments", "errors", "GB/s", "p50 µs", "p99 µs");
    for (const MoverStats& m : movers) {
      out += fmt::format("{:<26} {:>12} {:>12} {:>9} {:>10} {:>7} {:>9.2f} {:>9.0f} {:>9.0f}\n",
                         m.name, HumanBytes(double(m.bytes)), HumanBytes(double(m.engine_bytes)), m.batches,
                         m.segments, m.errors, m.gbps(),
                         m.latency.QuantileUs(0.5), m.latency.QuantileUs(0.99));
    }
  }
  for (const TierStats& t : tiers) {
    if (!t.present || t.metadata_capacity_bytes == 0) continue;
    out += fmt::format("{} metadata: {} of {} (apart from the slots)\n", TierName(t.tier),
                       HumanBytes(double(t.metadata_bytes)), HumanBytes(double(t.metadata_capacity_bytes)));
  }
  for (const TierStats& t : tiers) {
    if (!t.present || t.admitted_bytes + t.refused_reuse + t.refused_budget == 0) continue;
    out += fmt::format("{} admission: admitted {}, refused {} (reused too few times) + {} (over the write budget)\n",
                       TierName(t.tier), HumanBytes(double(t.admitted_bytes)), t.refused_reuse, t.refused_budget);
  }
  out += fmt::format(
      "\nindexed blocks {}, allocated {}, committed {}, aborted {}, onboarded {}, offloaded {}, failed copies {}, "
      "pins held {}, recovered at open {}\n",
      indexed_blocks, blocks_allocated, blocks_committed, blocks_aborted, onboard_blocks, offload_blocks,
      failed_copies, pins, recovered_blocks);
  return out;
}

}  // namespace kvtier
