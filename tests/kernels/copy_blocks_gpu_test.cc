// The CUDA block copy kernel against its CPU reference (kernels/reference/copy_blocks.h), on
// fresh random data with poisoned destinations: gather (pinned host -> device, reading host
// memory through UVA) then scatter (device -> pinned host through UVA), for block sizes from
// 16 B to 2 MiB, with 16-byte loads and stores and with TMA bulk copies through shared
// memory. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "copy_blocks.cuh"
#include "kernels/cuda_test_support.h"
#include "reference/copy_blocks.h"

namespace kvtier::kernels {
namespace {

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

constexpr std::byte kPoison{0xA5};

class CopyBlocksGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
    for (void* p : host_) cudaFreeHost(p);
    for (void* p : device_) cudaFree(p);
  }
  std::byte* Host(size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable), cudaSuccess);
    host_.push_back(p);
    return static_cast<std::byte*>(p);
  }
  std::byte* Device(size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
    device_.push_back(p);
    return static_cast<std::byte*>(p);
  }
  // Copies `descs` with one launch (descriptors staged through device memory), with the
  // kernel shape and unroll of the test's parameters.
  void Launch(const std::vector<DeviceCopyDescriptor>& descs) {
    DeviceCopyDescriptor* d = nullptr;
    ASSERT_CUDA(cudaMalloc(&d, std::max<size_t>(1, descs.size()) * sizeof(DeviceCopyDescriptor)));
    ASSERT_CUDA(cudaMemcpyAsync(d, descs.data(), descs.size() * sizeof(DeviceCopyDescriptor), cudaMemcpyHostToDevice, stream_));
    CopyLaunch launch{.ctas = ctas_, .unroll = unroll_, .uniform_bytes = 0, .streaming = unroll_ == 8,
                      .bulk_chunk = bulk_chunk_, .bulk_stages = bulk_stages_};
    if (uniform_ && !descs.empty()) launch.uniform_bytes = descs.front().bytes;
    ASSERT_CUDA(LaunchCopyBlocks(d, static_cast<uint32_t>(descs.size()), launch, stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    ASSERT_CUDA(cudaFree(d));
  }

  // Round trip of `blocks` blocks of `bytes` through scattered slots of three pools; every
  // byte of the final pool is compared with the CPU reference applied to the same moves.
  void RoundTrip(uint64_t bytes, uint32_t blocks, uint64_t seed) {
    const uint32_t slots = blocks * 2 + 1;
    const size_t pool = bytes * slots;
    std::byte* src = Host(pool);
    std::byte* dev = Device(pool);
    std::byte* dst = Host(pool);
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i + 8 <= pool; i += 8) {
      const uint64_t w = rng();
      std::memcpy(src + i, &w, 8);
    }
    std::memset(dst, static_cast<int>(kPoison), pool);
    ASSERT_CUDA(cudaMemset(dev, 0x5A, pool));
    std::vector<uint32_t> perm_a(slots), perm_b(slots), perm_c(slots);
    for (uint32_t i = 0; i < slots; ++i) perm_a[i] = perm_b[i] = perm_c[i] = i;
    std::shuffle(perm_a.begin(), perm_a.end(), rng);
    std::shuffle(perm_b.begin(), perm_b.end(), rng);
    std::shuffle(perm_c.begin(), perm_c.end(), rng);
    std::vector<DeviceCopyDescriptor> gather, scatter;
    std::vector<CopyDescriptor> reference;
    std::vector<std::byte> expected(pool, kPoison);
    for (uint32_t b = 0; b < blocks; ++b) {
      const uint64_t s = perm_a[b] * bytes, d = perm_b[b] * bytes, h = perm_c[b] * bytes;
      gather.push_back({reinterpret_cast<uint64_t>(src + s), reinterpret_cast<uint64_t>(dev + d), bytes, 0});
      scatter.push_back({reinterpret_cast<uint64_t>(dev + d), reinterpret_cast<uint64_t>(dst + h), bytes, 0});
      reference.push_back({src + s, expected.data() + h, bytes});
    }
    CopyBlocksReference(reference);
    Launch(gather);
    Launch(scatter);
    ASSERT_EQ(std::memcmp(dst, expected.data(), pool), 0) << "block size " << bytes << " B";
  }

  cudaStream_t stream_ = nullptr;
  std::vector<void*> host_, device_;
  bool uniform_ = false;
  uint32_t unroll_ = 4;
  uint32_t ctas_ = 0;
  uint32_t bulk_chunk_ = 0, bulk_stages_ = 4;
};

// Every case runs for each kernel shape (ragged, uniform) and unroll (4; 8 with streaming
// evict-first accesses), and for the bulk kernel with chunks and stage counts that cut
// blocks at odd places (1008 B: not a power of two; 16 KiB; 64 KiB with 3 stages = 192 KiB of
// shared memory), where the shape flag only changes the launch's uniform_bytes.
struct CopyShape {
  bool uniform;
  uint32_t unroll, bulk_chunk, bulk_stages;
};
class CopyBlocksShapeTest : public CopyBlocksGpuTest, public ::testing::WithParamInterface<CopyShape> {
 protected:
  void SetUp() override {
    CopyBlocksGpuTest::SetUp();
    uniform_ = GetParam().uniform;
    unroll_ = GetParam().unroll;
    bulk_chunk_ = GetParam().bulk_chunk;
    bulk_stages_ = GetParam().bulk_stages;
  }
};

TEST_P(CopyBlocksShapeTest, EveryMultipleOf16UpTo64KiBRoundTripsBitExact) {
  for (uint64_t bytes = 16; bytes <= (64u << 10); bytes += 16) {
    RoundTrip(bytes, 3, bytes);
    if (HasFatalFailure()) return;
  }
}

TEST_P(CopyBlocksShapeTest, EveryMultipleOf4KiBUpTo2MiBRoundTripsBitExact) {
  for (uint64_t bytes = 4096; bytes <= (2u << 20); bytes += 4096) {
    RoundTrip(bytes, 2, bytes ^ 0x1234);
    if (HasFatalFailure()) return;
  }
}

TEST_P(CopyBlocksShapeTest, OddMultiplesOf16Above64KiBRoundTripBitExact) {
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<uint64_t> words((64u << 10) / 16, (2u << 20) / 16);
  for (int i = 0; i < 64; ++i) {
    const uint64_t bytes = (words(rng) | 1) * 16;  // never a multiple of 32
    RoundTrip(bytes, 2, bytes);
    if (HasFatalFailure()) return;
  }
}

TEST_P(CopyBlocksShapeTest, ManySmallBlocksInOneLaunch) {
  RoundTrip(4096, 20000, 7);  // far more descriptors than resident warps
  RoundTrip(16, 50000, 8);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CopyBlocksShapeTest,
                         ::testing::Values(CopyShape{false, 4, 0, 4}, CopyShape{true, 4, 0, 4},
                                           CopyShape{false, 8, 0, 4}, CopyShape{true, 8, 0, 4},
                                           CopyShape{false, 4, 1008, 2}, CopyShape{true, 4, 16384, 4},
                                           CopyShape{false, 4, 65536, 3}),
                         [](const auto& p) {
                           const CopyShape& c = p.param;
                           std::string name = std::string(c.uniform ? "uniform" : "ragged");
                           if (c.bulk_chunk == 0) return name + "_unroll" + std::to_string(c.unroll);
                           return name + "_bulk" + std::to_string(c.bulk_chunk) + "x" + std::to_string(c.bulk_stages);
                         });

// One bulk CTA walks every descriptor of the launch (batches of 32 in the warp's registers,
// empty descriptors skipped), and more CTAs than descriptors leave the extra ones idle.
TEST_F(CopyBlocksGpuTest, BulkCtasWalkEveryDescriptorWhateverTheGrid) {
  bulk_chunk_ = 4096;
  for (uint32_t ctas : {1u, 3u, 1000u}) {
    ctas_ = ctas;
    RoundTrip(4096 + 16, 200, ctas);
    if (HasFatalFailure()) return;
  }
  // Zero-byte descriptors between real ones copy nothing and stop nothing.
  std::byte* src = Host(1 << 20);
  std::byte* dev = Device(1 << 20);
  std::mt19937_64 rng(5);
  for (size_t i = 0; i < (1 << 20); i += 8) {
    const uint64_t w = rng();
    std::memcpy(src + i, &w, 8);
  }
  ASSERT_CUDA(cudaMemset(dev, 0x5A, 1 << 20));
  std::vector<DeviceCopyDescriptor> descs;
  std::vector<std::byte> want(1 << 20, std::byte{0x5A});
  for (uint64_t off = 0; off < (1 << 20); off += 8192) {
    descs.push_back({reinterpret_cast<uint64_t>(src + off), reinterpret_cast<uint64_t>(dev + off), 0, 0});
    descs.push_back({reinterpret_cast<uint64_t>(src + off), reinterpret_cast<uint64_t>(dev + off), 4096, 0});
    std::memcpy(want.data() + off, src + off, 4096);
  }
  ctas_ = 2;
  Launch(descs);
  std::vector<std::byte> got(1 << 20);
  ASSERT_CUDA(cudaMemcpy(got.data(), dev, got.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0);
}

TEST_F(CopyBlocksGpuTest, NoDescriptorsIsANoOp) {
  EXPECT_EQ(LaunchCopyBlocks(nullptr, 0, CopyLaunch{}, stream_), cudaSuccess);
}

TEST_F(CopyBlocksGpuTest, BadUnrollOrUniformSizeIsRejected) {
  DeviceCopyDescriptor* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, sizeof(DeviceCopyDescriptor)));
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas = 1, .unroll = 3, .uniform_bytes = 0}, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas = 1, .unroll = 4, .uniform_bytes = 24}, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas_per_sm = 9}, stream_), cudaErrorInvalidValue);
  // Bulk: chunk a multiple of 16 up to 64 KiB, 2..8 stages, the ring within shared memory.
  for (auto [chunk, stages] : std::vector<std::pair<uint32_t, uint32_t>>{
           {24, 4}, {kBulkMaxChunk + 16, 2}, {4096, 1}, {4096, kBulkMaxStages + 1}, {kBulkMaxChunk, kBulkMaxStages}}) {
    EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.bulk_chunk = chunk, .bulk_stages = stages}, stream_),
              cudaErrorInvalidValue)
        << chunk << " x " << stages;
  }
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  ASSERT_CUDA(cudaFree(d));
}

// The staged copy of the movers' copy-engine path (slot list in the launch parameters): pack
// random slots of a device pool into a staging buffer, unpack the staging buffer into other
// slots; part sizes from 16 B (non-power-of-two too) up to 256 KiB, counts up to the limit,
// both unrolls; poisoned outputs compared with StagedCopyReference in full.
TEST_F(CopyBlocksGpuTest, StagedPackAndUnpackMatchTheReference) {
  std::mt19937_64 rng(21);
  const std::vector<std::pair<uint64_t, uint32_t>> cases = {
      {16, kStagedMaxParts}, {48, 1000}, {4096, kStagedMaxParts}, {16384, 513}, {65536, 100}, {65552, 37}, {262144, 9}};
  for (uint32_t unroll : {4u, 8u}) {
    for (auto [part, count] : cases) {
      const uint32_t slots = 2 * count + 3;
      const size_t pool = part * slots;
      std::byte* dev = Device(pool);
      std::byte* staging = Device(part * count);
      std::vector<std::byte> host(pool), staged(part * count);
      for (size_t i = 0; i + 8 <= pool; i += 8) {
        const uint64_t w = rng();
        std::memcpy(host.data() + i, &w, 8);
      }
      ASSERT_CUDA(cudaMemcpy(dev, host.data(), pool, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemset(staging, 0x5A, part * count));
      std::vector<uint32_t> perm(slots);
      for (uint32_t i = 0; i < slots; ++i) perm[i] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      auto parts = std::make_unique<StagedParts>();
      parts->staging = reinterpret_cast<uint64_t>(staging);
      parts->part_bytes = part;
      parts->count = count;
      std::vector<std::byte*> from(count), to(count);
      for (uint32_t i = 0; i < count; ++i) {
        from[i] = host.data() + uint64_t{perm[i]} * part;
        parts->slots[i] = reinterpret_cast<uint64_t>(dev + uint64_t{perm[i]} * part);
      }
      const CopyLaunch launch{.unroll = unroll};
      ASSERT_CUDA(LaunchStagedCopy(*parts, true, launch, stream_));
      ASSERT_CUDA(cudaStreamSynchronize(stream_));
      std::vector<std::byte> want(part * count);
      StagedCopyReference(want.data(), part, from, true);
      ASSERT_CUDA(cudaMemcpy(staged.data(), staging, staged.size(), cudaMemcpyDeviceToHost));
      ASSERT_EQ(std::memcmp(staged.data(), want.data(), want.size()), 0) << "pack: " << count << " x " << part << " B";
      // Unpack the staging buffer into the other slots (poisoned first) and back to the host.
      ASSERT_CUDA(cudaMemset(dev, 0x5A, pool));
      std::vector<std::byte> expected(pool, std::byte{0x5A});
      for (uint32_t i = 0; i < count; ++i) {
        const uint32_t slot = perm[count + i];
        to[i] = expected.data() + uint64_t{slot} * part;
        parts->slots[i] = reinterpret_cast<uint64_t>(dev + uint64_t{slot} * part);
      }
      StagedCopyReference(want.data(), part, to, false);
      ASSERT_CUDA(LaunchStagedCopy(*parts, false, launch, stream_));
      ASSERT_CUDA(cudaStreamSynchronize(stream_));
      ASSERT_CUDA(cudaMemcpy(host.data(), dev, pool, cudaMemcpyDeviceToHost));
      ASSERT_EQ(std::memcmp(host.data(), expected.data(), pool), 0) << "unpack: " << count << " x " << part << " B";
    }
  }
}

TEST_F(CopyBlocksGpuTest, BadStagedLaunchesAreRejected) {
  auto parts = std::make_unique<StagedParts>();
  EXPECT_EQ(LaunchStagedCopy(*parts, true, CopyLaunch{}, stream_), cudaSuccess) << "no parts is a no-op";
  parts->count = kStagedMaxParts + 1;
  parts->part_bytes = 16;
  EXPECT_EQ(LaunchStagedCopy(*parts, true, CopyLaunch{}, stream_), cudaErrorInvalidValue);
  parts->count = 1;
  parts->part_bytes = 24;
  EXPECT_EQ(LaunchStagedCopy(*parts, true, CopyLaunch{}, stream_), cudaErrorInvalidValue);
  parts->part_bytes = 32;
  parts->staging = 8;
  EXPECT_EQ(LaunchStagedCopy(*parts, true, CopyLaunch{}, stream_), cudaErrorInvalidValue);
  parts->staging = 0;
  EXPECT_EQ(LaunchStagedCopy(*parts, true, CopyLaunch{.unroll = 3}, stream_), cudaErrorInvalidValue);
}

TEST(CopyBlocksCtasTest, GrowsWithWorkAndCapsAtFourPerSm) {
  EXPECT_EQ(CopyBlocksCtas(1, 132), 1u);
  EXPECT_EQ(CopyBlocksCtas(8, 132), 1u);
  EXPECT_EQ(CopyBlocksCtas(9, 132), 2u);
  EXPECT_EQ(CopyBlocksCtas(1u << 20, 132), 132u * 4);
  EXPECT_EQ(CopyBlocksCtas(100, 0), 4u);  // a device reporting no SMs still gets one SM's worth
  EXPECT_EQ(CopyBlocksCtas(1u << 20, 132, 2), 132u * 2);  // the D2H mover's cap
  EXPECT_EQ(CopyBlocksCtas(9, 132, 2), 2u);               // the work still decides below the cap
  EXPECT_EQ(CopyBlocksCtas(1u << 20, 132, 0), 132u);      // 0 per SM counts as 1
}

}  // namespace
}  // namespace kvtier::kernels
