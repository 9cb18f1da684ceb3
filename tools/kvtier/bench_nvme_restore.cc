// `kvtier bench nvme`'s pipelined restore NVMe -> DRAM -> HBM (emulated) through
// TierManager::Onboard, against each hop measured alone (bench_nvme.h).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "bench_nvme.h"
#include "kvtier/tier_manager.h"
#include "registry.h"

namespace kvtier::cli::bench_nvme {
namespace {
using Clock = std::chrono::steady_clock;

Result<KvGeometry> GeometryFor(uint64_t block) {
  // 128-wide bf16 heads: a block is 512 B per token.
  if (block % 512 != 0 || block / 512 > KvGeometry::kMaxBlockTokens) {
    return Status::InvalidArgument(fmt::format("restore: no KV geometry with {} B blocks (a multiple of 512 B, at most 2 MiB)", block));
  }
  KvGeometry g{.layers = 1, .kv_heads = 1, .head_dim = 128, .block_tokens = static_cast<uint32_t>(block / 512),
               .dtype = DType::kBF16};
  return g;
}

Result<std::unique_ptr<TierManager>> OpenManager(const BenchNvmeOptions& o, const KvGeometry& g, const std::string& dir,
                                                 Logger* log) {
  const uint64_t slot = (o.block_size + 4095) / 4096 * 4096;
  const uint64_t room = uint64_t{o.restore_blocks} * 3 / 2 + 64;  // below the demotion watermarks
  TierConfig c;
  c.geometry = g;
  c.hbm = HbmBackend::kEmulated;
  c.hbm_bytes = room * slot;
  c.dram_bytes = room * slot;
  c.allow_unpinned_dram = true;
  c.nvme_dir = dir;
  c.nvme_bytes = room * slot;
  c.nvme_queue_depth = o.qd;
  c.logger = log;
  KVT_ASSIGN_OR_RETURN(TierSet set, BuildTiers(c));
  // The emulated HBM is mapped lazily: touch it now, as real HBM has no first-touch faults.
  if (Tier* hbm = set.tiers[TierIndex(TierKind::kHbm)].get(); hbm != nullptr) {
    for (uint32_t i = 0; i < hbm->caps().slot_count; ++i) {
      const Location loc = hbm->Locate(SlotId{i});
      if (const auto* m = std::get_if<MemoryAddress>(&loc)) {
        std::memset(m->ptr, 0, hbm->caps().slot_bytes);
      }
    }
  }
  TierManagerOptions tmo;
  tmo.geometry = g;
  tmo.logger = log;
  return TierManager::Create(tmo, std::move(set));
}

void FillBlock(std::byte* p, uint64_t bytes, uint64_t id) {
  std::mt19937_64 rng(id * 7919 + 1);
  for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
    const uint64_t w = rng();
    std::memcpy(p + i, &w, 8);
  }
}

Status CheckBlocks(TierManager& tm, const PinSet& pins, TierKind tier, uint64_t bytes) {
  std::vector<std::byte*> ptrs;
  KVT_RETURN_IF_ERROR(tm.BlockTable(pins, tier, &ptrs));
  std::vector<std::byte> want(bytes);
  for (size_t i = 0; i < ptrs.size(); i += 97) {  // a sample: every 97th block
    FillBlock(want.data(), bytes, i);
    if (std::memcmp(want.data(), ptrs[i], bytes) != 0) return Status::DataLoss(fmt::format("restore: block {} differs", i));
  }
  return Status();
}

// Writes `restore_blocks` blocks to NVMe (once); then, each on a freshly reopened runtime
// (the blocks adopted from NVMe only): NVMe -> DRAM alone and DRAM -> HBM alone; and the
// pipelined restore NVMe -> HBM in chunks of `restore_chunk` Onboard calls in flight at once.

}  // namespace

Result<RestoreResult> RunRestore(const BenchNvmeOptions& o, const std::string& dir, Logger* log, bool populate) {
  KVT_ASSIGN_OR_RETURN(KvGeometry g, GeometryFor(o.block_size));
  std::vector<BlockKey> keys;
  for (uint32_t i = 0; i < o.restore_blocks; ++i) {
    BlockKey k;
    const uint64_t a = 0x726573746f726521ull, b = i;
    std::memcpy(k.chain.bytes.data(), &a, 8);
    std::memcpy(k.chain.bytes.data() + 8, &b, 8);
    keys.push_back(k);
  }
  const uint64_t bytes = uint64_t{o.restore_blocks} * o.block_size;
  if (populate) {
    KVT_ASSIGN_OR_RETURN(auto tm, OpenManager(o, g, dir, log));
    for (uint32_t i = 0; i < o.restore_blocks; i += 64) {
      const uint32_t n = std::min<uint32_t>(64, o.restore_blocks - i);
      KVT_ASSIGN_OR_RETURN(PinSet pins, tm->Allocate(std::span(keys).subspan(i, n), TierKind::kDram));
      std::vector<std::byte*> ptrs;
      KVT_RETURN_IF_ERROR(tm->BlockTable(pins, TierKind::kDram, &ptrs));
      for (uint32_t j = 0; j < n; ++j) FillBlock(ptrs[j], o.block_size, i + j);
      KVT_RETURN_IF_ERROR(tm->Commit(pins, Fence()));
      KVT_RETURN_IF_ERROR(tm->Offload(pins, TierKind::kNvme).Wait());
      KVT_RETURN_IF_ERROR(tm->Release(pins));
    }
  }
  RestoreResult r;
  double t1 = 0, t2 = 0, tp = 0;
  {
    KVT_ASSIGN_OR_RETURN(auto tm, OpenManager(o, g, dir, log));
    PinSet pins = tm->MatchKeys(keys);
    if (pins.size() != keys.size()) {
      return Status::DataLoss(fmt::format("restore: {} of {} blocks were adopted from NVMe", pins.size(), keys.size()));
    }
    auto a = Clock::now();
    KVT_RETURN_IF_ERROR(tm->Onboard(pins, TierKind::kDram).Wait());
    auto b = Clock::now();
    KVT_RETURN_IF_ERROR(tm->Onboard(pins, TierKind::kHbm).Wait());
    auto c = Clock::now();
    t1 = std::chrono::duration<double>(b - a).count();
    t2 = std::chrono::duration<double>(c - b).count();
    KVT_RETURN_IF_ERROR(CheckBlocks(*tm, pins, TierKind::kHbm, o.block_size));
    KVT_RETURN_IF_ERROR(tm->Release(pins));
  }
  {
    KVT_ASSIGN_OR_RETURN(auto tm, OpenManager(o, g, dir, log));
    PinSet pins = tm->MatchKeys(keys);
    if (pins.size() != keys.size()) {
      return Status::DataLoss(fmt::format("restore: {} of {} blocks were adopted from NVMe", pins.size(), keys.size()));
    }
    std::vector<PinSet> chunks;
    while (pins.size() > o.restore_chunk) chunks.push_back(pins.Split(0, o.restore_chunk));
    chunks.push_back(std::move(pins));
    std::vector<Fence> fences;
    auto a = Clock::now();
    for (const PinSet& c : chunks) fences.push_back(tm->Onboard(c, TierKind::kHbm));
    KVT_RETURN_IF_ERROR(Fence::All(fences).Wait());
    tp = std::chrono::duration<double>(Clock::now() - a).count();
    PinSet all;
    for (PinSet& c : chunks) all.Append(std::move(c));
    KVT_RETURN_IF_ERROR(CheckBlocks(*tm, all, TierKind::kHbm, o.block_size));
    KVT_RETURN_IF_ERROR(tm->Release(all));
  }
  r.stage1_gbps = double(bytes) / t1 / 1e9;
  r.stage2_gbps = double(bytes) / t2 / 1e9;
  r.pipelined_gbps = double(bytes) / tp / 1e9;
  r.ratio = r.pipelined_gbps / std::min(r.stage1_gbps, r.stage2_gbps);
  return r;
}

}  // namespace kvtier::cli::bench_nvme
