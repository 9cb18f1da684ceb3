// `kvtier bench slice-cache | admission`: the runtime side of the sparse path (docs/sparse.md)
// on the emulated HBM tier or the GPU tier (`--tier gpu`), each figure next to a same-run
// baseline. `kvtier bench prefill` is in bench_prefill.cc.
//
//   slice-cache  Quest selections of drifting queries (sparse_synth, papers.md §0.2) replayed
//                through SliceCache + SparsePrefetcher + the mover with the HBM capacity
//                set to multiples of the measured w=12 working set: per-step misses as a
//                fraction of the selected slices (median, p99), 1.25x vs 1.0x.
//   admission    a stream of requests at offered load 2x the HBM capacity: slices loaded per
//                step with working-set admission, without it (FCFS up to a request cap), and
//                at 1x load. A step whose selection does not fit the cache is run as smaller
//                micro-batches (what an engine must do), which is where the cliff shows.

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "host_tier.h"
#include "kvtier/quest_selector.h"
#include "kvtier/slice_cache.h"
#include "kvtier/slice_metadata.h"
#include "kvtier/sparse_prefetcher.h"
#include "kvtier/working_set.h"
#include "slice_tiers.h"
#include "sparse_synth.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(std::ceil(q * double(v.size())) - (q > 0 ? 1 : 0)))];
}
double Mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

// Selections of one synthetic sequence: [step][layer] -> [kv_heads][per_head] indices.
struct Trace {
  uint32_t blocks = 0;
  uint32_t per_head = 0;
  std::vector<std::vector<std::vector<uint32_t>>> steps;
};

struct TraceSpec {
  KvGeometry geometry;
  uint32_t tokens = 0;
  uint32_t budget_tokens = 2048;
  uint32_t steps = 0;
  uint64_t seed = 1;
  float drift = 0.1f;
};

// Keys and drifting queries per layer from sparse_synth (independent seeds per layer),
// metadata from the keys, then Quest selection (no dense layers) for every step and layer.
Result<Trace> MakeTrace(const TraceSpec& s) {
  const KvGeometry& g = s.geometry;
  KVT_ASSIGN_OR_RETURN(SliceMetadata meta, SliceMetadata::Create({.layers = g.layers, .kv_heads = g.kv_heads,
                                                                  .head_dim = g.head_dim,
                                                                  .block_tokens = g.block_tokens}));
  KVT_ASSIGN_OR_RETURN(QuestSelector selector,
                       QuestSelector::Create({.budget_tokens = s.budget_tokens, .block_tokens = g.block_tokens,
                                              .dense_layers = 0}));
  std::vector<std::vector<float>> queries(g.layers);
  uint32_t q_heads = 0;
  for (uint32_t l = 0; l < g.layers; ++l) {
    synth::SparseSynthOptions o;
    o.kv_heads = g.kv_heads;
    o.tokens = s.tokens;
    o.head_dim = g.head_dim;
    o.steps = s.steps;
    o.seed = s.seed * 1000003 + l;
    o.drift = s.drift;
    KVT_ASSIGN_OR_RETURN(synth::SyntheticSequence seq, synth::GenerateSparseSequence(o));
    KVT_RETURN_IF_ERROR(meta.Append(LayerId{l}, seq.keys, s.tokens, KeyLayout::kHeadMajor));
    queries[l] = std::move(seq.queries);
    q_heads = o.q_heads();
  }
  Trace t;
  t.steps.resize(s.steps);
  Selection sel;
  for (uint32_t step = 0; step < s.steps; ++step) {
    for (uint32_t l = 0; l < g.layers; ++l) {
      const size_t n = size_t{q_heads} * g.head_dim;
      KVT_RETURN_IF_ERROR(selector.SelectInto(LayerId{l}, std::span(queries[l]).subspan(step * n, n), meta, &sel));
      t.blocks = sel.blocks;
      t.per_head = sel.per_head;
      t.steps[step].push_back(sel.indices);
    }
  }
  return t;
}

// The tiers of one replay: DRAM blocks shared by every request (contents do not matter for
// hit rates; the tests check bytes), an HBM tier of `capacity` slices (emulated, or the GPU
// tier: slice_tiers.h), the mover, the cache and the prefetcher.
struct Rig {
  std::unique_ptr<HostTier> dram;
  std::unique_ptr<Tier> hbm;
  std::unique_ptr<Mover> mover;
  std::unique_ptr<SliceCache> cache;
  std::unique_ptr<SparsePrefetcher> prefetcher;
  std::vector<SlotId> dram_slots;

  ~Rig() {
    prefetcher.reset();
    cache.reset();
    mover.reset();
  }
};

Result<std::unique_ptr<Rig>> MakeRig(SliceTierKind kind, const KvGeometry& g, uint32_t blocks, uint32_t capacity) {
  auto rig = std::make_unique<Rig>();
  KVT_ASSIGN_OR_RETURN(SliceTiers tiers, MakeSliceTiers(kind, g.block_bytes(), blocks, g.slice_bytes(), capacity));
  rig->dram = std::move(tiers.dram);
  rig->hbm = std::move(tiers.hbm);
  rig->mover = std::move(tiers.mover);
  SliceCacheOptions co;
  co.geometry = g;
  KVT_ASSIGN_OR_RETURN(rig->cache, SliceCache::Create(co, rig->hbm.get()));
  KVT_ASSIGN_OR_RETURN(rig->prefetcher, SparsePrefetcher::Create(rig->cache.get(), rig->mover.get()));
  KVT_ASSIGN_OR_RETURN(rig->dram_slots, rig->dram->Reserve(blocks));
  return rig;
}

// Block keys of request `r`: [layer][block]. Chain hashes are keyed hashes, uniform in every
// byte (the caches hash on their first 8 bytes): random bytes from a generator seeded by `r`,
// the same for every layer of a block. (Until the seventh session they were r and the block
// index written into the first bytes — every block of a request then shared its first 8 bytes
// and the slice cache's hash map degenerated into one chain per request.)
std::vector<std::vector<BlockKey>> RequestKeys(uint64_t r, const KvGeometry& g, uint32_t blocks) {
  std::vector<std::vector<BlockKey>> keys(g.layers);
  std::mt19937_64 rng(0x9E3779B97F4A7C15ull * (r + 1));
  for (uint32_t b = 0; b < blocks; ++b) {
    ChainHash c;
    for (auto& x : c.bytes) x = static_cast<uint8_t>(rng());
    for (uint32_t l = 0; l < g.layers; ++l) keys[l].push_back(BlockKey{c, LayerId{l}});
  }
  return keys;
}

// --- slice-cache ---------------------------------------------------------------------------

struct SliceCacheBenchOptions {
  uint32_t tokens = 32768;
  uint32_t layers = 2;
  uint32_t kv_heads = 4;
  uint32_t budget = 2048;
  uint32_t steps = 64;
  uint32_t window = 12;
  float drift = 0.1f;
  std::vector<double> capacities{1.25, 1.0, 0.8};
  uint64_t seed = 1;
  std::string tier = "emulated";
  bool json = false;
};

int RunSliceCacheBench(const SliceCacheBenchOptions& o) {
  const KvGeometry g{.layers = o.layers, .kv_heads = o.kv_heads, .head_dim = 128, .block_tokens = 16, .dtype = DType::kBF16};
  SliceTierKind kind;
  if (!ParseSliceTierKind(o.tier, &kind)) {
    fmt::print(stderr, "bench slice-cache: --tier {}: give emulated or gpu\n", o.tier);
    return 2;
  }
  const auto t0 = Clock::now();
  const uint32_t total_steps = o.window + o.steps;
  Result<Trace> tr = MakeTrace({g, o.tokens, o.budget, total_steps, o.seed, o.drift});
  if (!tr.ok()) {
    fmt::print(stderr, "bench slice-cache: {}\n", tr.status().ToString());
    return 2;
  }
  const Trace& trace = *tr;
  const double trace_s = Seconds(t0);
  // The working set (w steps, per layer and head) after each step.
  auto est = WorkingSetEstimator::Create({.geometry = g, .window_steps = o.window});
  if (!est.ok()) {
    fmt::print(stderr, "bench slice-cache: {}\n", est.status().ToString());
    return 2;
  }
  std::vector<double> ws;
  for (uint32_t s = 0; s < total_steps; ++s) {
    for (uint32_t l = 0; l < g.layers; ++l) (void)(*est)->Record(RequestId{1}, LayerId{l}, trace.steps[s][l], trace.per_head);
    (*est)->EndStep(RequestId{1});
    if (s >= o.window) ws.push_back(double((*est)->UnionSlices(RequestId{1})));
  }
  const double ws_mean = Mean(ws);
  const double selected_per_step = double(trace.per_head) * g.kv_heads * g.layers;
  if (!o.json) {
    fmt::print("slice-cache: {} tokens, {} layers x {} kv heads, d=128, 16-token bf16 blocks ({} KiB slices), budget {} "
               "({} blocks/head), drift {}, {} steps after {} warm-up; {} HBM tier; trace {:.1f} s\n",
               o.tokens, g.layers, g.kv_heads, g.slice_bytes() >> 10, o.budget, trace.per_head, o.drift, o.steps,
               o.window, SliceTierName(kind), trace_s);
    fmt::print("selected {:.0f} slices/step; working set (w={}) mean {:.0f} slices = {:.2f}x a step's selection, max {:.0f}\n",
               selected_per_step, o.window, ws_mean, ws_mean / selected_per_step, *std::max_element(ws.begin(), ws.end()));
    fmt::print("{:<10} {:>9} {:>12} {:>12} {:>12} {:>10} {:>11} {:>12} {:>8}\n", "capacity", "slices", "miss% med",
               "miss% p99", "miss% mean", "loaded MiB", "copy GB/s", "step us med", "failed");
  }
  for (double cap_x : o.capacities) {
    const auto capacity = static_cast<uint32_t>(std::ceil(cap_x * ws_mean));
    auto rig_r = MakeRig(kind, g, trace.blocks, capacity);
    if (!rig_r.ok()) {
      fmt::print(stderr, "bench slice-cache: {}\n", rig_r.status().ToString());
      return 2;
    }
    Rig& rig = **rig_r;
    const auto keys = RequestKeys(1, g, trace.blocks);
    std::vector<double> miss, step_us;
    uint32_t failed = 0;
    for (uint32_t s = 0; s < total_steps; ++s) {
      uint64_t m = 0;
      bool ok = true;
      const auto step_start = Clock::now();
      for (uint32_t l = 0; l < g.layers; ++l) {
        std::vector<LayerSelection> work = {
            {SequenceLayer{.request = RequestId{1}, .tokens = o.tokens, .keys = keys[l], .dram_slots = rig.dram_slots},
             trace.steps[s][l], trace.per_head}};
        auto p = rig.prefetcher->Prefetch(work);
        if (!p.ok() || !p->ready.Wait().ok()) {
          ok = false;
          break;
        }
        m += p->misses;
      }
      rig.prefetcher->EndStep(Fence());
      if (s < o.window) continue;
      if (!ok) {
        ++failed;
        continue;
      }
      step_us.push_back(1e6 * Seconds(step_start));  // every layer's Prefetch, its loads landed
      miss.push_back(100.0 * double(m) / selected_per_step);
    }
    const SliceCacheStats cs = rig.cache->Stats();
    const MoverStats ms = rig.mover->stats();
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "slice_cache"}, {"capacity_x_ws", cap_x}, {"capacity_slices", capacity},
                                        {"ws_mean_slices", ws_mean}, {"selected_per_step", selected_per_step},
                                        {"tokens", o.tokens}, {"layers", g.layers}, {"kv_heads", g.kv_heads},
                                        {"budget", o.budget}, {"drift", o.drift}, {"steps", o.steps},
                                        {"miss_pct_median", Quantile(miss, 0.5)}, {"miss_pct_p99", Quantile(miss, 0.99)},
                                        {"miss_pct_mean", Mean(miss)}, {"loaded_bytes", cs.loaded_bytes},
                                        {"evictions", cs.evictions}, {"copy_gbps", ms.gbps()}, {"tier", SliceTierName(kind)},
                                        {"step_us_median", Quantile(step_us, 0.5)}, {"failed_steps", failed}}
                                .dump());
    } else {
      fmt::print("{:<10} {:>9} {:>12.2f} {:>12.2f} {:>12.2f} {:>10.1f} {:>11.2f} {:>12.1f} {:>8}\n",
                 fmt::format("{:.2f}x WS", cap_x), capacity, Quantile(miss, 0.5), Quantile(miss, 0.99), Mean(miss),
                 double(cs.loaded_bytes) / (1 << 20), ms.gbps(), Quantile(step_us, 0.5), failed);
    }
  }
  if (!o.json) fmt::print("target: misses <= 5% of the selected slices per step at 1.25x the working set\n");
  return 0;
}

// --- admission -------------------------------------------------------------------------------

struct AdmissionBenchOptions {
  uint32_t tokens = 8192;
  uint32_t layers = 2;
  uint32_t kv_heads = 2;
  uint32_t budget = 512;
  uint32_t sequences = 6;   // distinct synthetic sequences; requests cycle through them
  uint32_t requests_1x = 6; // requests whose working sets fill the HBM (1x load)
  uint32_t steps = 160;
  uint32_t warmup = 40;
  uint32_t window = 12;
  float drift = 0.1f;
  uint64_t seed = 7;
  std::string tier = "emulated";
  bool json = false;
};

struct ScenarioResult {
  double loads_per_step = 0;      // slices loaded per decode step (all micro-batches of it)
  double batch = 0;               // mean requests decoding per step
  double loads_per_request_step = 0;
  double miss_pct = 0;
  double micro_batches = 0;       // per step (1 = the whole batch fit the cache)
  uint64_t completed = 0;
};

struct Request {
  uint64_t id = 0;
  const Trace* trace = nullptr;
  uint32_t length = 0;  // decode steps
  uint32_t done = 0;
  std::vector<std::vector<BlockKey>> keys;
};

// One scenario: requests arrive as a backlog (always more waiting), at most `cap` decode at
// once; with `admit` the waiting ones also pass AdmitBatch against `hbm_bytes`.
Result<ScenarioResult> RunScenario(const AdmissionBenchOptions& o, SliceTierKind kind, const KvGeometry& g,
                                   const std::vector<Trace>& traces, uint32_t capacity, uint32_t cap, bool admit,
                                   double prior_slices) {
  KVT_ASSIGN_OR_RETURN(auto rig, MakeRig(kind, g, traces[0].blocks, capacity));
  KVT_ASSIGN_OR_RETURN(auto est, WorkingSetEstimator::Create({.geometry = g, .window_steps = o.window}));
  const Bytes hbm_bytes{uint64_t{capacity} * g.slice_bytes()};
  uint64_t next_id = 0;
  std::deque<Request> waiting;
  std::vector<Request> running;
  auto arrive = [&] {
    Request r;
    r.id = ++next_id;
    r.trace = &traces[r.id % traces.size()];
    r.length = 24 + static_cast<uint32_t>((r.id * 7) % 17);
    r.keys = RequestKeys(r.id, g, r.trace->blocks);
    waiting.push_back(std::move(r));
  };
  auto estimate = [&](const Request& r) {
    // A request with less than a window of history is charged the typical working set.
    const uint64_t u = est->UnionSlices(RequestId{r.id});
    const double slices = est->StepsInWindow(RequestId{r.id}) >= o.window ? double(u) : std::max(double(u), prior_slices);
    return Bytes{static_cast<uint64_t>(slices) * g.slice_bytes()};
  };
  ScenarioResult res;
  double loads = 0, batch = 0, micro = 0, selected = 0;
  for (uint32_t t = 0; t < o.steps; ++t) {
    while (waiting.size() < 2 * cap) arrive();
    // Admission.
    std::vector<AdmissionCandidate> cands;
    for (size_t i = 0; i < waiting.size() && running.size() + cands.size() < cap; ++i) {
      cands.push_back({RequestId{waiting[i].id}, estimate(waiting[i])});
    }
    size_t take = cands.size();
    if (admit) {
      uint64_t running_bytes = 0;
      for (const Request& r : running) running_bytes += estimate(r).value();
      take = AdmitBatch(cands, hbm_bytes, Bytes{running_bytes}).admitted.size();
    }
    for (size_t i = 0; i < take; ++i) {
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
    // One decode step: per layer one Prefetch for the whole batch; a batch that does not fit
    // the cache is split in halves, each its own micro-step.
    std::vector<std::pair<size_t, size_t>> parts = {{0, running.size()}};
    uint64_t step_loads = 0, step_sel = 0;
    uint32_t step_micro = 0;
    while (!parts.empty()) {
      auto [b, e] = parts.back();
      parts.pop_back();
      bool fits = true;
      uint64_t part_loads = 0;
      for (uint32_t l = 0; l < g.layers && fits; ++l) {
        std::vector<LayerSelection> work;
        for (size_t i = b; i < e; ++i) {
          const Request& r = running[i];
          work.push_back({SequenceLayer{.request = RequestId{r.id}, .tokens = o.tokens, .keys = r.keys[l],
                                        .dram_slots = rig->dram_slots},
                          r.trace->steps[r.done][l], r.trace->per_head});
        }
        auto p = rig->prefetcher->Prefetch(work);
        if (!p.ok()) {
          if (p.status().code() != StatusCode::kExhausted || e - b == 1) return std::move(p).status();
          fits = false;
          break;
        }
        KVT_RETURN_IF_ERROR(p->ready.Wait());
        part_loads += p->misses;
      }
      if (!fits) {
        rig->prefetcher->EndStep(Fence());  // the attempt's hits were marked: release them
        const size_t mid = b + (e - b) / 2;
        parts.push_back({mid, e});
        parts.push_back({b, mid});
        step_loads += part_loads;
        continue;
      }
      step_loads += part_loads;
      step_sel += (e - b) * uint64_t{traces[0].per_head} * g.kv_heads * g.layers;
      ++step_micro;
      rig->prefetcher->EndStep(Fence());
    }
    // Bookkeeping: working sets, finished requests.
    for (Request& r : running) {
      for (uint32_t l = 0; l < g.layers; ++l) {
        KVT_RETURN_IF_ERROR(est->Record(RequestId{r.id}, LayerId{l}, r.trace->steps[r.done][l], r.trace->per_head));
      }
      est->EndStep(RequestId{r.id});
      ++r.done;
    }
    std::erase_if(running, [&](const Request& r) {
      if (r.done < r.length) return false;
      est->Remove(RequestId{r.id});
      rig->cache->EndRequest(RequestId{r.id});
      if (t >= o.warmup) ++res.completed;
      return true;
    });
    if (t >= o.warmup) {
      loads += double(step_loads);
      selected += double(step_sel);
      micro += step_micro;
      batch += double(step_sel) / (double(traces[0].per_head) * g.kv_heads * g.layers);
    }
  }
  const double n = o.steps - o.warmup;
  res.loads_per_step = loads / n;
  res.batch = batch / n;
  res.loads_per_request_step = batch > 0 ? loads / batch : 0;
  res.miss_pct = selected > 0 ? 100.0 * loads / selected : 0;
  res.micro_batches = micro / n;
  return res;
}

int RunAdmissionBench(const AdmissionBenchOptions& o) {
  const KvGeometry g{.layers = o.layers, .kv_heads = o.kv_heads, .head_dim = 128, .block_tokens = 16, .dtype = DType::kBF16};
  SliceTierKind kind;
  if (!ParseSliceTierKind(o.tier, &kind)) {
    fmt::print(stderr, "bench admission: --tier {}: give emulated or gpu\n", o.tier);
    return 2;
  }
  const auto t0 = Clock::now();
  std::vector<Trace> traces;
  for (uint32_t i = 0; i < o.sequences; ++i) {
    Result<Trace> t = MakeTrace({g, o.tokens, o.budget, 24 + 17, o.seed + i, o.drift});
    if (!t.ok()) {
      fmt::print(stderr, "bench admission: {}\n", t.status().ToString());
      return 2;
    }
    traces.push_back(std::move(*t));
  }
  // The typical working set: the w-step union at the end of each trace's window, averaged.
  double ws = 0;
  for (const Trace& tr : traces) {
    auto est = WorkingSetEstimator::Create({.geometry = g, .window_steps = o.window});
    if (!est.ok()) return 2;
    for (uint32_t s = 0; s < 2 * o.window && s < tr.steps.size(); ++s) {
      for (uint32_t l = 0; l < g.layers; ++l) (void)(*est)->Record(RequestId{1}, LayerId{l}, tr.steps[s][l], tr.per_head);
      (*est)->EndStep(RequestId{1});
    }
    ws += double((*est)->UnionSlices(RequestId{1}));
  }
  ws /= double(traces.size());
  const auto capacity = static_cast<uint32_t>(std::ceil(ws * o.requests_1x));
  const double trace_s = Seconds(t0);
  struct Row {
    const char* name;
    uint32_t cap;
    bool admit;
  };
  const Row rows[] = {{"1x load (baseline)", o.requests_1x, false},
                      {"2x load, admission", 2 * o.requests_1x, true},
                      {"2x load, no admission", 2 * o.requests_1x, false}};
  if (!o.json) {
    fmt::print("admission: {} tokens, {} layers x {} kv heads, budget {} ({} blocks/head); working set {:.0f} slices/request "
               "(w={}); HBM {} slices = {} requests' working sets ({:.1f} MiB, {} tier); {} steps after {} warm-up; "
               "traces {:.1f} s\n",
               o.tokens, g.layers, g.kv_heads, o.budget, traces[0].per_head, ws, o.window, capacity, o.requests_1x,
               double(capacity) * g.slice_bytes() / (1 << 20), o.tier, o.steps - o.warmup, o.warmup, trace_s);
    fmt::print("{:<24} {:>8} {:>10} {:>14} {:>14} {:>9} {:>12} {:>10}\n", "scenario", "cap", "batch", "loads/step",
               "loads/req-step", "miss %", "micro/step", "vs 1x");
  }
  double base = 0;
  for (const Row& row : rows) {
    auto r = RunScenario(o, kind, g, traces, capacity, row.cap, row.admit, ws);
    if (!r.ok()) {
      fmt::print(stderr, "bench admission ({}): {}\n", row.name, r.status().ToString());
      return 2;
    }
    if (base == 0) base = r->loads_per_step;
    const double ratio = base > 0 ? r->loads_per_step / base : 0;
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "admission"}, {"tier", o.tier}, {"scenario", row.name}, {"request_cap", row.cap},
                                        {"admission", row.admit}, {"capacity_slices", capacity}, {"ws_slices", ws},
                                        {"batch", r->batch}, {"loads_per_step", r->loads_per_step},
                                        {"loads_per_request_step", r->loads_per_request_step}, {"miss_pct", r->miss_pct},
                                        {"micro_batches_per_step", r->micro_batches}, {"completed", r->completed},
                                        {"loads_vs_1x", ratio}}
                                .dump());
    } else {
      fmt::print("{:<24} {:>8} {:>10.2f} {:>14.1f} {:>14.2f} {:>9.2f} {:>12.2f} {:>9.2f}x\n", row.name, row.cap, r->batch,
                 r->loads_per_step, r->loads_per_request_step, r->miss_pct, r->micro_batches, ratio);
    }
  }
  if (!o.json) fmt::print("target: with admission, slices loaded per step <= 1.2x the 1x-load figure\n");
  return 0;
}

}  // namespace

void AddBenchSparseCommands(CLI::App& bench, int* exit_code) {
  auto sc = std::make_shared<SliceCacheBenchOptions>();
  CLI::App* c = bench.add_subcommand("slice-cache", "HBM slice cache misses on a drifting-query Quest trace");
  c->add_option("--tokens", sc->tokens, "tokens of the sequence")->capture_default_str();
  c->add_option("--layers", sc->layers, "layers")->capture_default_str();
  c->add_option("--kv-heads", sc->kv_heads, "KV heads")->capture_default_str();
  c->add_option("--budget", sc->budget, "token budget of the selection")->capture_default_str();
  c->add_option("--steps", sc->steps, "measured decode steps (after a window of warm-up)")->capture_default_str();
  c->add_option("--drift", sc->drift, "query drift per step")->capture_default_str();
  c->add_option("--capacities", sc->capacities, "HBM capacities as multiples of the working set")->delimiter(',');
  c->add_option("--seed", sc->seed, "generator seed")->capture_default_str();
  c->add_option("--tier", sc->tier, "HBM tier: emulated, or gpu (CUDA builds, on a GPU)")->capture_default_str();
  c->add_flag("--json", sc->json, "JSON lines");
  c->callback([sc, exit_code] { *exit_code = RunSliceCacheBench(*sc); });

  auto ad = std::make_shared<AdmissionBenchOptions>();
  CLI::App* a = bench.add_subcommand("admission", "working-set admission at 2x offered load vs none vs 1x load");
  a->add_option("--tokens", ad->tokens, "tokens per request")->capture_default_str();
  a->add_option("--layers", ad->layers, "layers")->capture_default_str();
  a->add_option("--kv-heads", ad->kv_heads, "KV heads")->capture_default_str();
  a->add_option("--budget", ad->budget, "token budget of the selection")->capture_default_str();
  a->add_option("--requests", ad->requests_1x, "requests whose working sets fill the HBM (1x load)")->capture_default_str();
  a->add_option("--steps", ad->steps, "decode steps simulated")->capture_default_str();
  a->add_option("--warmup", ad->warmup, "steps not measured")->capture_default_str();
  a->add_option("--seed", ad->seed, "generator seed")->capture_default_str();
  a->add_option("--tier", ad->tier, "HBM tier: emulated, or gpu (CUDA builds, on a GPU)")->capture_default_str();
  a->add_flag("--json", ad->json, "JSON lines");
  a->callback([ad, exit_code] {
    if (ad->warmup >= ad->steps) {
      fmt::print(stderr, "bench admission: --warmup must be below --steps\n");
      *exit_code = 2;
      return;
    }
    *exit_code = RunAdmissionBench(*ad);
  });

  AddBenchPrefillCommand(bench, exit_code);
}

}  // namespace kvtier::cli
