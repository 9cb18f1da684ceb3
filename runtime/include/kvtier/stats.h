// Statistics: plain structs (copyable snapshots) and their text form.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/types.h"

namespace kvtier {

// A latency histogram with power-of-two microsecond buckets ([0,1), [1,2), [2,4) ... µs).
struct LatencyHistogram {
  static constexpr size_t kBuckets = 32;
  std::array<uint64_t, kBuckets> counts{};

  uint64_t total() const;
  // The upper edge, in microseconds, of the bucket holding quantile q (0..1); 0 when empty.
  double QuantileUs(double q) const;
  static size_t BucketOf(uint64_t ns);
};

// Thread-safe recorder behind a LatencyHistogram (relaxed counters: statistics only).
class LatencyRecorder {
 public:
  void Record(uint64_t ns) { counts_[LatencyHistogram::BucketOf(ns)].fetch_add(1, std::memory_order_relaxed); }
  LatencyHistogram Snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, LatencyHistogram::kBuckets> counts_{};
};

struct TierStats {
  TierKind tier = TierKind::kHbm;
  bool present = false;
  uint64_t capacity_slots = 0;
  uint64_t slot_bytes = 0;
  uint64_t used_slots = 0;       // reserved, including slots whose release waits on a fence
  uint64_t peak_used_slots = 0;
  uint64_t hits = 0;             // matched blocks whose fastest copy was in this tier
  uint64_t misses = 0;           // looked-up blocks not in this tier nor any faster one
  uint64_t evictions = 0;        // slots freed by demotion (clean copy below, or copied down)
  uint64_t demoted_blocks = 0;   // evictions that first copied the block down a tier
  uint64_t dropped_blocks = 0;   // blocks dropped because this was their last tier
  uint64_t reserve_failures = 0; // a Reserve that found the tier full
  // A persistent tier's admission (AdmissionOptions): demoted blocks let in (bytes), and
  // those refused and dropped instead, by reason.
  uint64_t admitted_bytes = 0;
  uint64_t refused_reuse = 0;    // matched fewer than min_uses times
  uint64_t refused_budget = 0;   // over the drive-write budget of the day
  // Metadata arenas held in this tier (Tier::ReserveMetadata: the Quest slice metadata on
  // HBM), apart from the slots, and the tier's metadata budget.
  uint64_t metadata_bytes = 0;
  uint64_t metadata_capacity_bytes = 0;
};

struct MoverStats {
  std::string name;
  TierKind source = TierKind::kDram;
  TierKind destination = TierKind::kHbm;
  uint64_t bytes = 0;
  uint64_t batches = 0;
  uint64_t segments = 0;
  uint64_t errors = 0;        // batches that completed with an error
  uint64_t busy_ns = 0;       // sum over batches of the time spent copying (GB/s = bytes / busy)
  uint64_t engine_bytes = 0;  // of `bytes`, those moved as copy-engine runs (GPU movers)
  LatencyHistogram latency;   // per batch, submit -> completion
  double gbps() const { return busy_ns ? double(bytes) / double(busy_ns) : 0.0; }
};

struct RuntimeStats {
  std::array<TierStats, kTierCount> tiers{};
  std::vector<MoverStats> movers;
  uint64_t indexed_blocks = 0;
  uint64_t blocks_allocated = 0;
  uint64_t blocks_committed = 0;
  uint64_t blocks_aborted = 0;     // allocated, then released without a commit
  uint64_t onboard_blocks = 0;     // blocks copied toward HBM
  uint64_t offload_blocks = 0;     // blocks copied away from HBM (explicit or on commit)
  uint64_t failed_copies = 0;      // blocks whose copy failed: never published
  uint64_t recovered_blocks = 0;   // blocks adopted from persistent tiers at Create
  uint64_t pins = 0;               // pins currently held

  std::string ToText() const;      // a table for people
};

}  // namespace kvtier
