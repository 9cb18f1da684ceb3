// `kvtier bench prefill`: the layer-segmented prefill of the sparse path (docs/sparse.md) on
// the emulated HBM tier: a long prompt prefilled layer by layer through LayerPrefill (one
// layer of staging in HBM, offload to DRAM blocks, metadata built on the way): peak HBM
// bytes vs one layer of KV vs the chunked baseline (every layer of every chunk resident;
// computed, not run).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "commands.h"
#include "emulated_hbm_tier.h"
#include "host_tier.h"
#include "kvtier/layer_prefill.h"
#include "kvtier/slice_metadata.h"
#include "kvtier/tier_manager.h"
#include "kvtier/working_set.h"
#include "memcpy_mover.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

struct PrefillBenchOptions {
  uint32_t tokens = 8192;
  uint32_t layers = 8;
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t chunk = 2048;
  bool full = false;
  bool no_metadata = false;
  bool json = false;
};

// Fills a slice with finite bf16 values (bit 14 cleared: the exponent never saturates).
void FillSlice(std::byte* p, uint64_t bytes, uint64_t& state) {
  for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const uint64_t v = state & 0xBFFFBFFFBFFFBFFFull;
    std::memcpy(p + i, &v, 8);
  }
}

int RunPrefillBench(PrefillBenchOptions o) {
  if (o.full) {
    o.tokens = 131072;
    o.layers = 32;
    o.kv_heads = 8;
    o.head_dim = 128;
  }
  const KvGeometry g{.layers = o.layers, .kv_heads = o.kv_heads, .head_dim = o.head_dim, .block_tokens = 16,
                     .dtype = DType::kBF16};
  if (Status s = g.Validate(); !s.ok() || o.tokens < 16) {
    fmt::print(stderr, "bench prefill: {}\n", s.ok() ? "--tokens must be at least one block (16)" : s.ToString());
    return 2;
  }
  const uint32_t blocks = o.tokens / g.block_tokens;
  auto fail = [](const Status& s) {
    fmt::print(stderr, "bench prefill: {}\n", s.ToString());
    return 2;
  };
  TierSet set;
  HostTierOptions ho;
  ho.slot_bytes = g.block_bytes();
  ho.slot_count = blocks * g.layers;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  auto dram = HostTier::Create(ho);
  if (!dram.ok()) return fail(dram.status());
  Tier* dram_tier = dram->get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(*dram);
  TierManagerOptions tmo;
  tmo.geometry = g;
  auto tm = TierManager::Create(tmo, std::move(set));
  if (!tm.ok()) return fail(tm.status());
  // HBM: exactly one layer of the prompt in slices.
  auto hbm = EmulatedHbmTier::Create({.slot_bytes = g.slice_bytes(), .slot_count = blocks * g.kv_heads});
  if (!hbm.ok()) return fail(hbm.status());
  auto down = MemcpyMover::Create(hbm->get(), dram_tier, {.threads = 2});
  if (!down.ok()) return fail(down.status());
  auto meta = SliceMetadata::Create({.layers = g.layers, .kv_heads = g.kv_heads, .head_dim = g.head_dim,
                                     .block_tokens = g.block_tokens});
  if (!meta.ok()) return fail(meta.status());
  std::vector<BlockKey> keys;
  std::mt19937_64 rng(11);
  for (uint32_t b = 0; b < blocks; ++b) {
    ChainHash c;
    for (auto& x : c.bytes) x = static_cast<uint8_t>(rng());
    for (uint32_t l = 0; l < g.layers; ++l) keys.push_back(BlockKey{c, LayerId{l}});
  }
  double meta_s = 0;
  LayerKeysFn hook;
  if (!o.no_metadata) {
    hook = [&](const LayerStaging& s, const Fence& written) -> Result<Fence> {
      KVT_RETURN_IF_ERROR(written.Wait());
      const auto t = Clock::now();
      std::vector<float> k;
      KVT_RETURN_IF_ERROR(GatherLayerKeys(g, s, &k));
      KVT_RETURN_IF_ERROR(meta->Append(s.layer, k, s.blocks * g.block_tokens, KeyLayout::kHeadMajor));
      meta_s += Seconds(t);
      return Fence();
    };
  }
  auto prefill = LayerPrefill::Create({.geometry = g, .prompt_tokens = o.tokens}, tm->get(), hbm->get(), down->get(),
                                      std::move(keys), hook);
  if (!prefill.ok()) return fail(prefill.status());
  const auto t0 = Clock::now();
  uint64_t state = 0x9E3779B97F4A7C15ull;
  double write_s = 0;
  for (uint32_t l = 0; l < g.layers; ++l) {
    auto s = (*prefill)->BeginLayer(LayerId{l});
    if (!s.ok()) return fail(s.status());
    const auto tw = Clock::now();
    for (std::byte* p : s->pointers) FillSlice(p, g.slice_bytes(), state);  // the engine's layer l
    write_s += Seconds(tw);
    auto f = (*prefill)->FinishLayer(Fence());
    if (!f.ok()) return fail(f.status());
  }
  auto pins = (*prefill)->Finish();
  if (!pins.ok()) return fail(pins.status());
  const double total_s = Seconds(t0);
  const LayerPrefillStats st = (*prefill)->Stats();
  const uint64_t chunked = ChunkedPrefillBytes(g, o.tokens).value();
  const double ratio = double(st.peak_hbm_bytes) / double(st.layer_bytes);
  const double offload_gbps = double(st.offloaded_bytes) / std::max(1e-9, total_s - write_s - meta_s) / 1e9;
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"bench", "prefill"}, {"tokens", o.tokens}, {"layers", g.layers},
                                      {"kv_heads", g.kv_heads}, {"head_dim", g.head_dim}, {"layer_bytes", st.layer_bytes},
                                      {"peak_hbm_bytes", st.peak_hbm_bytes}, {"peak_vs_layer", ratio},
                                      {"chunked_peak_bytes", chunked}, {"chunk_tokens", o.chunk},
                                      {"chunked_vs_layer", double(chunked) / double(st.layer_bytes)},
                                      {"offloaded_bytes", st.offloaded_bytes}, {"seconds", total_s},
                                      {"offload_gbps", offload_gbps}, {"metadata_bytes", o.no_metadata ? 0 : meta->bytes().value()},
                                      {"metadata_seconds", meta_s}}
                              .dump());
  } else {
    fmt::print("prefill: {} tokens, {} layers x {} kv heads, d={}, 16-token bf16 blocks; one layer of KV = {:.1f} MiB\n",
               o.tokens, g.layers, g.kv_heads, g.head_dim, double(st.layer_bytes) / (1 << 20));
    fmt::print("{:<40} {:>14} {:>12}\n", "mode", "peak HBM MiB", "vs 1 layer");
    fmt::print("{:<40} {:>14.1f} {:>11.3f}x\n", "layer-segmented (LayerPrefill)", double(st.peak_hbm_bytes) / (1 << 20),
               ratio);
    fmt::print("{:<40} {:>14.1f} {:>11.3f}x\n", fmt::format("chunked, {}-token chunks (computed)", o.chunk),
               double(chunked) / (1 << 20), double(chunked) / double(st.layer_bytes));
    fmt::print("offloaded {:.1f} MiB to DRAM in {:.2f} s ({:.2f} GB/s excluding the synthetic writes and metadata); "
               "metadata {:.1f} KiB built in {:.2f} s\n",
               double(st.offloaded_bytes) / (1 << 20), total_s, offload_gbps, double(meta->bytes().value()) / 1024,
               meta_s);
    fmt::print("target: peak <= 1.05x one layer\n");
  }
  return ratio <= 1.05 ? 0 : 1;
}

}  // namespace

void AddBenchPrefillCommand(CLI::App& bench, int* exit_code) {
  auto pf = std::make_shared<PrefillBenchOptions>();
  CLI::App* p = bench.add_subcommand("prefill", "layer-segmented prefill: peak HBM vs one layer vs chunked");
  p->add_option("--tokens", pf->tokens, "prompt tokens")->capture_default_str();
  p->add_option("--layers", pf->layers, "layers")->capture_default_str();
  p->add_option("--kv-heads", pf->kv_heads, "KV heads")->capture_default_str();
  p->add_option("--head-dim", pf->head_dim, "head dimension")->capture_default_str();
  p->add_option("--chunk", pf->chunk, "chunk of the chunked baseline")->capture_default_str();
  p->add_flag("--full", pf->full, "Llama-3-8B shapes at 128K tokens (needs 16 GiB of DRAM + 512 MiB)");
  p->add_flag("--no-metadata", pf->no_metadata, "skip building the Quest metadata");
  p->add_flag("--json", pf->json, "JSON lines");
  p->callback([pf, exit_code] { *exit_code = RunPrefillBench(*pf); });
}

}  // namespace kvtier::cli
