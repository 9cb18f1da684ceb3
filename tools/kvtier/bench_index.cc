// `kvtier bench index`: match + pin + unpin of resident blocks, the per-step index work of
// an engine, on 1 and 2 threads. Baselines in the same run: the same operations on one
// std::unordered_map behind one mutex (the naive index), and the machine's own scaling on
// independent arithmetic (what a second thread can give at all).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "commands.h"
#include "kvtier/tier_manager.h"
#include "registry.h"

namespace kvtier::cli {
namespace {

struct BenchIndexOptions {
  bool quick = false;
  bool json = false;
  uint32_t blocks = 0;   // resident blocks; 0 = 1 Mi, or 64 Ki with --quick
  uint32_t chain = 32;   // blocks per match (one request's prefix)
  double seconds = 0;    // per run; 0 = 2, or 0.3 with --quick
  uint32_t repeats = 0;  // runs per configuration, median reported; 0 = 5, or 1 with --quick
  std::vector<uint32_t> threads = {1, 2};
};

// The naive index: one mutex, one std::unordered_map of pin counts.
class NaiveIndex {
 public:
  void Insert(const BlockKey& k) { pins_.emplace(k, 0); }
  // Pins the longest resident prefix of `keys`; returns how many.
  size_t MatchAndPin(std::span<const BlockKey> keys) {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const BlockKey& k : keys) {
      auto it = pins_.find(k);
      if (it == pins_.end()) break;
      ++it->second;
      ++n;
    }
    return n;
  }
  void Unpin(std::span<const BlockKey> keys) {
    std::lock_guard lock(mu_);
    for (const BlockKey& k : keys) --pins_.find(k)->second;
  }

 private:
  std::mutex mu_;
  std::unordered_map<BlockKey, uint32_t> pins_;
};

// Runs `op(rng)` on `threads` threads for `seconds`; returns operations per second, where
// `op` returns how many block operations it did.
template <class Op>
double Measure(uint32_t threads, double seconds, Op&& op) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> total{0};
  std::barrier start(static_cast<ptrdiff_t>(threads) + 1);
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      uint64_t n = 0;
      start.arrive_and_wait();
      while (!stop.load(std::memory_order_relaxed)) n += op(rng);
      total.fetch_add(n);
    });
  }
  start.arrive_and_wait();
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(total.load()) / dt;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunBenchIndex(BenchIndexOptions o) {
  const uint32_t blocks = o.blocks ? o.blocks : (o.quick ? (64u << 10) : (1u << 20));
  const double seconds = o.seconds > 0 ? o.seconds : (o.quick ? 0.3 : 2.0);
  const uint32_t repeats = o.repeats ? o.repeats : (o.quick ? 1 : 5);
  if (o.chain == 0 || o.chain > blocks) {
    fmt::print(stderr, "kvtier bench index: --chain {} must be in [1, {}]\n", o.chain, blocks);
    return 2;
  }
  // Small blocks: this measures the index, not memory. DRAM only, sized below the high
  // watermark so that nothing is evicted while measuring.
  KvGeometry g{.layers = 1, .kv_heads = 1, .head_dim = 16, .block_tokens = 16, .dtype = DType::kF16};
  TierConfig config;
  config.geometry = g;
  config.hbm = HbmBackend::kNone;
  config.allow_unpinned_dram = true;
  const uint64_t slot = 4096;  // DRAM slots are 4 KiB aligned
  config.dram_bytes = (uint64_t(blocks) * 10 / 8 + 1024) * slot;
  auto tiers = BuildTiers(config);
  if (!tiers.ok()) {
    fmt::print(stderr, "kvtier bench index: {}\n", tiers.status().ToString());
    return 1;
  }
  TierManagerOptions tmo;
  tmo.geometry = g;
  auto tm = TierManager::Create(tmo, std::move(tiers).value());
  if (!tm.ok()) {
    fmt::print(stderr, "kvtier bench index: {}\n", tm.status().ToString());
    return 1;
  }
  std::vector<BlockKey> keys(blocks);
  std::mt19937_64 rng(7);
  for (auto& k : keys) {
    for (auto& b : k.chain.bytes) b = static_cast<uint8_t>(rng());
  }
  NaiveIndex naive;
  for (size_t i = 0; i < keys.size(); i += 4096) {
    std::span<const BlockKey> part = std::span(keys).subspan(i, std::min<size_t>(4096, keys.size() - i));
    auto pins = (*tm)->Allocate(part, TierKind::kDram);
    if (!pins.ok()) {
      fmt::print(stderr, "kvtier bench index: populating: {}\n", pins.status().ToString());
      return 1;
    }
    if (Status s = (*tm)->Commit(*pins, Fence()); !s.ok()) {
      fmt::print(stderr, "kvtier bench index: {}\n", s.ToString());
      return 1;
    }
    for (const BlockKey& k : part) naive.Insert(k);
  }
  std::uniform_int_distribution<size_t> start_of(0, blocks - o.chain);
  auto kvtier_op = [&](std::mt19937_64& r) -> uint64_t {
    std::span<const BlockKey> chain = std::span(keys).subspan(start_of(r), o.chain);
    PinSet pins = (*tm)->MatchKeys(chain);  // match + pin
    const uint64_t n = pins.size();
    (void)(*tm)->Release(pins);            // unpin
    return n;
  };
  // What the machine itself gives a second thread: independent arithmetic, no shared data.
  // On a VM whose two vCPUs share one physical core this stays near 1x, and no index can
  // scale past it.
  auto compute_op = [](std::mt19937_64& r) -> uint64_t {
    uint64_t x = r();
    for (int i = 0; i < 64; ++i) x = x * 0x9E3779B97F4A7C15ull + (x >> 29);
    return (x & 1) + 1;  // ~1 op, never optimised away
  };
  auto naive_op = [&](std::mt19937_64& r) -> uint64_t {
    std::span<const BlockKey> chain = std::span(keys).subspan(start_of(r), o.chain);
    const size_t n = naive.MatchAndPin(chain);
    naive.Unpin(chain.first(n));
    return n;
  };

  if (!o.json) {
    fmt::print("kvtier bench index: match+pin+unpin of {}-block chains over {} resident blocks, {} x {:.1f} s runs\n",
               o.chain, blocks, repeats, seconds);
    fmt::print("{:>8} {:>16} {:>16} {:>10} {:>15} {:>17}\n", "threads", "kvtier ops/s", "naive ops/s", "ratio",
               "kvtier scaling", "machine scaling");
  }
  double one_thread = 0, compute_one = 0;
  for (uint32_t t : o.threads) {
    std::vector<double> a, b, c;
    for (uint32_t r = 0; r < repeats; ++r) {
      a.push_back(Measure(t, seconds, kvtier_op));
      b.push_back(Measure(t, seconds, naive_op));
      c.push_back(Measure(t, std::min(seconds, 0.5), compute_op));
    }
    const double k = Median(a), n = Median(b), m = Median(c);
    if (t == 1) one_thread = k, compute_one = m;
    const double scaling = one_thread > 0 ? k / one_thread : 0;
    const double machine = compute_one > 0 ? m / compute_one : 0;
    if (o.json) {
      for (auto [impl, v] : {std::pair{"kvtier", k}, std::pair{"naive", n}, std::pair{"compute", m}}) {
        nlohmann::json j{{"bench", "index"}, {"impl", impl}, {"threads", t}, {"ops_per_s", v},
                         {"resident_blocks", blocks}, {"chain", o.chain}, {"runs", repeats}, {"seconds", seconds}};
        fmt::print("{}\n", j.dump());
      }
    } else {
      fmt::print("{:>8} {:>16.3e} {:>16.3e} {:>9.2f}x {:>14.2f}x {:>16.2f}x\n", t, k, n, k / n, scaling, machine);
    }
  }
  return 0;
}

}  // namespace

void AddBenchIndexCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<BenchIndexOptions>();
  CLI::App* cmd = bench.add_subcommand("index", "match+pin+unpin of resident blocks on 1 and 2 threads");
  cmd->add_flag("--quick", o->quick, "a short run (used by the test suite)");
  cmd->add_flag("--json", o->json, "one JSON line per measurement");
  cmd->add_option("--blocks", o->blocks, "resident blocks (default 1048576, --quick 65536)");
  cmd->add_option("--chain", o->chain, "blocks per match (default 32)");
  cmd->add_option("--seconds", o->seconds, "seconds per run (default 2)");
  cmd->add_option("--repeats", o->repeats, "runs per configuration; the median is reported (default 5)");
  cmd->add_option("--threads", o->threads, "thread counts to measure (default 1 2)");
  cmd->callback([o, exit_code] { *exit_code = RunBenchIndex(*o); });
}

}  // namespace kvtier::cli
