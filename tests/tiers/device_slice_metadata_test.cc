// DeviceSliceMetadata (tiers/gpu/device_slice_metadata.h): the compact Quest metadata
// mirrored in a metadata arena of the GPU HBM tier, and selection on the device, against
// the host SliceMetadata + QuestSelector on the same appended keys (fresh random data, the
// device selection buffer poisoned before every launch). Selections must be equal, except
// at a near-tie with the k-th score (the kernel sums in another order than the CPU: the same
// tolerance as tests/kernels/quest_select_gpu_test.cc), with the launch's programmatic
// dependent launch option too (one case; the race it allows is tested behind a kernel that
// writes the queries in tests/kernels/quest_score_gpu_test.cc). Also: the arena's bytes in the
// tier's usage, kExhausted for an arena or a layer that does not fit. And the sparse
// runtime path on the real GPU tier: device selection -> CopySelectionToHost ->
// SparsePrefetcher over the GpuMover, the HBM slices equal to the DRAM ones byte for byte.
// Every case skips without a CUDA device.
#include "device_slice_metadata.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "cuda_host_pinner.h"
#include "emulated_hbm_tier.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#include "host_tier.h"
#include "kvtier/quest_selector.h"
#include "kvtier/slice_cache.h"
#include "kvtier/slice_metadata.h"
#include "kvtier/sparse_prefetcher.h"
#include "kvtier/tier_manager.h"
#include "reference/quest_select.h"

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

namespace kvtier {
namespace {

bool HaveDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define SKIP_WITHOUT_DEVICE() \
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device"

template <typename T>
T Must(Result<T> r, const char* what) {
  EXPECT_TRUE(r.ok()) << what << ": " << r.status().ToString();
  return std::move(r).value();
}

std::unique_ptr<GpuHbmTier> Hbm(uint64_t metadata_bytes) {
  return Must(GpuHbmTier::Create({.device = 0, .slot_bytes = 4096, .slot_count = 4, .metadata_bytes = metadata_bytes}),
              "GpuHbmTier::Create");
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { (void)cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

struct Case {
  uint32_t layers, kv_heads, q_heads, head_dim, block_tokens, budget_tokens, dense_layers;
  GqaCombine combine;
  bool bf16_queries;
  bool pdl = false;  // DeviceSliceMetadataOptions::programmatic_dependent_launch
};

uint16_t Bf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}
float Bf16Round(float f) {  // truncation: the CPU then sees exactly the value the GPU reads
  uint32_t u = uint32_t{Bf16Bits(f)} << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

void CheckSelection(const Case& c, LayerId layer, const SliceMetadata& host, const std::vector<float>& q,
                    const Selection& cpu, const std::vector<uint32_t>& gpu, uint32_t* exact_rows) {
  const uint32_t d = c.head_dim, group = c.q_heads / c.kv_heads, n = cpu.blocks, k = cpu.per_head;
  for (uint32_t h = 0; h < c.kv_heads; ++h) {
    const std::vector<uint32_t> want(cpu.Head(h).begin(), cpu.Head(h).end());
    const std::vector<uint32_t> got(gpu.begin() + size_t{h} * k, gpu.begin() + size_t{h} * k + k);
    ASSERT_TRUE(std::is_sorted(got.begin(), got.end())) << "head " << h;
    if (got == want) {
      ++*exact_rows;
      continue;
    }
    // Only near-ties with the k-th CPU score may differ.
    SliceBoundsView v = Must(host.Bounds(layer, h), "Bounds");
    const kernels::QuestShape shape{.q_heads = group, .kv_heads = 1, .head_dim = d, .blocks = n};
    std::vector<float> scores(n), tol(n);
    kernels::QuestScoresQuantized(shape, static_cast<kernels::GqaCombine>(c.combine),
                                  std::span<const float>(&q[size_t{h} * group * d], size_t{group} * d),
                                  v.compact.subspan(0, size_t{n} * 2 * d), v.scales.subspan(0, n), scores);
    // The fp32 tolerance plus the fixed-point rounding of the queries (the default score
    // kernel computes QuestScoresFixedPoint).
    const double quantum = kernels::QuestFixedPointQuantum(
        shape, static_cast<kernels::GqaCombine>(c.combine), std::span<const float>(&q[size_t{h} * group * d], size_t{group} * d), 0);
    float max_tol = 0;
    for (uint32_t b = 0; b < n; ++b) {
      double mag = 0, bytes = 0;
      for (uint32_t i = 0; i < 2 * d; ++i) bytes += std::abs(int(v.compact[size_t{b} * 2 * d + i]));
      for (uint32_t g = 0; g < group; ++g) {
        for (uint32_t i = 0; i < d; ++i) {
          const int m = std::max(std::abs(int(v.compact[(size_t{b} * 2) * d + i])),
                                 std::abs(int(v.compact[(size_t{b} * 2 + 1) * d + i])));
          mag += std::fabs(q[(size_t{h} * group + g) * d + i]) * v.scales[b] * m;
        }
      }
      tol[b] = static_cast<float>(1e-5 * mag + quantum * bytes * v.scales[b] + 1e-30);
      max_tol = std::max(max_tol, tol[b]);
    }
    const std::set<uint32_t> gs(got.begin(), got.end()), cs(want.begin(), want.end());
    ASSERT_EQ(gs.size(), k) << "head " << h << ": duplicate or poisoned entries";
    float kth = std::numeric_limits<float>::infinity();
    for (uint32_t b : cs) {
      if (b >= 1 && b + 1 < n) kth = std::min(kth, scores[b]);
    }
    for (uint32_t b = 0; b < n; ++b) {
      if (gs.count(b) == cs.count(b)) continue;
      ASSERT_TRUE(b >= 1 && b + 1 < n) << "head " << h << ": forced block " << b << " differs";
      ASSERT_LE(std::fabs(scores[b] - kth), tol[b] + max_tol)
          << "layer " << layer.value() << " head " << h << " block " << b << " is not a near-tie with the k-th score";
    }
  }
}

void RunCase(const Case& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " kv " << c.kv_heads << " q " << c.q_heads << " d "
                                    << c.head_dim << " bt " << c.block_tokens << " budget " << c.budget_tokens
                                    << " combine " << int(c.combine) << " bf16 " << c.bf16_queries);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint32_t d = c.head_dim, max_blocks = 64;
  SliceMetadata host = Must(SliceMetadata::Create({.layers = c.layers, .kv_heads = c.kv_heads, .head_dim = d,
                                                   .block_tokens = c.block_tokens}),
                            "SliceMetadata::Create");
  QuestSelectorOptions so;
  so.budget_tokens = c.budget_tokens;
  so.block_tokens = c.block_tokens;
  so.dense_layers = c.dense_layers;
  so.combine = c.combine;
  QuestSelector selector = Must(QuestSelector::Create(so), "QuestSelector::Create");
  const DeviceSliceMetadataOptions dopt{.layers = c.layers, .kv_heads = c.kv_heads, .head_dim = d,
                                        .block_tokens = c.block_tokens, .max_blocks = max_blocks,
                                        .programmatic_dependent_launch = c.pdl};
  auto tier = Hbm(DeviceSliceMetadata::ArenaBytes(dopt));
  ASSERT_NE(tier, nullptr);
  Stream stream;
  auto dev = Must(DeviceSliceMetadata::Create(dopt, tier.get(), stream.s), "DeviceSliceMetadata::Create");
  ASSERT_NE(dev, nullptr);

  void* dq = nullptr;
  ASSERT_CUDA(cudaMalloc(&dq, size_t{c.q_heads} * d * 4));
  uint32_t exact_rows = 0, rows = 0;
  // Chunks: a prefill that seals many blocks at once, then decode-like steps of 1..3 tokens
  // and a few odd chunks that cross block boundaries.
  std::vector<uint32_t> chunks = {5 * c.block_tokens + 3};
  for (int i = 0; i < 24; ++i) chunks.push_back(1 + static_cast<uint32_t>(rng() % 3));
  chunks.push_back(2 * c.block_tokens + 1);
  for (int i = 0; i < 8; ++i) chunks.push_back(1 + static_cast<uint32_t>(rng() % (c.block_tokens + 5)));
  for (uint32_t tokens : chunks) {
    for (uint32_t l = 0; l < c.layers; ++l) {
      const LayerId layer{l};
      if (host.blocks(layer) + tokens / c.block_tokens + 1 > max_blocks) continue;
      std::vector<float> keys(size_t{tokens} * c.kv_heads * d);
      for (float& k : keys) k = normal(rng) + 0.5f * float((&k - keys.data()) % d % 7) - 1.0f;  // channel offsets
      ASSERT_TRUE(host.Append(layer, keys, tokens).ok());
      Fence f = Must(dev->Update(layer, host), "Update");
      ASSERT_EQ(dev->blocks(layer), host.blocks(layer));

      std::vector<float> q(size_t{c.q_heads} * d);
      for (float& x : q) x = c.bf16_queries ? Bf16Round(normal(rng)) : normal(rng);
      if (c.bf16_queries) {
        std::vector<uint16_t> bits(q.size());
        for (size_t i = 0; i < q.size(); ++i) bits[i] = Bf16Bits(q[i]);
        ASSERT_CUDA(cudaMemcpyAsync(dq, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice, stream.s));
      } else {
        ASSERT_CUDA(cudaMemcpyAsync(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice, stream.s));
      }
      ASSERT_CUDA(cudaStreamSynchronize(stream.s));  // the pageable sources above are locals
      // Poison the selection output, then select on the device.
      const Selection cpu = Must(selector.Select(layer, q, host), "Select");
      const auto type = c.bf16_queries ? kernels::QuestQueryType::kBf16 : kernels::QuestQueryType::kFloat32;
      DeviceSelection probe = Must(dev->SelectOnDevice(layer, dq, type, c.q_heads, so), "probe");  // the output pointer
      ASSERT_CUDA(cudaMemsetAsync(const_cast<uint32_t*>(probe.indices), 0xAA,
                                  size_t{c.kv_heads} * max_blocks * sizeof(uint32_t), stream.s));
      DeviceSelection sel = Must(dev->SelectOnDevice(layer, dq, type, c.q_heads, so), "SelectOnDevice");
      ASSERT_CUDA(cudaStreamSynchronize(stream.s));
      ASSERT_TRUE(f.Wait().ok());
      ASSERT_EQ(sel.blocks, cpu.blocks);
      ASSERT_EQ(sel.per_head, cpu.per_head);
      ASSERT_EQ(sel.dense, cpu.dense);
      std::vector<uint32_t> gpu(size_t{c.kv_heads} * sel.per_head);
      ASSERT_CUDA(cudaMemcpy(gpu.data(), sel.indices, gpu.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost));
      ASSERT_NO_FATAL_FAILURE(CheckSelection(c, layer, host, q, cpu, gpu, &exact_rows));
      rows += c.kv_heads;

      // The mirror equals the host's compact form, partial block included.
      for (uint32_t h = 0; h < c.kv_heads; ++h) {
        SliceBoundsView v = Must(host.Bounds(layer, h), "Bounds");
        std::vector<int8_t> b(size_t{v.blocks} * 2 * d);
        std::vector<float> s(v.blocks);
        ASSERT_CUDA(cudaMemcpy(b.data(), dev->bounds(layer, h), b.size(), cudaMemcpyDeviceToHost));
        ASSERT_CUDA(cudaMemcpy(s.data(), dev->scales(layer, h), s.size() * 4, cudaMemcpyDeviceToHost));
        ASSERT_TRUE(std::equal(b.begin(), b.end(), v.compact.begin())) << "bounds, layer " << l << " head " << h;
        ASSERT_EQ(0, std::memcmp(s.data(), v.scales.data(), s.size() * 4)) << "scales, layer " << l << " head " << h;
      }
    }
  }
  EXPECT_GT(rows, 0u);
  EXPECT_GE(exact_rows, rows * 95 / 100) << "near-ties should be rare on random data";
  ASSERT_CUDA(cudaFree(dq));
}

TEST(DeviceSliceMetadata, SelectionEqualsQuestSelectorOnTheSameKeys) {
  SKIP_WITHOUT_DEVICE();
  const uint64_t seed = std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  const Case cases[] = {
      {.layers = 3, .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16, .budget_tokens = 128,
       .dense_layers = 1, .combine = GqaCombine::kMax, .bf16_queries = false},
      {.layers = 2, .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16, .budget_tokens = 64,
       .dense_layers = 0, .combine = GqaCombine::kSum, .bf16_queries = false},
      {.layers = 2, .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16, .budget_tokens = 96,
       .dense_layers = 1, .combine = GqaCombine::kMax, .bf16_queries = true, .pdl = true},
      {.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 64, .block_tokens = 8, .budget_tokens = 40,
       .dense_layers = 0, .combine = GqaCombine::kMax, .bf16_queries = true},
      {.layers = 1, .kv_heads = 1, .q_heads = 1, .head_dim = 64, .block_tokens = 4, .budget_tokens = 16,
       .dense_layers = 0, .combine = GqaCombine::kSum, .bf16_queries = false},
  };
  uint64_t i = 0;
  for (const Case& c : cases) ASSERT_NO_FATAL_FAILURE(RunCase(c, seed + 7919 * i++));
}

TEST(DeviceSliceMetadata, ArenaBytesAreAccountedInTheTier) {
  SKIP_WITHOUT_DEVICE();
  const DeviceSliceMetadataOptions o{.layers = 4, .kv_heads = 8, .head_dim = 128, .block_tokens = 16, .max_blocks = 512};
  const uint64_t need = DeviceSliceMetadata::ArenaBytes(o);
  EXPECT_GE(need, uint64_t{4} * 8 * 512 * (2 * 128 + 4));  // at least the compact form
  auto tier = Hbm(need + 4096);
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->usage().metadata_capacity_bytes, need + 4096);
  Stream stream;
  {
    auto dev = Must(DeviceSliceMetadata::Create(o, tier.get(), stream.s), "Create");
    ASSERT_NE(dev, nullptr);
    EXPECT_EQ(dev->bytes(), need);
    EXPECT_EQ(tier->usage().metadata_bytes, need);  // ArenaBytes is a multiple of 256
    EXPECT_EQ(tier->usage().free_slots, 4u);        // the slots are untouched
    // A second one does not fit in what is left.
    auto second = DeviceSliceMetadata::Create(o, tier.get(), stream.s);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), StatusCode::kExhausted) << second.status().ToString();
  }
  EXPECT_EQ(tier->usage().metadata_bytes, 0u);  // returned by the destructor
}

TEST(DeviceSliceMetadata, ArenaExhaustionAndBadTiersAreClearErrors) {
  SKIP_WITHOUT_DEVICE();
  const DeviceSliceMetadataOptions o{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .max_blocks = 8};
  Stream stream;
  auto small = Hbm(DeviceSliceMetadata::ArenaBytes(o) - 256);
  auto r = DeviceSliceMetadata::Create(o, small.get(), stream.s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted) << r.status().ToString();
  EXPECT_NE(r.status().message().find("gpu-hbm"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(small->usage().metadata_bytes, 0u);
  auto none = Hbm(0);
  EXPECT_EQ(DeviceSliceMetadata::Create(o, none.get(), stream.s).status().code(), StatusCode::kExhausted);
  auto emulated = Must(EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 1, .metadata_bytes = 1 << 20}), "emu");
  EXPECT_EQ(DeviceSliceMetadata::Create(o, emulated.get(), stream.s).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(emulated->usage().metadata_bytes, 0u);
  auto bad = o;
  bad.head_dim = 96;
  EXPECT_EQ(DeviceSliceMetadata::Create(bad, none.get(), stream.s).status().code(), StatusCode::kInvalidArgument);
}

TEST(DeviceSliceMetadata, UpdateRefusesALayerOverCapacityAndAShrunkenHost) {
  SKIP_WITHOUT_DEVICE();
  const DeviceSliceMetadataOptions o{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 4, .max_blocks = 3};
  auto tier = Hbm(DeviceSliceMetadata::ArenaBytes(o));
  Stream stream;
  auto dev = Must(DeviceSliceMetadata::Create(o, tier.get(), stream.s), "Create");
  SliceMetadata host = Must(SliceMetadata::Create({.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 4}), "host");
  std::vector<float> keys(size_t{10} * 2 * 64, 0.25f);
  ASSERT_TRUE(host.Append(LayerId{0}, keys, 10).ok());  // 3 blocks: fits
  ASSERT_TRUE(Must(dev->Update(LayerId{0}, host), "Update").Wait().ok());
  EXPECT_EQ(dev->blocks(LayerId{0}), 3u);
  std::vector<float> more(size_t{3} * 2 * 64, -0.5f);
  ASSERT_TRUE(host.Append(LayerId{0}, more, 3).ok());  // 13 tokens: 4 blocks
  auto over = dev->Update(LayerId{0}, host);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), StatusCode::kExhausted) << over.status().ToString();
  EXPECT_EQ(dev->blocks(LayerId{0}), 3u);  // unchanged
  SliceMetadata fresh = Must(SliceMetadata::Create({.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 4}), "fresh");
  EXPECT_EQ(dev->Update(LayerId{0}, fresh).status().code(), StatusCode::kFailedPrecondition);
  SliceMetadata other = Must(SliceMetadata::Create({.layers = 2, .kv_heads = 1, .head_dim = 64, .block_tokens = 4}), "other");
  EXPECT_EQ(dev->Update(LayerId{1}, other).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->Update(LayerId{2}, host).status().code(), StatusCode::kInvalidArgument);
  // Selection on an empty layer is empty; wrong shapes are refused.
  QuestSelectorOptions so;
  so.block_tokens = 4;
  so.budget_tokens = 16;
  void* dq = nullptr;
  ASSERT_CUDA(cudaMalloc(&dq, 4 * 64 * 4));
  DeviceSelection empty = Must(dev->SelectOnDevice(LayerId{1}, dq, kernels::QuestQueryType::kFloat32, 2, so), "empty");
  EXPECT_EQ(empty.per_head, 0u);
  EXPECT_EQ(dev->SelectOnDevice(LayerId{0}, dq, kernels::QuestQueryType::kFloat32, 3, so).status().code(),
            StatusCode::kInvalidArgument);
  so.block_tokens = 8;
  so.budget_tokens = 32;
  EXPECT_EQ(dev->SelectOnDevice(LayerId{0}, dq, kernels::QuestQueryType::kFloat32, 2, so).status().code(),
            StatusCode::kInvalidArgument);
  ASSERT_CUDA(cudaStreamSynchronize(stream.s));
  ASSERT_CUDA(cudaFree(dq));
}

// The sparse runtime path on the GPU tier, end to end: a request's blocks of one layer in
// DRAM (TierManager, pinned host pool) holding fresh random bf16 K/V; the host SliceMetadata
// appended from the same keys; DeviceSliceMetadata::Update + SelectOnDevice +
// CopySelectionToHost; SparsePrefetcher::Prefetch over a GpuMover into a GpuHbmTier of
// slice-sized slots (with the metadata arena). The selection equals the CPU QuestSelector's
// (up to near-ties, as above), every HBM slice the page table names holds exactly the DRAM
// slice, and the same selection again is all hits (no bytes moved).
TEST(DeviceSliceMetadata, SelectionOnDeviceDrivesThePrefetcherOnTheGpuTier) {
  SKIP_WITHOUT_DEVICE();
  const uint64_t seed = std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // 2 layers, 4 KV heads, d=128, 16-token bf16 blocks: 8 KiB slices, 32 KiB blocks.
  const KvGeometry geo{.layers = 2, .kv_heads = 4, .head_dim = 128, .block_tokens = 16, .dtype = DType::kBF16};
  const uint32_t kv = geo.kv_heads, d = geo.head_dim, bt = geo.block_tokens, q_heads = 16;
  const uint32_t full_blocks = 40, tail_tokens = 5, tokens = full_blocks * bt + tail_tokens;
  const LayerId layer{1};
  const Case c{.layers = geo.layers, .kv_heads = kv, .q_heads = q_heads, .head_dim = d, .block_tokens = bt,
               .budget_tokens = 128, .dense_layers = 0, .combine = GqaCombine::kMax, .bf16_queries = false};
  const DeviceSliceMetadataOptions dopt{.layers = geo.layers, .kv_heads = kv, .head_dim = d, .block_tokens = bt,
                                        .max_blocks = 64};

  // Declared so that users go before what they borrow.
  Stream stream;
  auto hbm = Must(GpuHbmTier::Create({.device = 0, .slot_bytes = geo.slice_bytes(), .slot_count = 256,
                                      .metadata_bytes = DeviceSliceMetadata::ArenaBytes(dopt)}),
                  "GpuHbmTier::Create");
  ASSERT_NE(hbm, nullptr);
  auto dev = Must(DeviceSliceMetadata::Create(dopt, hbm.get(), stream.s), "DeviceSliceMetadata::Create");
  ASSERT_NE(dev, nullptr);

  HostTierOptions ho;
  ho.slot_bytes = geo.block_bytes();
  ho.slot_count = 64;
  ho.pinner = Must(CudaHostPinner::Create(), "CudaHostPinner::Create");  // device-addressable: the mover reads it
  ho.touch_threads = 1;
  auto dram_owned = Must(HostTier::Create(ho), "HostTier::Create");
  ASSERT_NE(dram_owned, nullptr);
  HostTier* dram = dram_owned.get();
  TierSet set;
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram_owned);
  TierManagerOptions to;
  to.geometry = geo;
  to.index_shards = 4;
  auto tm = Must(TierManager::Create(to, std::move(set)), "TierManager::Create");
  ASSERT_NE(tm, nullptr);
  auto mover = Must(GpuMover::Create(dram, hbm.get(), {}), "GpuMover::Create");
  ASSERT_NE(mover, nullptr);
  SliceCacheOptions co;
  co.geometry = geo;
  auto cache = Must(SliceCache::Create(co, hbm.get()), "SliceCache::Create");
  ASSERT_NE(cache, nullptr);
  auto prefetcher = Must(SparsePrefetcher::Create(cache.get(), mover.get()), "SparsePrefetcher::Create");
  ASSERT_NE(prefetcher, nullptr);

  // The request's full blocks of `layer` in DRAM, committed, with random bf16 K and V (never
  // zero bits); the keys, token-major fp32, the tail's included, for the metadata.
  std::vector<BlockKey> keys;
  for (uint32_t b = 0; b < full_blocks; ++b) {
    ChainHash chain;
    for (auto& x : chain.bytes) x = static_cast<uint8_t>(rng());
    keys.push_back(BlockKey{chain, layer});
  }
  PinSet pins = Must(tm->Allocate(keys, TierKind::kDram), "Allocate");
  ASSERT_EQ(pins.size(), keys.size());
  auto bf16 = [&](uint32_t dim) {
    uint16_t bits = Bf16Bits(normal(rng) + 0.5f * float(dim % 7) - 1.0f);  // channel offsets, as above
    if ((bits & 0x7fffu) == 0) bits = 0x3f80;                               // never a zero
    return bits;
  };
  std::vector<float> layer_keys(size_t{tokens} * kv * d);
  for (uint32_t b = 0; b < full_blocks; ++b) {
    const Location loc = Must(tm->Locate(pins, b, TierKind::kDram), "Locate");
    std::byte* block = std::get<MemoryAddress>(loc).ptr;
    for (uint32_t h = 0; h < kv; ++h) {
      for (uint32_t part = 0; part < 2; ++part) {
        for (uint32_t t = 0; t < bt; ++t) {
          for (uint32_t i = 0; i < d; ++i) {
            const uint16_t bits = bf16(i);
            std::memcpy(block + geo.Offset(h, static_cast<KvPart>(part), t, i), &bits, 2);
            if (part == 0) {
              const uint32_t u = uint32_t{bits} << 16;
              std::memcpy(&layer_keys[(size_t{b * bt + t} * kv + h) * d + i], &u, 4);
            }
          }
        }
      }
    }
  }
  ASSERT_TRUE(tm->Commit(pins, Fence()).ok());
  for (size_t j = size_t{full_blocks} * bt * kv * d; j < layer_keys.size(); ++j) {  // the tail: the engine's
    const uint32_t u = uint32_t{bf16(static_cast<uint32_t>(j % d))} << 16;
    std::memcpy(&layer_keys[j], &u, 4);
  }
  std::vector<SlotId> dram_slots;
  ASSERT_TRUE(DramSlotsOf(*tm, pins, &dram_slots).ok());

  SliceMetadata host = Must(SliceMetadata::Create({.layers = geo.layers, .kv_heads = kv, .head_dim = d,
                                                   .block_tokens = bt}),
                            "SliceMetadata::Create");
  std::vector<float> other(size_t{tokens} * kv * d);  // layer 0: other keys, must not be the ones read
  for (float& x : other) x = normal(rng);
  ASSERT_TRUE(host.Append(LayerId{0}, other, tokens).ok());
  ASSERT_TRUE(host.Append(layer, layer_keys, tokens).ok());
  ASSERT_EQ(host.blocks(layer), full_blocks + 1);
  ASSERT_TRUE(Must(dev->Update(LayerId{0}, host), "Update 0").Wait().ok());
  Fence updated = Must(dev->Update(layer, host), "Update");

  // Select on the device, bring the selection to pinned host memory (poisoned first).
  std::vector<float> q(size_t{q_heads} * d);
  for (float& x : q) x = normal(rng);
  void* dq = nullptr;
  ASSERT_CUDA(cudaMalloc(&dq, q.size() * 4));
  ASSERT_CUDA(cudaMemcpyAsync(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice, stream.s));
  ASSERT_CUDA(cudaStreamSynchronize(stream.s));  // `q` is pageable and ours
  QuestSelectorOptions so;
  so.budget_tokens = c.budget_tokens;
  so.block_tokens = bt;
  so.dense_layers = c.dense_layers;
  so.combine = c.combine;
  QuestSelector selector = Must(QuestSelector::Create(so), "QuestSelector::Create");
  const Selection cpu = Must(selector.Select(layer, q, host), "Select");
  DeviceSelection sel = Must(dev->SelectOnDevice(layer, dq, kernels::QuestQueryType::kFloat32, q_heads, so),
                             "SelectOnDevice");
  ASSERT_EQ(sel.blocks, cpu.blocks);
  ASSERT_EQ(sel.per_head, cpu.per_head);
  ASSERT_FALSE(sel.dense);
  const size_t n = size_t{kv} * sel.per_head;
  PinnedBuffer pinned = Must(PinnedBuffer::Allocate(size_t{kv} * dopt.max_blocks * sizeof(uint32_t)), "pinned");
  std::span<uint32_t> out(reinterpret_cast<uint32_t*>(pinned.data()), size_t{kv} * dopt.max_blocks);
  std::memset(pinned.data(), 0xAA, pinned.size());
  EXPECT_EQ(dev->CopySelectionToHost(sel, out.first(n - 1)).status().code(), StatusCode::kInvalidArgument);
  DeviceSelection foreign = sel;
  foreign.indices = out.data();
  EXPECT_EQ(dev->CopySelectionToHost(foreign, out).status().code(), StatusCode::kInvalidArgument);
  Fence copied = Must(dev->CopySelectionToHost(sel, out), "CopySelectionToHost");
  ASSERT_TRUE(copied.Wait().ok());
  ASSERT_TRUE(updated.Wait().ok());
  const std::vector<uint32_t> gpu(out.begin(), out.begin() + n);
  uint32_t exact_rows = 0;
  ASSERT_NO_FATAL_FAILURE(CheckSelection(c, layer, host, q, cpu, gpu, &exact_rows));

  // The device selection drives the prefetcher.
  const SequenceLayer seq{.request = RequestId{7}, .tokens = tokens, .keys = keys, .dram_slots = dram_slots};
  const std::vector<LayerSelection> batch = {{.sequence = seq, .blocks = gpu, .blocks_per_head = sel.per_head}};
  uint32_t tails = 0;
  for (uint32_t b : gpu) tails += b == full_blocks;
  EXPECT_GE(tails, 1u) << "Quest keeps the partial block";
  const uint32_t want_loads = static_cast<uint32_t>(n) - tails;  // rows hold distinct blocks
  LayerPrefetch p = Must(prefetcher->Prefetch(batch), "Prefetch");
  ASSERT_TRUE(p.ready.Wait().ok());
  ASSERT_EQ(p.tables.size(), 1u);
  EXPECT_EQ(p.misses, want_loads);
  EXPECT_EQ(p.hits, 0u);
  EXPECT_EQ(p.tail, tails);
  const MoverStats loaded = mover->stats();
  EXPECT_EQ(loaded.batches, 1u);
  EXPECT_EQ(loaded.segments, want_loads);
  EXPECT_EQ(loaded.bytes, uint64_t{want_loads} * geo.slice_bytes());

  auto check_bytes = [&](const PageTable& t) {
    ASSERT_EQ(t.kv_heads, kv);
    ASSERT_EQ(t.blocks_per_head, sel.per_head);
    std::vector<std::byte> slice(geo.slice_bytes());
    for (uint32_t h = 0; h < kv; ++h) {
      for (uint32_t i = 0; i < sel.per_head; ++i) {
        const uint32_t b = gpu[size_t{h} * sel.per_head + i];
        const std::byte* at = t.pointers[size_t{h} * sel.per_head + i];
        if (b == full_blocks) {
          EXPECT_EQ(t.at(h, i), kNoSlot);
          EXPECT_EQ(at, nullptr);
          continue;
        }
        ASSERT_NE(at, nullptr) << "head " << h << " block " << b;
        ASSERT_EQ(std::get<MemoryAddress>(hbm->Locate(t.at(h, i))).ptr, at);
        std::fill(slice.begin(), slice.end(), std::byte{0x5A});
        ASSERT_CUDA(cudaMemcpy(slice.data(), at, slice.size(), cudaMemcpyDeviceToHost));
        const std::byte* want = std::get<MemoryAddress>(dram->Locate(dram_slots[b])).ptr + geo.SliceOffset(h);
        ASSERT_EQ(std::memcmp(slice.data(), want, slice.size()), 0) << "head " << h << " block " << b;
      }
    }
  };
  ASSERT_NO_FATAL_FAILURE(check_bytes(p.tables[0]));

  // The same selection in the next step: all hits, no bytes moved.
  prefetcher->EndStep(Fence());
  const uint64_t loaded_bytes = cache->Stats().loaded_bytes;
  EXPECT_EQ(loaded_bytes, uint64_t{want_loads} * geo.slice_bytes());
  LayerPrefetch again = Must(prefetcher->Prefetch(batch), "Prefetch again");
  ASSERT_TRUE(again.ready.Wait().ok());
  EXPECT_EQ(again.misses, 0u);
  EXPECT_EQ(again.hits, want_loads);
  EXPECT_EQ(mover->stats().batches, loaded.batches);
  EXPECT_EQ(mover->stats().bytes, loaded.bytes);
  EXPECT_EQ(cache->Stats().loaded_bytes, loaded_bytes);
  ASSERT_NO_FATAL_FAILURE(check_bytes(again.tables[0]));
  prefetcher->EndStep(Fence());
  ASSERT_CUDA(cudaFree(dq));
}

}  // namespace
}  // namespace kvtier
