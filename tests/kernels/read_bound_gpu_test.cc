// The read-bound kernel (kernels/read_bound.cuh) against its CPU reference on fresh random
// bytes: the checksum over the phase-1 ranges and the listed slots, with and without the grid
// barrier and PDL, over chains of launches that share one barrier; and every refusal. Skips
// without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <random>
#include <span>
#include <vector>

#include "kernels/cuda_test_support.h"
#include "read_bound.cuh"
#include "reference/read_bound.h"

namespace kvtier::kernels {
namespace {

using ::kvtier::testing::DeviceArray;

std::vector<std::byte> RandomBytes(size_t n, std::mt19937_64& rng) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t r = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) v[i + j] = static_cast<std::byte>(r >> (8 * j));
  }
  return v;
}

struct Case {
  size_t first0 = 0, first1 = 0;  // phase-1 bytes
  uint32_t arena_slots = 0, count = 0, slot_bytes = 0;
  uint32_t rows = 0, partial_bytes = 0;  // split-K rows: the merge through partials
  uint32_t ctas_per_row = 0, cluster = 0;
};

// `launches` launches (PDL after the first where `pdl`) on one stream, sharing one barrier
// where `barrier` (with its probe) and the row counters and partials. Launches alternate
// between two slot lists, so a merge that read a partial of the launch before would change
// the checksum. The sink starts at a random poison and must end at poison ^ the XOR of the
// launches' references.
void Check(const Case& c, bool barrier, bool pdl, uint32_t launches, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "first " << c.first0 << "+" << c.first1 << ", " << c.count << " slots of "
                                    << c.slot_bytes << " B, rows " << c.rows << " x " << c.ctas_per_row
                                    << " CTAs, cluster " << c.cluster << ", barrier " << barrier << ", pdl " << pdl
                                    << ", launches " << launches);
  std::mt19937_64 rng(seed);
  const std::vector<std::byte> f0 = RandomBytes(c.first0, rng), f1 = RandomBytes(c.first1, rng);
  const std::vector<std::byte> arena = RandomBytes(size_t{c.arena_slots} * c.slot_bytes, rng);
  std::vector<uint32_t> slots[2];
  uint64_t want[2];
  const std::span<const std::byte> ranges[2] = {f0, f1};
  for (int k = 0; k < 2; ++k) {
    slots[k].resize(c.count);
    for (uint32_t& s : slots[k]) s = static_cast<uint32_t>(rng() % c.arena_slots);  // repeats allowed
    want[k] = ReadBoundReference(ranges, arena.data(), slots[k], c.slot_bytes);
  }
  // Random bytes: a zero checksum would hide a kernel that reads nothing; equal ones (where
  // there are slots), a launch that read the other list.
  ASSERT_NE(want[0], 0u);
  if (c.count > 0) {
    ASSERT_NE(want[0], want[1]);
  }
  uint64_t expect = 0;
  for (uint32_t i = 0; i < launches; ++i) expect ^= want[i % 2];

  DeviceArray<std::byte> d0(f0), d1(f1), darena(arena);
  DeviceArray<uint32_t> dslots0(slots[0]), dslots1(slots[1]), dbarrier(std::vector<uint32_t>{0, 0}),
      probe(std::vector<uint32_t>{0, 0});
  DeviceArray<uint32_t> counters(std::vector<uint32_t>(std::max(c.rows, 1u), 0));
  uint32_t ctas = 0;
  ASSERT_CUDA(ReadBoundCtas(&ctas));
  // Partials poisoned with random bytes: a merge that reads a partial its CTA did not write
  // changes the checksum.
  const size_t partial_count = std::max<size_t>(ctas, size_t{c.rows} * c.ctas_per_row);
  DeviceArray<std::byte> partials(RandomBytes(partial_count * std::max(c.partial_bytes, 16u), rng));
  const unsigned long long poison = rng() | 1;
  DeviceArray<unsigned long long> sink(std::vector<unsigned long long>{poison});
  ASSERT_TRUE(d0.p && d1.p && darena.p && dslots0.p && dslots1.p && dbarrier.p && probe.p && counters.p &&
              partials.p && sink.p);
  ReadBoundArgs a{.first = {d0.p, d1.p}, .first_bytes = {c.first0, c.first1},
                  .barrier = barrier ? dbarrier.p : nullptr, .arena = darena.p, .count = c.count,
                  .slot_bytes = c.slot_bytes, .rows = c.rows, .partial_bytes = c.partial_bytes,
                  .partials = partials.p, .row_counters = counters.p, .ctas_per_row = c.ctas_per_row,
                  .cluster = c.cluster, .sink = sink.p, .barrier_probe = probe.p};
  cudaStream_t stream = nullptr;
  ASSERT_CUDA(cudaStreamCreate(&stream));
  for (uint32_t i = 0; i < launches; ++i) {
    a.slots = i % 2 == 0 ? dslots0.p : dslots1.p;
    a.programmatic_dependent_launch = pdl && i > 0;
    ASSERT_CUDA(LaunchReadBound(a, stream));
  }
  ASSERT_CUDA(cudaStreamSynchronize(stream));
  ASSERT_CUDA(cudaStreamDestroy(stream));
  EXPECT_EQ(sink.Get()[0], poison ^ expect);
  for (uint32_t r = 0; r < c.rows; ++r) EXPECT_EQ(counters.Get()[r], 0u) << "row " << r;  // left at zero
  const std::vector<uint32_t> seen = probe.Get();
  if (barrier) {  // every launch arrived and left the count at zero; one generation each
    const std::vector<uint32_t> state = dbarrier.Get();
    EXPECT_EQ(state[0], 0u);
    EXPECT_EQ(state[1], launches);
    // No CTA left the barrier before every CTA of its launch had arrived.
    const uint32_t step = std::max(c.cluster, 1u);
    const uint32_t grid = c.rows == 0 ? ctas
                                      : c.rows * (c.ctas_per_row != 0 ? c.ctas_per_row
                                                                      : std::max(ctas / c.rows / step * step, step));
    EXPECT_EQ(seen[0], launches * grid);
    EXPECT_EQ(seen[1], 0u) << "a CTA passed the barrier early";
  } else {
    EXPECT_EQ(seen[0], 0u);  // the probe is the barrier's
  }
}

TEST(ReadBoundGpu, ChecksumEqualsTheReference) {
  if (!::kvtier::testing::HaveCudaDevice()) GTEST_SKIP() << "no CUDA device";
  uint32_t ctas = 0;
  ASSERT_CUDA(ReadBoundCtas(&ctas));
  ASSERT_GT(ctas, 0u);
  const uint32_t warps = ctas * 16;
  const Case cases[] = {
      // A sparse step's shape: metadata ranges, then 8 KiB slices; fewer slots than warps.
      {.first0 = 16384 * 256, .first1 = 16384 * 4, .arena_slots = 4096, .count = 1024, .slot_bytes = 8192},
      // More slots than warps (each warp several), a slot that is not a multiple of 512 B.
      {.first0 = 4096, .first1 = 0, .arena_slots = 3 * warps, .count = 2 * warps + 17, .slot_bytes = 48},
      // A range not a multiple of the grid's stride; no slots.
      {.first0 = 16 * 1000003, .first1 = 16 * 7, .arena_slots = 1, .count = 0, .slot_bytes = 16},
      // Slots only (a dense step's read).
      {.first0 = 0, .first1 = 0, .arena_slots = 2048, .count = 2048, .slot_bytes = 8192 + 16},
      // Split-K rows: 8 rows of a dense read (the rows' CTAs merge through 2112-byte partials);
      // 3 rows that do not divide the CTAs, with metadata first; one row of few slots (most
      // of its CTAs read nothing and still count).
      {.first0 = 0, .first1 = 0, .arena_slots = 4096, .count = 8 * 512, .slot_bytes = 8192, .rows = 8,
       .partial_bytes = 2112},
      {.first0 = 4096, .first1 = 64, .arena_slots = 1000, .count = 3 * 700, .slot_bytes = 1024, .rows = 3,
       .partial_bytes = 16},
      {.first0 = 0, .first1 = 0, .arena_slots = 64, .count = 5, .slot_bytes = 8192, .rows = 1, .partial_bytes = 64},
      // Clusters: one of 16 per row (no memory merge), 8 × 2 per row, 2 × 3 per row with metadata
      // first, and more rows × CTAs than fit at once (clusters run in waves).
      {.arena_slots = 4096, .count = 8 * 512, .slot_bytes = 8192, .rows = 8, .partial_bytes = 2112,
       .ctas_per_row = 16, .cluster = 16},
      {.arena_slots = 512, .count = 3 * 256, .slot_bytes = 4096, .rows = 3, .partial_bytes = 2112,
       .ctas_per_row = 16, .cluster = 8},
      {.first0 = 4096, .first1 = 16, .arena_slots = 100, .count = 2 * 50, .slot_bytes = 512, .rows = 2,
       .partial_bytes = 32, .ctas_per_row = 6, .cluster = 2},
      {.arena_slots = 256, .count = 64 * 8, .slot_bytes = 1024, .rows = 64, .partial_bytes = 64,
       .ctas_per_row = 48, .cluster = 4},
      // The largest cluster partial; CTAs per row set without clusters; more rows than CTAs
      // fit at once (no barrier then: waves).
      {.arena_slots = 64, .count = 2 * 64, .slot_bytes = 8192, .rows = 2, .partial_bytes = kReadBoundMaxClusterPartial,
       .ctas_per_row = 4, .cluster = 2},
      {.arena_slots = 300, .count = 5 * 60, .slot_bytes = 2048, .rows = 5, .partial_bytes = 2112, .ctas_per_row = 7},
      {.arena_slots = 300, .count = (ctas + 3) * 2, .slot_bytes = 512, .rows = ctas + 3, .partial_bytes = 32},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    // Clusters never wait at the grid barrier, nor do more rows than fit at once.
    const bool barrier_ok = c.cluster == 0 && c.rows <= ctas && uint64_t{c.rows} * c.ctas_per_row <= ctas;
    for (bool barrier : {false, true}) {
      if (barrier && !barrier_ok) continue;
      for (bool pdl : {false, true}) Check(c, barrier, pdl, 1, seed++);
    }
    Check(c, barrier_ok, true, 7, seed++);  // a chain sharing one barrier (and the counters)
    Check(c, barrier_ok, true, 8, seed++);
  }
}

TEST(ReadBoundGpu, RefusesBadArguments) {
  if (!::kvtier::testing::HaveCudaDevice()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(99);
  DeviceArray<std::byte> bytes(RandomBytes(4096, rng));
  // Slots 2 and 5 lie outside the first range (bytes 0..1023): nothing cancels in the checksum.
  DeviceArray<uint32_t> slots(std::vector<uint32_t>{2, 5});
  DeviceArray<unsigned long long> sink(std::vector<unsigned long long>{42});
  DeviceArray<std::byte> part(4096);
  DeviceArray<uint32_t> counters(std::vector<uint32_t>(4, 0));
  uint32_t ctas = 0;
  ASSERT_CUDA(ReadBoundCtas(&ctas));
  ASSERT_TRUE(bytes.p && slots.p && sink.p && part.p && counters.p);
  const ReadBoundArgs good{.first = {bytes.p, nullptr}, .first_bytes = {1024, 0}, .arena = bytes.p,
                           .slots = slots.p, .count = 2, .slot_bytes = 512, .sink = sink.p};
  auto split = [](ReadBoundArgs& a, uint32_t rows, void* partials, uint32_t partial_bytes, uint32_t* row_counters) {
    a.rows = rows;
    a.partials = partials;
    a.partial_bytes = partial_bytes;
    a.row_counters = row_counters;
  };
  auto with = [&](auto change) {
    ReadBoundArgs a = good;
    change(a);
    return a;
  };
  const ReadBoundArgs bad[] = {
      with([](ReadBoundArgs& a) { a.sink = nullptr; }),
      with([](ReadBoundArgs& a) { a.first_bytes[0] = 1000; }),
      with([&](ReadBoundArgs& a) { a.first[0] = bytes.p + 8; }),
      with([](ReadBoundArgs& a) { a.first[1] = nullptr, a.first_bytes[1] = 16; }),
      with([](ReadBoundArgs& a) { a.slot_bytes = 0; }),
      with([](ReadBoundArgs& a) { a.slot_bytes = 24; }),
      with([](ReadBoundArgs& a) { a.arena = nullptr; }),
      with([](ReadBoundArgs& a) { a.slots = nullptr; }),
      with([&](ReadBoundArgs& a) { a.arena = bytes.p + 4; }),
      // Rows: not dividing the slots; partials of a bad size, missing or misaligned; no
      // counters; more rows than CTAs with the barrier; too many CTAs.
      with([&](ReadBoundArgs& a) { split(a, 3, part.p, 16, counters.p); }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 24, counters.p); }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 0, counters.p); }),
      with([&](ReadBoundArgs& a) { split(a, 2, nullptr, 16, counters.p); }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p + 8, 16, counters.p); }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, nullptr); }),
      with([&](ReadBoundArgs& a) {  // more rows than CTAs, with the barrier
        split(a, ctas + 1, part.p, 16, counters.p);
        a.count = 0;
        a.barrier = counters.p + 2;
      }),
      with([&](ReadBoundArgs& a) {  // 2^32 CTAs
        split(a, 1u << 20, part.p, 16, counters.p);
        a.count = 0;
        a.ctas_per_row = 1u << 12;
      }),
      // CTAs per row: without rows; more than fit with the barrier. Clusters: without rows, of
      // 1, 3 or 32 CTAs, not dividing the CTAs per row, with the barrier, partials too large.
      with([](ReadBoundArgs& a) { a.ctas_per_row = 2; }),
      with([&](ReadBoundArgs& a) {
        split(a, 2, part.p, 16, counters.p);
        a.ctas_per_row = ctas;
        a.barrier = counters.p + 2;
      }),
      with([](ReadBoundArgs& a) { a.cluster = 2; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, counters.p), a.cluster = 1; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, counters.p), a.cluster = 3; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, counters.p), a.cluster = 32; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, counters.p), a.cluster = 4, a.ctas_per_row = 6; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, 16, counters.p), a.cluster = 2, a.barrier = counters.p + 2; }),
      with([&](ReadBoundArgs& a) { split(a, 2, part.p, kReadBoundMaxClusterPartial + 16, counters.p), a.cluster = 2; }),
  };
  for (size_t i = 0; i < std::size(bad); ++i) {
    EXPECT_EQ(LaunchReadBound(bad[i], nullptr), cudaErrorInvalidValue) << "case " << i;
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(sink.Get()[0], 42u);  // nothing ran
  ASSERT_CUDA(LaunchReadBound(good, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_NE(sink.Get()[0], 42u);  // random bytes: the checksum is not zero
}

}  // namespace
}  // namespace kvtier::kernels
