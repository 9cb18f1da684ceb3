// The TierManager tests' fixture and helpers (tier_manager_test.cc: creation, the
// allocate -> write -> commit -> match cycle, onboard/offload; tier_manager_eviction_test.cc:
// release and drop, watermarks and demotion, injected copy failures, matching and
// statistics). Every test writes fresh random bytes (seeded from std::random_device; the seed
// is printed on failure) and reads them back through the addresses the manager hands out.
#pragma once

#include "kvtier/tier_manager.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "memcpy_mover.h"
#include "registry.h"

namespace kvtier::tier_manager_testing {

using namespace std::chrono_literals;

// 2 layers, 2 KV heads, d=16, 4-token blocks, f16: 512 B blocks.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};

// Counts log lines instead of printing them (failed copies log a warning each).
class CountingLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view) override {
    if (level >= LogLevel::kWarning) warnings.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> warnings{0};
};

template <class T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

inline bool WaitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Records the segments of every batch it is given, then hands the batch on.
using SegmentLog = std::vector<std::vector<CopySegment>>;
class RecordingMover final : public Mover {
 public:
  RecordingMover(std::unique_ptr<Mover> inner, std::shared_ptr<SegmentLog> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}
  std::string_view name() const override { return inner_->name(); }
  TierKind source() const override { return inner_->source(); }
  TierKind destination() const override { return inner_->destination(); }
  Fence Submit(MoveBatch batch) override {
    {
      std::lock_guard lock(mu_);
      log_->push_back(batch.segments);
    }
    return inner_->Submit(std::move(batch));
  }
  MoverStats stats() const override { return inner_->stats(); }

 private:
  std::unique_ptr<Mover> inner_;
  std::shared_ptr<SegmentLog> log_;
  std::mutex mu_;
};

// What a hand-built TierSet has: HBM (emulated) and DRAM (host, unpinned allowed) slots,
// and optional fault plans on the movers (DRAM -> HBM is "up", HBM -> DRAM is "down").
struct TierSpec {
  uint32_t hbm_slots = 16;  // 0: no HBM tier
  uint32_t dram_slots = 64;
  std::optional<FaultOptions> up_faults;
  std::optional<FaultOptions> down_faults;
  uint64_t hbm_slot_bytes = kGeo.block_bytes();
  std::shared_ptr<SegmentLog> record_up;  // the DRAM -> HBM batches, when set
};

inline TierSpec Spec(uint32_t hbm_slots, uint32_t dram_slots) {
  TierSpec s;
  s.hbm_slots = hbm_slots;
  s.dram_slots = dram_slots;
  return s;
}
inline TierSpec WithFaults(TierSpec s, std::optional<FaultOptions> up, std::optional<FaultOptions> down) {
  s.up_faults = up;
  s.down_faults = down;
  return s;
}

inline TierSet MakeTiers(const TierSpec& spec, Logger* log) {
  TierSet set;
  HostTierOptions ho;
  ho.slot_bytes = kGeo.block_bytes();
  ho.slot_count = spec.dram_slots;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  ho.logger = log;
  auto dram = Must(HostTier::Create(ho), "HostTier::Create");
  Tier* dram_ptr = dram.get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
  if (spec.hbm_slots == 0) return set;
  auto hbm = Must(EmulatedHbmTier::Create({.slot_bytes = spec.hbm_slot_bytes, .slot_count = spec.hbm_slots}),
                  "EmulatedHbmTier::Create");
  Tier* hbm_ptr = hbm.get();
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
  std::unique_ptr<Mover> up = Must(MemcpyMover::Create(dram_ptr, hbm_ptr, {.threads = 1}), "mover up");
  std::unique_ptr<Mover> down = Must(MemcpyMover::Create(hbm_ptr, dram_ptr, {.threads = 1}), "mover down");
  if (spec.up_faults) up = std::make_unique<FaultyMover>(std::move(up), std::make_shared<FaultPlan>(*spec.up_faults));
  if (spec.down_faults) {
    down = std::make_unique<FaultyMover>(std::move(down), std::make_shared<FaultPlan>(*spec.down_faults));
  }
  if (spec.record_up) up = std::make_unique<RecordingMover>(std::move(up), spec.record_up);
  set.movers.push_back(std::move(up));
  set.movers.push_back(std::move(down));
  return set;
}

class TierManagerTest : public testing::Test {
 protected:
  TierManagerTest() : seed_(std::random_device{}()), rng_(seed_) {}

  void SetUp() override { RecordProperty("seed", std::to_string(seed_)); }

  TierManagerOptions Options() {
    TierManagerOptions o;
    o.geometry = kGeo;
    o.index_shards = 8;
    o.high_watermark = 0.75;
    o.low_watermark = 0.5;
    o.demotion_period = 5ms;
    o.logger = &log_;
    return o;
  }

  std::unique_ptr<TierManager> Make(const TierSpec& spec, TierManagerOptions o) {
    return Must(TierManager::Create(std::move(o), MakeTiers(spec, &log_)), "TierManager::Create");
  }
  std::unique_ptr<TierManager> Make(const TierSpec& spec = {}) { return Make(spec, Options()); }

  ChainHash RandomChain() {
    ChainHash c;
    for (auto& b : c.bytes) b = static_cast<uint8_t>(rng_());
    return c;
  }
  std::vector<ChainHash> RandomChains(size_t n) {
    std::vector<ChainHash> out;
    for (size_t i = 0; i < n; ++i) out.push_back(RandomChain());
    return out;
  }
  // Block-major: (c0,L0), (c0,L1), (c1,L0), ... as MatchPrefix pins them.
  static std::vector<BlockKey> KeysOf(const std::vector<ChainHash>& chains) {
    std::vector<BlockKey> keys;
    for (const ChainHash& c : chains) {
      for (uint32_t l = 0; l < kGeo.layers; ++l) keys.push_back(BlockKey{c, LayerId{l}});
    }
    return keys;
  }
  std::vector<BlockKey> RandomKeys(size_t n) {
    std::vector<BlockKey> keys;
    for (size_t i = 0; i < n; ++i) keys.push_back(BlockKey{RandomChain(), LayerId{0}});
    return keys;
  }

  std::vector<std::byte> RandomBytes() {
    std::vector<std::byte> b(kGeo.block_bytes());
    for (size_t i = 0; i < b.size(); i += 8) {
      const uint64_t v = rng_() | 1;  // never an all-zero word
      std::memcpy(b.data() + i, &v, std::min<size_t>(8, b.size() - i));
    }
    return b;
  }

  static std::byte* PtrOf(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    auto loc = tm.Locate(pins, i, t);
    if (!loc.ok()) return nullptr;
    return std::get<MemoryAddress>(*loc).ptr;
  }

  // Writes fresh bytes for every block of `pins` at its slot in `t`, remembering them.
  void WriteAll(const TierManager& tm, const PinSet& pins, TierKind t = TierKind::kHbm) {
    for (size_t i = 0; i < pins.size(); ++i) {
      std::byte* p = PtrOf(tm, pins, i, t);
      ASSERT_NE(p, nullptr) << "block " << i << " has no slot in " << TierName(t);
      std::vector<std::byte> b = RandomBytes();
      std::memcpy(p, b.data(), b.size());
      data_[pins.key(i)] = std::move(b);
    }
  }

  // Allocates `keys` in `t`, writes fresh bytes and commits them with a signaled fence.
  PinSet CommitNew(TierManager& tm, const std::vector<BlockKey>& keys, TierKind t = TierKind::kHbm) {
    auto r = tm.Allocate(keys, t);
    if (!r.ok()) throw std::runtime_error("Allocate: " + r.status().ToString());
    PinSet pins = std::move(r).value();
    WriteAll(tm, pins, t);
    if (Status s = tm.Commit(pins, Fence()); !s.ok()) throw std::runtime_error("Commit: " + s.ToString());
    return pins;
  }
  void CommitAndRelease(TierManager& tm, const std::vector<BlockKey>& keys, TierKind t = TierKind::kHbm) {
    PinSet pins = CommitNew(tm, keys, t);
    ASSERT_TRUE(tm.Release(pins).ok());
  }

  // The bytes of block `i` of `pins` in tier `t` equal what was written for its key.
  ::testing::AssertionResult HoldsWritten(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    std::byte* p = PtrOf(tm, pins, i, t);
    if (p == nullptr) return ::testing::AssertionFailure() << "block " << i << " not resident in " << TierName(t);
    auto it = data_.find(pins.key(i));
    if (it == data_.end()) return ::testing::AssertionFailure() << "no bytes were written for block " << i;
    if (std::memcmp(p, it->second.data(), it->second.size()) != 0) {
      return ::testing::AssertionFailure() << "block " << i << " (" << pins.key(i).ToString() << ") in "
                                           << TierName(t) << " differs from what was written";
    }
    return ::testing::AssertionSuccess();
  }

  static bool Resident(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    return tm.Locate(pins, i, t).ok();
  }
  // Waits for the manager's own pins (copies on commit, onboard/offload hops) to go, given
  // that the test itself holds `held` pins.
  static bool Settle(const TierManager& tm, uint64_t held = 0) {
    return WaitUntil([&] { return tm.Stats().pins == held; });
  }
  static uint64_t Used(const TierManager& tm, TierKind t) { return tm.Stats().tiers[TierIndex(t)].used_slots; }

  uint32_t seed_;
  std::mt19937_64 rng_;
  CountingLogger log_;
  std::map<BlockKey, std::vector<std::byte>> data_;
};

#define SEED_TRACE() SCOPED_TRACE(::testing::Message() << "seed " << seed_)

}  // namespace kvtier::tier_manager_testing
