// The CUDA block copy kernel against its CPU reference (kernels/reference/copy_blocks.h), on
// fresh random data with poisoned destinations: gather (pinned host -> device, reading host
// memory through UVA) then scatter (device -> pinned host through UVA), for block sizes from
// 16 B to 2 MiB. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
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
    CopyLaunch launch{.ctas = 0, .unroll = unroll_, .uniform_bytes = 0, .streaming = unroll_ == 8};
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
};

// Every case runs for each kernel shape (ragged, uniform) and unroll (4; 8 with streaming
// evict-first accesses).
class CopyBlocksShapeTest : public CopyBlocksGpuTest, public ::testing::WithParamInterface<std::tuple<bool, uint32_t>> {
 protected:
  void SetUp() override {
    CopyBlocksGpuTest::SetUp();
    uniform_ = std::get<0>(GetParam());
    unroll_ = std::get<1>(GetParam());
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
                         ::testing::Combine(::testing::Bool(), ::testing::Values(4u, 8u)),
                         [](const auto& p) {
                           return std::string(std::get<0>(p.param) ? "uniform" : "ragged") + "_unroll" +
                                  std::to_string(std::get<1>(p.param));
                         });

TEST_F(CopyBlocksGpuTest, NoDescriptorsIsANoOp) {
  EXPECT_EQ(LaunchCopyBlocks(nullptr, 0, CopyLaunch{}, stream_), cudaSuccess);
}

TEST_F(CopyBlocksGpuTest, BadUnrollOrUniformSizeIsRejected) {
  DeviceCopyDescriptor* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, sizeof(DeviceCopyDescriptor)));
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas = 1, .unroll = 3, .uniform_bytes = 0}, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas = 1, .unroll = 4, .uniform_bytes = 24}, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchCopyBlocks(d, 1, CopyLaunch{.ctas_per_sm = 9}, stream_), cudaErrorInvalidValue);
  ASSERT_CUDA(cudaFree(d));
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
