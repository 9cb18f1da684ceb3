// Read bounds for `kvtier bench decode`: how fast this card merely reads what a decode step
// reads, in the order the step has to read it. No attention, no scores, no top-k — every
// 16-byte word is loaded and folded into a checksum, nothing else. A plain streaming read
// (512-thread CTAs, 8 loads of 16 B in flight per thread; on an H100 it reads large layers at
// the copy's rate), so a floor measured in the same run for a kernel that reads the same bytes
// in the same order — an empirical floor, not a theorem.
//
// One launch, two phases:
//   1. `first`: up to two contiguous ranges, read by the whole grid (a sparse step's Quest
//      metadata: the int8 bounds and the scales of every slice);
//   2. between the phases, when `barrier` is set, a grid-wide barrier: a sparse step cannot
//      know which K/V it reads before every score of a row is known (a per-row wait ends at
//      about the same time in a one-wave grid: docs/sparse.md, round 14);
//   3. `slots`: `count` slots of `slot_bytes`, slot i at arena + slots[i] · slot_bytes (the
//      K/V slices the step selected, or every slice of a dense step), one warp per slot;
//   4. with `rows` > 0, the merge a split-K attention ends with: the slot list is `rows` equal
//      rows, each read by its own CTAs; each CTA writes a partial of `partial_bytes` and counts
//      itself; the row's last CTA reads the row's partials back (the checksum goes through
//      them, so a merge that misses one is caught); with `cluster`, the CTAs of a thread-block
//      cluster first merge in distributed shared memory and only each cluster's first CTA goes
//      on to the memory merge (none where a row is one cluster).
// The grid is one wave of resident CTAs (ReadBoundCtas), which the barrier needs, or with
// rows, rows · ctas_per_row CTAs (several waves where that is more and there is no barrier).
// CPU reference: ReadBoundReference (kernels/reference/read_bound.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::kernels {

struct ReadBoundArgs {
  // Phase 1: ranges of first_bytes[i] bytes at first[i]; bytes 0 = no range. 16-byte aligned,
  // sizes multiples of 16.
  const void* first[2] = {nullptr, nullptr};
  uint64_t first_bytes[2] = {0, 0};
  // Non-null: the grid-wide barrier between the phases. Two uint32 words of device memory,
  // zeroed before the first launch and left to the launches after it (each launch leaves the
  // arrival count at zero). Launches that share it must not overlap: with PDL each launch
  // waits for its predecessor before it arrives.
  uint32_t* barrier = nullptr;
  // Phase 2: `count` slots of `slot_bytes` (a multiple of 16; arena 16-byte aligned).
  const void* arena = nullptr;
  const uint32_t* slots = nullptr;
  uint32_t count = 0;
  uint32_t slot_bytes = 0;
  // Split-K rows (0 = none): `count` a multiple of `rows`; the launch runs rows · ctas_per_row
  // CTAs (at most 2^31 - 1). `partials`: room for one partial of `partial_bytes` (a multiple
  // of 16; the CTA's checksum, then zeros) per CTA, or per cluster with clusters, 16-byte
  // aligned; `row_counters`: `rows` words, zeroed before the first launch (each launch leaves
  // them at zero). Launches that share them must not overlap.
  uint32_t rows = 0;
  uint32_t partial_bytes = 0;
  void* partials = nullptr;
  uint32_t* row_counters = nullptr;
  // With rows: CTAs per row (0 = ⌊ReadBoundCtas / rows⌋ rounded down to a multiple of
  // `cluster`, at least one cluster or CTA); with a barrier, rows · ctas_per_row must not
  // exceed ReadBoundCtas (every CTA resident at once).
  uint32_t ctas_per_row = 0;
  // With rows: CTAs per thread-block cluster, 0 (none) or 2, 4, 8, 16 (16 is a non-portable
  // size: the launch fails where the device cannot run it); ctas_per_row a multiple of it;
  // partial_bytes ≤ kReadBoundMaxClusterPartial (each CTA's partial in its shared memory).
  // Not with a barrier.
  uint32_t cluster = 0;
  // Device memory: *sink ^= the XOR of every 64-bit word read (so XOR is order-free: two
  // launches over the same bytes cancel). Required.
  unsigned long long* sink = nullptr;
  // Launch with programmatic dependent launch: phase 1 is read before the wait for the
  // predecessor (which must not write those ranges), the slot list and the slots after it.
  // Every launch lets a PDL successor start once it has passed its barrier.
  bool programmatic_dependent_launch = false;
  // Test hook (null in use): two zeroed words; with a barrier, each CTA adds 1 to [0] before
  // it and, after it, sets [1] to 1 if [0] is not yet a multiple of the grid — a barrier that
  // let a CTA through early.
  uint32_t* barrier_probe = nullptr;
};

inline constexpr uint32_t kReadBoundMaxClusterPartial = 32 << 10;

// CTAs of one launch on the current device: as many as are resident at once (≤ 4 per SM).
cudaError_t ReadBoundCtas(uint32_t* ctas);

// cudaErrorInvalidValue for a missing sink, misaligned or partial words, a slot size of 0 or
// not a multiple of 16, slots without an arena, rows that do not divide the slots or come
// without partials (size, alignment) or counters, too many CTAs, and a cluster or CTAs per
// row not as above.
cudaError_t LaunchReadBound(const ReadBoundArgs& args, cudaStream_t stream);

}  // namespace kvtier::kernels
