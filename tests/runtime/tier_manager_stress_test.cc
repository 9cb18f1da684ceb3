// TierManager under concurrent load, checked against an oracle.
//
// Four threads run random engine-like operations (allocate + write + commit, prefix and key
// matches + onboard + read back, offload, drop, holding pins across other operations, and
// the odd DemoteNow) on tiers small enough that demotion and dropping never stop. Payloads
// are self-verifying: block bytes are a header (sequence, block, layer, version) and a body
// drawn from a PRNG seeded by key.hash64() and the key's version; the oracle holds the
// version each key was last allocated with. Every byte read from any tier of a pinned block
// must equal what was written for that key and version.
//
// At the end, with every pin released, the used slots of each tier must equal the blocks
// the index says are resident there, and after dropping every key they must be 0.
//
// Three runs: write-through (copy to DRAM on commit), write-back (dirty blocks, so the
// demotion thread copies down while users offload the same blocks), and write-through over
// fault-injecting movers and tiers (failed, half-done and late copies, failed reserves).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
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
#include "kvtier/tier_manager.h"
#include "memcpy_mover.h"

namespace kvtier {
namespace {

using namespace std::chrono_literals;

// 2 layers, 1 KV head, d=16, 4-token blocks, f16: 256 B blocks.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 1, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};
constexpr uint32_t kLayers = 2;
constexpr uint32_t kSeqs = 256;
constexpr uint32_t kBlocksPerSeq = 8;
constexpr uint32_t kKeys = kSeqs * kBlocksPerSeq * kLayers;  // 4096 keys; DRAM holds 512, HBM 128
constexpr int kThreads = 4;
constexpr uint64_t kBlockBytes = 256;
static_assert(kGeo.layers == kLayers);

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class CountingLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view) override {
    if (level >= LogLevel::kWarning) warnings.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> warnings{0};
};

// The block universe: sequences of chained blocks; a chain hash carries its (seq, block).
struct Universe {
  uint64_t salt;

  ChainHash Chain(uint32_t seq, uint32_t block) const {
    ChainHash c;
    uint64_t s = salt ^ (uint64_t{seq} << 20 | block);
    const uint64_t a = SplitMix(s), b = SplitMix(s);
    std::memcpy(c.bytes.data(), &a, 8);  // random prefix: spreads keys over the shards
    std::memcpy(c.bytes.data() + 8, &seq, 4);
    std::memcpy(c.bytes.data() + 12, &block, 4);
    std::memcpy(c.bytes.data() + 16, &b, 8);
    std::memcpy(c.bytes.data() + 24, &salt, 8);
    return c;
  }
  std::vector<ChainHash> Chains(uint32_t seq) const {
    std::vector<ChainHash> out;
    for (uint32_t b = 0; b < kBlocksPerSeq; ++b) out.push_back(Chain(seq, b));
    return out;
  }
  BlockKey Key(uint32_t seq, uint32_t block, uint32_t layer) const { return BlockKey{Chain(seq, block), LayerId{layer}}; }
  static uint32_t IndexOf(const BlockKey& k) {
    uint32_t seq, block;
    std::memcpy(&seq, k.chain.bytes.data() + 8, 4);
    std::memcpy(&block, k.chain.bytes.data() + 12, 4);
    return (seq * kBlocksPerSeq + block) * kLayers + k.layer.value();
  }
  std::vector<BlockKey> AllKeys() const {
    std::vector<BlockKey> out;
    for (uint32_t s = 0; s < kSeqs; ++s) {
      for (uint32_t b = 0; b < kBlocksPerSeq; ++b) {
        for (uint32_t l = 0; l < kLayers; ++l) out.push_back(Key(s, b, l));
      }
    }
    return out;
  }
};

void FillPayload(std::byte* p, const BlockKey& key, uint32_t version) {
  uint32_t header[4];
  std::memcpy(&header[0], key.chain.bytes.data() + 8, 8);  // seq, block
  header[2] = key.layer.value();
  header[3] = version;
  std::memcpy(p, header, sizeof(header));
  uint64_t s = key.hash64() ^ (uint64_t{version} * 0xD1B54A32D192ED03ull);
  for (uint64_t off = sizeof(header); off < kBlockBytes; off += 8) {
    const uint64_t v = SplitMix(s);
    std::memcpy(p + off, &v, 8);
  }
}

bool PayloadMatches(const std::byte* p, const BlockKey& key, uint32_t version) {
  std::byte expect[kBlockBytes];
  FillPayload(expect, key, version);
  return std::memcmp(p, expect, kBlockBytes) == 0;
}

struct StressConfig {
  uint32_t hbm_slots = 128;
  uint32_t dram_slots = 512;
  int ops_per_thread = 25'000;
  bool offload_on_commit = true;
  std::optional<FaultOptions> faults;  // on both movers and both tiers
};

TierSet MakeTiers(const StressConfig& cfg, Logger* log) {
  TierSet set;
  HostTierOptions ho;
  ho.slot_bytes = kBlockBytes;
  ho.slot_count = cfg.dram_slots;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  ho.logger = log;
  auto dram_r = HostTier::Create(ho);
  if (!dram_r.ok()) throw std::runtime_error(dram_r.status().ToString());
  auto hbm_r = EmulatedHbmTier::Create({.slot_bytes = kBlockBytes, .slot_count = cfg.hbm_slots});
  if (!hbm_r.ok()) throw std::runtime_error(hbm_r.status().ToString());
  std::unique_ptr<Tier> dram = std::move(dram_r).value();
  std::unique_ptr<Tier> hbm = std::move(hbm_r).value();
  auto up_r = MemcpyMover::Create(dram.get(), hbm.get(), {.threads = 1});
  auto down_r = MemcpyMover::Create(hbm.get(), dram.get(), {.threads = 1});
  if (!up_r.ok() || !down_r.ok()) throw std::runtime_error("MemcpyMover::Create");
  std::unique_ptr<Mover> up = std::move(up_r).value();
  std::unique_ptr<Mover> down = std::move(down_r).value();
  if (cfg.faults) {
    FaultOptions f = *cfg.faults;
    auto plan = [&f]() {
      auto p = std::make_shared<FaultPlan>(f);
      ++f.seed;
      return p;
    };
    up = std::make_unique<FaultyMover>(std::move(up), plan());
    down = std::make_unique<FaultyMover>(std::move(down), plan());
    hbm = std::make_unique<FaultyTier>(std::move(hbm), plan());
    dram = std::make_unique<FaultyTier>(std::move(dram), plan());
  }
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
  set.movers.push_back(std::move(up));
  set.movers.push_back(std::move(down));
  return set;
}

// Shared by the worker threads: the oracle and what went wrong.
struct Shared {
  TierManager* tm;
  Universe universe;
  std::vector<std::atomic<uint32_t>> versions = std::vector<std::atomic<uint32_t>>(kKeys);
  std::atomic<uint32_t> next_version{1};

  std::atomic<uint64_t> verified{0}, mismatches{0}, errors{0};
  std::atomic<uint64_t> writes{0}, commits{0}, aborts{0}, failed_commits{0}, alloc_refused{0};
  std::atomic<uint64_t> reads{0}, onboards_ok{0}, onboards_failed{0}, offloads_ok{0}, drops_ok{0};
  std::atomic<uint64_t> held_checks{0}, demote_now{0};
  std::array<std::atomic<uint64_t>, 16> alloc_codes{}, onboard_codes{};
  std::mutex mu;
  std::vector<std::string> first_errors;

  void Error(std::string what) {
    errors.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(mu);
    if (first_errors.size() < 20) first_errors.push_back(std::move(what));
  }
  void Mismatch(std::string what) {
    mismatches.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(mu);
    if (first_errors.size() < 20) first_errors.push_back("MISMATCH " + std::move(what));
  }
};

std::byte* PtrIn(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
  auto loc = tm.Locate(pins, i, t);
  return loc.ok() ? std::get<MemoryAddress>(*loc).ptr : nullptr;
}

// Checks every readable copy of every pinned block against the oracle.
void VerifyPinned(Shared& sh, const PinSet& pins, const char* where) {
  for (size_t i = 0; i < pins.size(); ++i) {
    const BlockKey& key = pins.key(i);
    const uint32_t v = sh.versions[Universe::IndexOf(key)].load(std::memory_order_acquire);
    bool any = false;
    for (TierKind t : {TierKind::kHbm, TierKind::kDram}) {
      const std::byte* p = PtrIn(*sh.tm, pins, i, t);
      if (p == nullptr) continue;
      any = true;
      sh.verified.fetch_add(1, std::memory_order_relaxed);
      if (!PayloadMatches(p, key, v)) {
        sh.Mismatch(fmt::format("{}: block {} v{} in {}", where, key.ToString(), v, TierName(t)));
      }
    }
    if (!any) sh.Error(fmt::format("{}: pinned block {} is readable in no tier", where, key.ToString()));
  }
}

bool OneOf(StatusCode c, std::initializer_list<StatusCode> allowed) {
  for (StatusCode a : allowed) {
    if (a == c) return true;
  }
  return false;
}

// A PinSet kept across other operations, with the HBM addresses it had.
struct Held {
  PinSet pins;
  std::vector<std::byte*> hbm;  // null where the block was not in HBM
  std::vector<uint32_t> versions;
};

class Worker {
 public:
  Worker(Shared& sh, uint64_t seed, bool faults) : sh_(sh), tm_(*sh.tm), rng_(seed), faults_(faults) {}

  void Run(int ops, int tid) {
    for (int op = 0; op < ops; ++op) {
      const uint32_t r = Pick(1000);
      if (r < 300) {
        Write();
      } else if (r < 580) {
        ReadPrefix();
      } else if (r < 680) {
        ReadKeys();
      } else if (r < 760) {
        OffloadPrefix();
      } else if (r < 860) {
        DropSome();
      } else {
        CheckHeld(held_.size() >= 2 || Pick(2) == 0);
      }
      if (op % 2000 == 500 * tid) {
        tm_.DemoteNow();
        sh_.demote_now.fetch_add(1, std::memory_order_relaxed);
      }
    }
    while (!held_.empty()) CheckHeld(true);
  }

 private:
  uint32_t Pick(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }

  void Write() {
    const uint32_t seq = Pick(kSeqs);
    const auto chains = sh_.universe.Chains(seq);
    PrefixMatch m = tm_.MatchPrefix(chains);  // kept pinned while the continuation is written
    VerifyPinned(sh_, m.pins, "write/prefix");
    const uint32_t first = m.blocks;
    if (first >= kBlocksPerSeq) return;
    const uint32_t n = std::min<uint32_t>(1 + Pick(3), kBlocksPerSeq - first);
    std::vector<BlockKey> keys;
    for (uint32_t b = first; b < first + n; ++b) {
      for (uint32_t l = 0; l < kLayers; ++l) keys.push_back(sh_.universe.Key(seq, b, l));
    }
    const TierKind where = Pick(8) == 0 ? TierKind::kDram : TierKind::kHbm;
    auto r = tm_.Allocate(keys, where);
    for (int retry = 0; retry < 2 && !r.ok() && r.status().code() == StatusCode::kExhausted; ++retry) {
      // As an engine would: the demotion thread was kicked; give it a moment.
      std::this_thread::sleep_for(std::chrono::microseconds(20 + Pick(50)));
      r = tm_.Allocate(keys, where);
    }
    if (!r.ok()) {
      sh_.alloc_refused.fetch_add(1, std::memory_order_relaxed);
      sh_.alloc_codes[static_cast<size_t>(r.status().code())].fetch_add(1, std::memory_order_relaxed);
      if (!OneOf(r.status().code(), {StatusCode::kAlreadyExists, StatusCode::kExhausted})) {
        sh_.Error("Allocate: " + r.status().ToString());
      }
      return;
    }
    PinSet pins = std::move(r).value();
    sh_.writes.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::byte*> ptrs(pins.size());
    for (size_t i = 0; i < pins.size(); ++i) {
      ptrs[i] = PtrIn(tm_, pins, i, where);
      if (ptrs[i] == nullptr) {
        sh_.Error("Locate of a block being written failed");
        return;
      }
    }
    auto poison = [&] {
      for (std::byte* p : ptrs) {
        for (uint64_t off = 0; off < kBlockBytes; off += 8) {
          const uint64_t v = rng_();
          std::memcpy(p + off, &v, 8);
        }
      }
    };
    auto write = [&] {
      for (size_t i = 0; i < pins.size(); ++i) {
        const uint32_t v = sh_.next_version.fetch_add(1, std::memory_order_relaxed);
        sh_.versions[Universe::IndexOf(pins.key(i))].store(v, std::memory_order_release);
        FillPayload(ptrs[i], pins.key(i), v);
      }
    };
    const uint32_t mode = Pick(20);
    if (mode == 0) {  // abort: the bytes must never be served
      poison();
      if (Status s = tm_.Release(pins); !s.ok()) sh_.Error("Release (abort): " + s.ToString());
      sh_.aborts.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (mode == 1) {  // the engine's write failed
      poison();
      if (Status s = tm_.Commit(pins, Fence::Failed(Status::IoError("injected kernel failure"))); !s.ok()) {
        sh_.Error("Commit (failed fence): " + s.ToString());
      }
      sh_.failed_commits.fetch_add(1, std::memory_order_relaxed);
      return;  // the PinSet's destructor releases
    }
    if (mode < 6) {  // commit first, with the engine's fence; write; signal
      auto [written, signal] = Fence::Make();
      if (Status s = tm_.Commit(pins, written); !s.ok()) sh_.Error("Commit (pending): " + s.ToString());
      write();
      signal.Signal(Status());
    } else {
      write();
      if (Status s = tm_.Commit(pins, Fence()); !s.ok()) sh_.Error("Commit: " + s.ToString());
    }
    sh_.commits.fetch_add(1, std::memory_order_relaxed);
    VerifyPinned(sh_, pins, "write/committed");
    if (Pick(2) == 0) {
      if (Status s = tm_.Release(pins); !s.ok()) sh_.Error("Release: " + s.ToString());
    }
  }

  void OnboardAndVerify(const PinSet& pins, const char* what) {
    if (pins.empty()) return;
    VerifyPinned(sh_, pins, what);
    const Status s = tm_.Onboard(pins).WaitFor(20s);
    if (s.ok()) {
      sh_.onboards_ok.fetch_add(1, std::memory_order_relaxed);
      std::vector<std::byte*> table;
      if (Status t = tm_.BlockTable(pins, TierKind::kHbm, &table); !t.ok()) {
        sh_.Error(fmt::format("{}: Onboard signaled OK but: {}", what, t.ToString()));
      }
    } else {
      sh_.onboards_failed.fetch_add(1, std::memory_order_relaxed);
      sh_.onboard_codes[static_cast<size_t>(s.code())].fetch_add(1, std::memory_order_relaxed);
      std::initializer_list<StatusCode> ok = {StatusCode::kExhausted, StatusCode::kUnavailable};
      std::initializer_list<StatusCode> ok_faults = {StatusCode::kExhausted, StatusCode::kUnavailable,
                                                     StatusCode::kIoError};
      if (!OneOf(s.code(), faults_ ? ok_faults : ok)) sh_.Error(fmt::format("{}: Onboard: {}", what, s.ToString()));
    }
    VerifyPinned(sh_, pins, what);
  }

  void MaybeHold(PinSet pins) {
    if (pins.empty() || Pick(5) != 0) return;
    Held h;
    for (size_t i = 0; i < pins.size(); ++i) {
      h.hbm.push_back(PtrIn(tm_, pins, i, TierKind::kHbm));
      h.versions.push_back(sh_.versions[Universe::IndexOf(pins.key(i))].load(std::memory_order_acquire));
    }
    h.pins = std::move(pins);
    held_.push_back(std::move(h));
  }

  // A held block keeps its HBM slot, its version and its bytes until released.
  void CheckHeld(bool release) {
    if (held_.empty()) return;
    Held& h = held_.front();
    sh_.held_checks.fetch_add(1, std::memory_order_relaxed);
    for (size_t i = 0; i < h.pins.size(); ++i) {
      const BlockKey& key = h.pins.key(i);
      const uint32_t v = sh_.versions[Universe::IndexOf(key)].load(std::memory_order_acquire);
      if (v != h.versions[i]) sh_.Error(fmt::format("held block {} was rewritten while pinned", key.ToString()));
      if (h.hbm[i] == nullptr) continue;
      std::byte* now = PtrIn(tm_, h.pins, i, TierKind::kHbm);
      if (now != h.hbm[i]) {
        sh_.Error(fmt::format("held block {} left its HBM slot while pinned", key.ToString()));
      } else if (!PayloadMatches(now, key, h.versions[i])) {
        sh_.Mismatch(fmt::format("held block {} changed in HBM while pinned", key.ToString()));
      }
    }
    VerifyPinned(sh_, h.pins, "held");
    if (release) {
      if (Status s = tm_.Release(h.pins); !s.ok()) sh_.Error("Release (held): " + s.ToString());
      held_.pop_front();
    }
  }

  void ReadPrefix() {
    sh_.reads.fetch_add(1, std::memory_order_relaxed);
    const auto chains = sh_.universe.Chains(Pick(kSeqs));
    PrefixMatch m = tm_.MatchPrefix(chains);
    if (m.pins.size() != size_t{m.blocks} * kLayers) sh_.Error("MatchPrefix pinned a partial block");
    const auto& a = m.blocks_at_or_above;
    if (!(a[0] <= a[1] && a[1] <= a[2] && a[2] == m.blocks)) {
      sh_.Error(fmt::format("blocks_at_or_above {} {} {} for {} blocks", a[0], a[1], a[2], m.blocks));
    }
    OnboardAndVerify(m.pins, "prefix");
    MaybeHold(std::move(m.pins));
  }

  void ReadKeys() {
    sh_.reads.fetch_add(1, std::memory_order_relaxed);
    const uint32_t seq = Pick(kSeqs);
    std::vector<BlockKey> keys;
    const uint32_t n = 1 + Pick(6);
    for (uint32_t i = 0; i < n; ++i) keys.push_back(sh_.universe.Key(seq, Pick(kBlocksPerSeq), Pick(kLayers)));
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    PinSet pins = tm_.MatchKeys(keys);
    if (pins.size() > keys.size()) sh_.Error("MatchKeys pinned more than asked");
    for (size_t i = 0; i < pins.size(); ++i) {
      if (pins.key(i) != keys[i]) sh_.Error("MatchKeys is not a prefix of the keys");
    }
    OnboardAndVerify(pins, "keys");
    MaybeHold(std::move(pins));
  }

  void OffloadPrefix() {
    PrefixMatch m = tm_.MatchPrefix(sh_.universe.Chains(Pick(kSeqs)));
    if (m.pins.empty()) return;
    const Status s = tm_.Offload(m.pins).WaitFor(20s);
    if (s.ok()) {
      sh_.offloads_ok.fetch_add(1, std::memory_order_relaxed);
      std::vector<std::byte*> table;
      if (Status t = tm_.BlockTable(m.pins, TierKind::kDram, &table); !t.ok()) {
        sh_.Error("Offload signaled OK but: " + t.ToString());
      }
    } else {
      std::initializer_list<StatusCode> ok = {StatusCode::kExhausted, StatusCode::kUnavailable};
      std::initializer_list<StatusCode> ok_faults = {StatusCode::kExhausted, StatusCode::kUnavailable,
                                                     StatusCode::kIoError};
      if (!OneOf(s.code(), faults_ ? ok_faults : ok)) sh_.Error("Offload: " + s.ToString());
    }
    VerifyPinned(sh_, m.pins, "offload");
  }

  void DropSome() {
    const uint32_t seq = Pick(kSeqs);
    const uint32_t from = Pick(kBlocksPerSeq);
    std::vector<BlockKey> keys;
    for (uint32_t b = from; b < kBlocksPerSeq; ++b) {
      for (uint32_t l = 0; l < kLayers; ++l) keys.push_back(sh_.universe.Key(seq, b, l));
    }
    const Status s = tm_.Drop(keys);
    if (s.ok()) sh_.drops_ok.fetch_add(1, std::memory_order_relaxed);
    if (!OneOf(s.code(), {StatusCode::kOk, StatusCode::kNotFound, StatusCode::kFailedPrecondition})) {
      sh_.Error("Drop: " + s.ToString());
    }
  }

  Shared& sh_;
  TierManager& tm_;
  std::mt19937_64 rng_;
  bool faults_;
  std::deque<Held> held_;
};

bool WaitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

void RunStress(const StressConfig& cfg) {
  const uint64_t seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  ASSERT_EQ(kGeo.block_bytes(), kBlockBytes);
  CountingLogger log;
  TierManagerOptions o;
  o.geometry = kGeo;
  o.index_shards = 16;
  o.high_watermark = 0.85;
  o.low_watermark = 0.6;
  o.demotion_period = 2ms;
  o.logger = &log;
  o.offload_on_commit = cfg.offload_on_commit;
  auto tm_r = TierManager::Create(o, MakeTiers(cfg, &log));
  ASSERT_TRUE(tm_r.ok()) << tm_r.status().ToString();
  std::unique_ptr<TierManager> tm = std::move(tm_r).value();

  Shared sh;
  sh.tm = tm.get();
  sh.universe.salt = seed;
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Worker w(sh, seed * 31 + static_cast<uint64_t>(t), cfg.faults.has_value());
        w.Run(cfg.ops_per_thread, t);
      });
    }
    for (auto& t : threads) t.join();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Every pin of the workers is gone; the manager's own (copies on commit) go soon.
  EXPECT_TRUE(WaitUntil([&] { return tm->Stats().pins == 0; }, 10s)) << tm->Stats().ToText();

  // Used slots are explained by the index: pin everything that matches, count per tier.
  const std::vector<BlockKey> all_keys = sh.universe.AllKeys();
  uint64_t in_hbm = 0, in_dram = 0, matched = 0;
  RuntimeStats st;
  for (int attempt = 0; attempt < 200; ++attempt) {
    tm->DemoteNow();
    PinSet all;
    for (const BlockKey& k : all_keys) all.Append(tm->MatchKeys(std::span(&k, 1)));
    in_hbm = in_dram = 0;
    matched = all.size();
    for (size_t i = 0; i < all.size(); ++i) {
      in_hbm += tm->Locate(all, i, TierKind::kHbm).ok() ? 1 : 0;
      in_dram += tm->Locate(all, i, TierKind::kDram).ok() ? 1 : 0;
    }
    VerifyPinned(sh, all, "final");
    st = tm->Stats();
    if (st.tiers[0].used_slots == in_hbm && st.tiers[1].used_slots == in_dram && st.indexed_blocks == matched) break;
    all = PinSet();
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(st.tiers[0].used_slots, in_hbm) << "HBM slots not explained by the index\n" << st.ToText();
  EXPECT_EQ(st.tiers[1].used_slots, in_dram) << "DRAM slots not explained by the index\n" << st.ToText();
  EXPECT_EQ(st.indexed_blocks, matched) << "indexed blocks that match nowhere";

  // Drop everything: every slot comes back.
  EXPECT_TRUE(WaitUntil(
      [&] {
        (void)tm->Drop(all_keys);
        return tm->Stats().indexed_blocks == 0;
      },
      10s))
      << tm->Stats().ToText();
  EXPECT_TRUE(WaitUntil(
      [&] {
        const RuntimeStats s = tm->Stats();
        return s.tiers[0].used_slots == 0 && s.tiers[1].used_slots == 0;
      },
      10s))
      << "slots leaked\n"
      << tm->Stats().ToText();
  st = tm->Stats();
  EXPECT_EQ(st.pins, 0u);

  {
    std::lock_guard lock(sh.mu);
    for (const std::string& e : sh.first_errors) ADD_FAILURE() << e;
  }
  EXPECT_EQ(sh.mismatches.load(), 0u);
  EXPECT_EQ(sh.errors.load(), 0u);

  // The run exercised what it is meant to.
  EXPECT_GT(sh.commits.load(), 1000u);
  EXPECT_GT(sh.verified.load(), 10'000u);
  EXPECT_GT(sh.onboards_ok.load(), 100u);
  EXPECT_GT(sh.held_checks.load(), 100u);
  EXPECT_GT(st.tiers[0].evictions, 100u) << "HBM never evicted";
  EXPECT_GT(st.tiers[1].dropped_blocks, 100u) << "DRAM never dropped";
  EXPECT_GT(st.onboard_blocks, 100u);
  if (cfg.faults) {
    EXPECT_GT(st.failed_copies, 0u);
  }

  std::printf(
      "stress: %d ops in %.2f s; writes %llu (commits %llu, aborts %llu, failed commits %llu, refused %llu), "
      "reads %llu, onboards ok %llu / failed %llu, offloads ok %llu, drops ok %llu, held checks %llu, "
      "DemoteNow %llu, blocks verified %llu\n%s",
      kThreads * cfg.ops_per_thread, secs, static_cast<unsigned long long>(sh.writes.load()),
      static_cast<unsigned long long>(sh.commits.load()), static_cast<unsigned long long>(sh.aborts.load()),
      static_cast<unsigned long long>(sh.failed_commits.load()),
      static_cast<unsigned long long>(sh.alloc_refused.load()), static_cast<unsigned long long>(sh.reads.load()),
      static_cast<unsigned long long>(sh.onboards_ok.load()),
      static_cast<unsigned long long>(sh.onboards_failed.load()),
      static_cast<unsigned long long>(sh.offloads_ok.load()), static_cast<unsigned long long>(sh.drops_ok.load()),
      static_cast<unsigned long long>(sh.held_checks.load()), static_cast<unsigned long long>(sh.demote_now.load()),
      static_cast<unsigned long long>(sh.verified.load()), st.ToText().c_str());
  for (size_t c = 0; c < 16; ++c) {
    if (sh.alloc_codes[c] + sh.onboard_codes[c] == 0) continue;
    std::printf("  %s: allocate %llu, onboard %llu\n", std::string(StatusCodeName(static_cast<StatusCode>(c))).c_str(),
                static_cast<unsigned long long>(sh.alloc_codes[c].load()),
                static_cast<unsigned long long>(sh.onboard_codes[c].load()));
  }
}

TEST(TierManagerStressTest, RandomOperationsFromFourThreadsMatchTheOracle) {
  StressConfig cfg;
  cfg.ops_per_thread = 25'000;  // 100,000 operations
  RunStress(cfg);
}

TEST(TierManagerStressTest, WriteBackRandomOperationsMatchTheOracle) {
  StressConfig cfg;
  cfg.ops_per_thread = 50'000;  // 200,000 operations: the demoter races users' offloads
  cfg.offload_on_commit = false;  // dirty blocks: demotion copies them down
  RunStress(cfg);
}

TEST(TierManagerStressTest, RandomOperationsWithFaultyMoversAndTiersMatchTheOracle) {
  StressConfig cfg;
  cfg.ops_per_thread = 25'000;
  FaultOptions f;
  f.seed = std::random_device{}();
  f.reserve_failure = 0.01;
  f.copy_failure = 0.03;
  f.partial_copy = 0.03;
  f.delay = 0.3;
  f.max_delay = 300us;
  cfg.faults = f;
  RunStress(cfg);
}

}  // namespace
}  // namespace kvtier
