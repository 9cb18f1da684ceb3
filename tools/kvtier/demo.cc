// `kvtier demo`: replays a built-in long-context serving workload through the runtime, the
// way an engine drives it: several requests sharing system prompts, multi-turn follow-ups,
// Llama-3-8B-shaped KV (scaled in count to this machine's memory), prefill written layer by
// layer, decode steps that read the block table and append blocks. Every reused block is
// checked byte for byte against the payload its key implies, so the run also proves that no
// wrong KV is ever served.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "commands.h"
#include "kvtier/tier_manager.h"
#include "payload_writer.h"
#include "registry.h"

namespace kvtier::cli {
namespace {

struct DemoOptions {
  bool quick = false;
  uint32_t requests = 0;  // 0 = 48, or 8 with --quick
  uint32_t workers = 2;
  uint32_t decode_steps = 0;  // 0 = 32, or 8 with --quick
  uint64_t hbm_mib = 0;       // 0 = scaled to this machine
  uint64_t dram_mib = 0;
  uint64_t seed = 42;
  bool require_pinned = false;
  KvGeometry geometry = KvGeometry::Llama3_8B();
  std::string dtype = "bf16";
};

struct Request {
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;  // the tokens decode appends, fixed up front
};

struct Tally {
  std::atomic<uint64_t> done{0}, failed{0};
  std::atomic<uint64_t> prompt_blocks{0}, reused_hbm{0}, reused_dram{0};
  std::atomic<uint64_t> written_blocks{0}, verified_blocks{0}, mismatches{0};
  std::atomic<uint64_t> decode_steps{0}, table_entries{0}, retries{0};
};

uint64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream f(line.substr(13));
      uint64_t kb = 0;
      f >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, size_t n) {
  std::uniform_int_distribution<int32_t> tok(0, 128255);  // Llama-3 vocabulary
  std::vector<int32_t> t(n);
  for (auto& x : t) x = tok(rng);
  return t;
}

// Builds the workload: system prompts shared Zipf-like, fresh conversations, and follow-up
// turns that extend an earlier request's whole context.
std::vector<Request> MakeWorkload(const DemoOptions& o, uint32_t requests, uint32_t max_tokens, uint32_t decode) {
  std::mt19937_64 rng(o.seed);
  const uint32_t sys_len = std::max<uint32_t>(o.geometry.block_tokens, max_tokens / 5);
  std::vector<std::vector<int32_t>> systems;
  for (int i = 0; i < 4; ++i) systems.push_back(RandomTokens(rng, sys_len));
  std::discrete_distribution<int> pick_system({8, 4, 2, 1});
  std::uniform_int_distribution<uint32_t> user_len(max_tokens / 8, max_tokens / 2);
  std::vector<Request> out;
  for (uint32_t r = 0; r < requests; ++r) {
    Request req;
    const bool follow_up = r > 0 && rng() % 10 < 3;
    if (follow_up) {
      const Request& parent = out[rng() % out.size()];
      req.prompt = parent.prompt;
      req.prompt.insert(req.prompt.end(), parent.generated.begin(), parent.generated.end());
      auto turn = RandomTokens(rng, user_len(rng) / 4 + 1);
      req.prompt.insert(req.prompt.end(), turn.begin(), turn.end());
    }
    if (!follow_up || req.prompt.size() + decode > max_tokens) {
      req.prompt = systems[pick_system(rng)];
      auto user = RandomTokens(rng, user_len(rng));
      req.prompt.insert(req.prompt.end(), user.begin(), user.end());
    }
    req.generated = RandomTokens(rng, decode);
    out.push_back(std::move(req));
  }
  return out;
}

class DemoRunner {
 public:
  DemoRunner(TierManager& tm, const KeyDeriver& keys, PayloadWriter& writer, Tally& tally)
      : tm_(tm), keys_(keys), writer_(writer), tally_(tally) {}

  Status Run(const Request& req) {
    for (int attempt = 0; attempt < 200; ++attempt) {
      Status s = Attempt(req);
      if (s.ok()) return s;
      if (!s.retryable() && s.code() != StatusCode::kAlreadyExists) return s;
      // Full tier (the demotion thread is catching up) or a concurrent writer of the same
      // prefix: wait a moment, then match again.
      tally_.retries.fetch_add(1, std::memory_order_relaxed);
      if (s.code() == StatusCode::kExhausted) tm_.DemoteNow();
      std::this_thread::sleep_for(std::chrono::milliseconds(1 + attempt / 10));
    }
    return Status::Unavailable("request gave up after 200 attempts");
  }

 private:
  Status Attempt(const Request& req) {
    const KvGeometry& g = tm_.geometry();
    const uint64_t block_bytes = g.block_bytes();
    std::vector<ChainHash> chains = keys_.Chain(req.prompt);

    // 1. Match the cached prefix; 2. bring it to HBM and check every byte of it.
    PrefixMatch m = tm_.MatchPrefix(chains);
    PinSet pins = std::move(m.pins);
    if (!pins.empty()) {
      KVT_RETURN_IF_ERROR(tm_.Onboard(pins, TierKind::kHbm).Wait().Annotate("onboarding the matched prefix"));
      std::vector<std::byte*> table;
      KVT_RETURN_IF_ERROR(tm_.BlockTable(pins, TierKind::kHbm, &table));
      std::vector<BlockKey> matched(table.size());
      for (size_t i = 0; i < table.size(); ++i) matched[i] = pins.key(i);
      KVT_ASSIGN_OR_RETURN(const uint64_t bad, writer_.CountWrong(matched, table, block_bytes));
      tally_.verified_blocks.fetch_add(table.size(), std::memory_order_relaxed);
      tally_.mismatches.fetch_add(bad, std::memory_order_relaxed);
    }

    // 3. Allocate the rest; 4. write it layer by layer, committing each layer.
    std::span<const ChainHash> rest = std::span(chains).subspan(m.blocks);
    if (!rest.empty()) {
      KVT_ASSIGN_OR_RETURN(PinSet fresh, tm_.Allocate(keys_.Keys(rest), TierKind::kHbm));
      KVT_RETURN_IF_ERROR(WriteLayerByLayer(fresh, rest.size()));
      pins.Append(std::move(fresh));
    }

    // 5. Decode: each step reads the device block table, appends a token, and writes a new
    // block whenever the tail fills.
    std::vector<int32_t> tail(req.prompt.end() - static_cast<ptrdiff_t>(req.prompt.size() % g.block_tokens),
                              req.prompt.end());
    ChainHash last = chains.empty() ? keys_.namespace_digest() : chains.back();
    std::vector<std::byte*> table;
    for (int32_t token : req.generated) {
      // The table an attention kernel would read this step.
      KVT_RETURN_IF_ERROR(tm_.BlockTable(pins, TierKind::kHbm, &table));
      tally_.table_entries.fetch_add(table.size(), std::memory_order_relaxed);
      tally_.decode_steps.fetch_add(1, std::memory_order_relaxed);
      tail.push_back(token);
      if (tail.size() < g.block_tokens) continue;
      KVT_ASSIGN_OR_RETURN(ChainHash next, keys_.Next(last, tail));
      const std::vector<BlockKey> keys = keys_.Keys(std::span(&next, 1));
      auto fresh = tm_.Allocate(keys, TierKind::kHbm);
      if (fresh.ok()) {
        KVT_RETURN_IF_ERROR(WriteLayerByLayer(*fresh, 1));
        pins.Append(std::move(fresh).value());
      } else if (fresh.status().code() == StatusCode::kAlreadyExists) {
        // An earlier turn of this conversation already wrote it: reuse.
        PinSet again = tm_.MatchKeys(keys);
        if (again.size() != keys.size()) return Status::Unavailable("a decoded block is still being written");
        KVT_RETURN_IF_ERROR(tm_.Onboard(again, TierKind::kHbm).Wait());
        pins.Append(std::move(again));
      } else {
        return fresh.status();
      }
      last = next;
      tail.clear();
    }
    // 6. Done: release (PinSet's destructor would too). Counted only for the attempt that
    // completed, so retries do not count twice.
    tally_.prompt_blocks.fetch_add(chains.size(), std::memory_order_relaxed);
    tally_.reused_hbm.fetch_add(m.blocks_at_or_above[TierIndex(TierKind::kHbm)], std::memory_order_relaxed);
    tally_.reused_dram.fetch_add(m.blocks - m.blocks_at_or_above[TierIndex(TierKind::kHbm)], std::memory_order_relaxed);
    tally_.done.fetch_add(1, std::memory_order_relaxed);
    return tm_.Release(pins);
  }

  Status WriteLayerByLayer(const PinSet& fresh, size_t blocks) {
    const KvGeometry& g = tm_.geometry();
    std::vector<uint32_t> layer_indices(blocks);
    std::vector<BlockKey> layer_keys(blocks);
    std::vector<std::byte*> layer_blocks(blocks);
    for (uint32_t l = 0; l < g.layers; ++l) {
      for (size_t b = 0; b < blocks; ++b) {
        const uint32_t i = static_cast<uint32_t>(b * g.layers + l);
        KVT_ASSIGN_OR_RETURN(Location loc, tm_.Locate(fresh, i, TierKind::kHbm));
        layer_indices[b] = i;
        layer_keys[b] = fresh.key(i);
        layer_blocks[b] = std::get<MemoryAddress>(loc).ptr;
      }
      KVT_RETURN_IF_ERROR(writer_.Fill(layer_keys, layer_blocks, g.block_bytes()));
      // The engine's kernel for this layer is done (synchronous here): commit the layer.
      KVT_RETURN_IF_ERROR(tm_.Commit(fresh, Fence(), layer_indices));
    }
    tally_.written_blocks.fetch_add(blocks * g.layers, std::memory_order_relaxed);
    return Status();
  }

  TierManager& tm_;
  const KeyDeriver& keys_;
  PayloadWriter& writer_;
  Tally& tally_;
};

std::string Gib(double b) { return fmt::format("{:.2f} GiB", b / double(1ull << 30)); }

int RunDemo(DemoOptions o) {
  auto dt = ParseDType(o.dtype);
  if (!dt.ok()) {
    fmt::print(stderr, "kvtier demo: {}\n", dt.status().message());
    return 2;
  }
  o.geometry.dtype = *dt;
  if (Status s = o.geometry.Validate(); !s.ok()) {
    fmt::print(stderr, "kvtier demo: {}\n", s.message());
    return 2;
  }
  const KvGeometry& g = o.geometry;
  const uint64_t avail = MemAvailableBytes();
  if (o.dram_mib == 0) {
    const uint64_t want = o.quick ? 512 : 2048;
    o.dram_mib = std::max<uint64_t>(64, std::min<uint64_t>(want, avail / 4 / (1 << 20)));
  }
  if (o.hbm_mib == 0) o.hbm_mib = std::max<uint64_t>(16, o.dram_mib / 2);
  const uint32_t requests = o.requests ? o.requests : (o.quick ? 8 : 48);
  const uint32_t decode = o.decode_steps ? o.decode_steps : (o.quick ? 8 : 32);
  // One request's KV must fit HBM next to the other workers' and the demotion headroom.
  const uint64_t hbm_tokens = (o.hbm_mib << 20) / g.bytes_per_token();
  const uint32_t max_tokens = static_cast<uint32_t>(hbm_tokens * 6 / 10 / (o.workers + 1));
  if (max_tokens < 2 * g.block_tokens + decode) {
    fmt::print(stderr, "kvtier demo: {} MiB of HBM holds only {} tokens of this geometry; give --hbm-mib more\n",
               o.hbm_mib, hbm_tokens);
    return 2;
  }

  TierConfig config;
  config.geometry = g;
  config.hbm_bytes = o.hbm_mib << 20;
  config.dram_bytes = o.dram_mib << 20;
  config.allow_unpinned_dram = !o.require_pinned;
  config.copy_threads = std::max(1u, std::thread::hardware_concurrency());
  TierSetInfo info;
  auto tiers = BuildTiers(config, &info);
  if (!tiers.ok()) {
    fmt::print(stderr, "kvtier demo: building the tiers failed: {}\n", tiers.status().ToString());
    return 1;
  }
  TierManagerOptions tmo;
  tmo.geometry = g;
  auto tm = TierManager::Create(tmo, std::move(tiers).value());
  if (!tm.ok()) {
    fmt::print(stderr, "kvtier demo: {}\n", tm.status().ToString());
    return 1;
  }
  NamespaceSpec ns;
  ns.model_fingerprint = "demo/llama-3-8b-shaped@synthetic";
  ns.tokenizer_id = "llama-3";
  ns.geometry = g;
  ns.rope.theta = 500000.0;
  auto keys = KeyDeriver::Create(TenantSecret::FromPassphrase("kvtier-demo"), ns);
  if (!keys.ok()) {
    fmt::print(stderr, "kvtier demo: {}\n", keys.status().ToString());
    return 1;
  }

  std::unique_ptr<PayloadWriter> writer = MakeHostPayloadWriter();
  if (info.hbm_is_gpu) {
    auto cuda = MakeCudaPayloadWriter(config.device);
    if (!cuda.ok()) {
      fmt::print(stderr, "kvtier demo: {}\n", cuda.status().ToString());
      return 1;
    }
    writer = std::move(cuda).value();
  }
  const std::vector<Request> workload = MakeWorkload(o, requests, max_tokens, decode);
  uint64_t total_tokens = 0;
  for (const auto& r : workload) total_tokens += r.prompt.size() + r.generated.size();
  fmt::print("kvtier demo: {} requests, {} tokens, {} workers\n", requests, total_tokens, o.workers);
  fmt::print("  geometry  {} layers x {} KV heads x d{} x {}-token blocks, {} ({} KiB per block, {} KiB per token)\n",
             g.layers, g.kv_heads, g.head_dim, g.block_tokens, DTypeName(g.dtype), g.block_bytes() >> 10,
             g.bytes_per_token() >> 10);
  fmt::print("  hbm       {}\n  dram      {}\n  nvme      {}\n  build     {}\n\n", info.hbm, info.dram, info.nvme,
             DescribeBuild());

  Tally tally;
  std::atomic<uint32_t> next{0};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (uint32_t w = 0; w < o.workers; ++w) {
    workers.emplace_back([&] {
      DemoRunner runner(**tm, *keys, *writer, tally);
      for (uint32_t i = next.fetch_add(1); i < workload.size(); i = next.fetch_add(1)) {
        if (Status s = runner.Run(workload[i]); !s.ok()) {
          tally.failed.fetch_add(1);
          fmt::print(stderr, "\nkvtier demo: request {} failed: {}\n", i, s.ToString());
        }
      }
    });
  }
  const bool tty = isatty(STDOUT_FILENO);
  uint64_t last_decile = 0;
  while (tally.done.load() + tally.failed.load() < workload.size()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const uint64_t finished = tally.done.load() + tally.failed.load();
    const RuntimeStats st = (*tm)->Stats();
    uint64_t moved = 0;
    for (const auto& m : st.movers) moved += m.bytes;
    const auto& h = st.tiers[TierIndex(TierKind::kHbm)];
    const auto& d = st.tiers[TierIndex(TierKind::kDram)];
    const std::string line = fmt::format(
        "  [{:>3}/{}] reused {:>5.1f}% of prompt blocks | moved {} | hbm {:>3.0f}% dram {:>3.0f}% full",
        finished, workload.size(),
        100.0 * double(tally.reused_hbm + tally.reused_dram) / double(std::max<uint64_t>(1, tally.prompt_blocks)),
        Gib(double(moved)), h.capacity_slots ? 100.0 * double(h.used_slots) / double(h.capacity_slots) : 0.0,
        d.capacity_slots ? 100.0 * double(d.used_slots) / double(d.capacity_slots) : 0.0);
    if (tty) {
      fmt::print("\r{}", line);
      std::fflush(stdout);
    } else if (finished * 10 / workload.size() > last_decile) {
      last_decile = finished * 10 / workload.size();
      fmt::print("{}\n", line);
    }
  }
  for (auto& t : workers) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tty) fmt::print("\n");

  const RuntimeStats st = (*tm)->Stats();
  const uint64_t prompt = tally.prompt_blocks, hbm = tally.reused_hbm, dram = tally.reused_dram;
  fmt::print("\nkvtier demo: summary ({:.2f} s)\n", secs);
  fmt::print("  requests         {} done, {} failed, {} retries (full tier or concurrent writer)\n",
             tally.done.load(), tally.failed.load(), tally.retries.load());
  fmt::print("  prompt blocks    {} token blocks: {} reused from HBM, {} from DRAM, {} computed ({:.1f}% reused)\n",
             prompt, hbm, dram, prompt - hbm - dram, 100.0 * double(hbm + dram) / double(std::max<uint64_t>(1, prompt)));
  fmt::print("  blocks written   {} (one layer each, {})\n", tally.written_blocks.load(),
             Gib(double(tally.written_blocks.load() * g.block_bytes())));
  fmt::print("  decode steps     {} ({} block-table entries read)\n", tally.decode_steps.load(),
             tally.table_entries.load());
  fmt::print("  verified         {} reused blocks checked byte for byte: {} wrong\n\n", tally.verified_blocks.load(),
             tally.mismatches.load());
  fmt::print("{}", st.ToText());
  tm->reset();
  if (tally.mismatches.load() != 0) {
    fmt::print(stderr, "kvtier demo: FAILED: {} blocks were served with wrong bytes\n", tally.mismatches.load());
    return 1;
  }
  if (tally.failed.load() != 0) return 1;
  return 0;
}

}  // namespace

void AddDemoCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand("demo", "replay a built-in long-context serving workload through the runtime");
  cmd->add_flag("--quick", o->quick, "a small, fast run (used by the test suite)");
  cmd->add_option("--requests", o->requests, "requests to replay (default 48, --quick 8)");
  cmd->add_option("--workers", o->workers, "engine threads issuing requests")->check(CLI::Range(1, 64));
  cmd->add_option("--decode-steps", o->decode_steps, "decode steps per request (default 32, --quick 8)");
  cmd->add_option("--hbm-mib", o->hbm_mib, "HBM tier size (default: half the DRAM pool)");
  cmd->add_option("--dram-mib", o->dram_mib, "DRAM pool size (default: 2 GiB or a quarter of available memory)");
  cmd->add_option("--seed", o->seed, "workload seed");
  cmd->add_flag("--require-pinned", o->require_pinned, "fail if the DRAM pool cannot be pinned");
  cmd->add_option("--layers", o->geometry.layers, "model layers (default 32)");
  cmd->add_option("--kv-heads", o->geometry.kv_heads, "KV heads (default 8)");
  cmd->add_option("--head-dim", o->geometry.head_dim, "head dimension (default 128)");
  cmd->add_option("--block-tokens", o->geometry.block_tokens, "tokens per block (default 16)");
  cmd->add_option("--dtype", o->dtype, "KV dtype: f16, bf16, f32, fp8e4m3, fp8e5m2 (default bf16)");
  cmd->callback([o, exit_code] { *exit_code = RunDemo(*o); });
}

}  // namespace kvtier::cli
