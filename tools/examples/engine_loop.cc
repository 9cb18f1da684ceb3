// The serving-engine loop, end to end, as an engine would drive kvtier. Built and run by the
// test suite (ctest -R engine_loop_example); the README walks through the same steps.
//
//   request arrives with tokens -> match the cached prefix -> onboard it to HBM ->
//   allocate blocks for the rest -> write KV layer by layer (commit each layer) ->
//   before each decode step get the device block table -> release when done.
#include <cstdio>
#include <cstring>
#include <vector>

#include "kvtier/tier_manager.h"
#include "registry.h"  // BuildTiers: the tiers this build and machine have

using namespace kvtier;

namespace {

// Stand-in for the engine's attention kernel writing one layer of KV into a block.
void WriteKv(std::byte* block, uint64_t bytes, const BlockKey& key) {
  std::memset(block, static_cast<int>(key.chain.bytes[0] ^ key.layer.value()), bytes);
}

Status ServeRequest(TierManager& tm, const KeyDeriver& keys, const std::vector<int32_t>& tokens, int decode_steps) {
  const KvGeometry& g = tm.geometry();

  // 1. Identity of every full block of the prompt (keyed hash chain, per tenant/namespace).
  std::vector<ChainHash> chains = keys.Chain(tokens);

  // 2. Match the longest cached prefix (all layers resident somewhere); it comes back pinned.
  PrefixMatch hit = tm.MatchPrefix(chains);
  std::printf("  prompt %zu blocks: %u cached (%u already in HBM)\n", chains.size(), hit.blocks,
              hit.blocks_at_or_above[TierIndex(TierKind::kHbm)]);

  // 3. Bring the cached prefix to HBM. Asynchronous: an engine overlaps this with other work.
  if (!hit.pins.empty()) KVT_RETURN_IF_ERROR(tm.Onboard(hit.pins, TierKind::kHbm).Wait());

  // 4. Allocate the blocks the prompt still needs (every layer), in HBM, pinned.
  std::vector<BlockKey> fresh_keys = keys.Keys(std::span(chains).subspan(hit.blocks));
  PinSet blocks = std::move(hit.pins);
  if (!fresh_keys.empty()) {
    KVT_ASSIGN_OR_RETURN(PinSet fresh, tm.Allocate(fresh_keys, TierKind::kHbm));
    // 5. Prefill writes KV layer by layer; each layer is committed once its kernel is done
    //    (pass the CUDA event's fence; here the write is synchronous, so Fence() = done).
    const size_t n = fresh_keys.size() / g.layers;
    for (uint32_t layer = 0; layer < g.layers; ++layer) {
      std::vector<uint32_t> this_layer;
      for (size_t b = 0; b < n; ++b) {
        const uint32_t i = static_cast<uint32_t>(b * g.layers + layer);
        KVT_ASSIGN_OR_RETURN(Location where, tm.Locate(fresh, i, TierKind::kHbm));
        WriteKv(std::get<MemoryAddress>(where).ptr, g.block_bytes(), fresh.key(i));
        this_layer.push_back(i);
      }
      KVT_RETURN_IF_ERROR(tm.Commit(fresh, Fence(), this_layer));
    }
    blocks.Append(std::move(fresh));
  }

  // 6. Decode: before each step, the device block table of what the step reads.
  std::vector<std::byte*> table;
  for (int step = 0; step < decode_steps; ++step) {
    KVT_RETURN_IF_ERROR(tm.BlockTable(blocks, TierKind::kHbm, &table));
    // ... launch attention over `table` (block-major: block b, layer l at b * layers + l) ...
  }
  std::printf("  decode: %d steps over a %zu-entry block table\n", decode_steps, table.size());

  // 7. Release: the blocks stay cached (and are demoted HBM -> DRAM when HBM fills).
  return tm.Release(blocks);
}

}  // namespace

int main() {
  // Tiers: HBM (the GPU tier, or the emulated one on machines without a GPU) and DRAM.
  TierConfig config;
  config.geometry = KvGeometry{.layers = 4, .kv_heads = 8, .head_dim = 128, .block_tokens = 16, .dtype = DType::kBF16};
  config.hbm_bytes = 32ull << 20;
  config.dram_bytes = 64ull << 20;
  config.allow_unpinned_dram = true;  // a production engine keeps the default: pinned or fail
  auto tiers = BuildTiers(config);
  if (!tiers.ok()) {
    std::fprintf(stderr, "tiers: %s\n", tiers.status().ToString().c_str());
    return 1;
  }
  TierManagerOptions options;
  options.geometry = config.geometry;
  auto tm = TierManager::Create(options, std::move(tiers).value());
  if (!tm.ok()) {
    std::fprintf(stderr, "runtime: %s\n", tm.status().ToString().c_str());
    return 1;
  }

  // Keys: one deriver per (tenant, model namespace). The tenant secret comes from the
  // engine's authenticated identity, never from the request.
  NamespaceSpec ns;
  ns.model_fingerprint = "example-model@rev1";
  ns.tokenizer_id = "example-tokenizer";
  ns.geometry = config.geometry;
  auto keys = KeyDeriver::Create(TenantSecret::FromPassphrase("tenant-a"), ns);
  if (!keys.ok()) return 1;

  std::vector<int32_t> system_prompt(64), question(40);
  for (size_t i = 0; i < system_prompt.size(); ++i) system_prompt[i] = static_cast<int32_t>(1000 + i);
  for (size_t i = 0; i < question.size(); ++i) question[i] = static_cast<int32_t>(5000 + i);
  std::vector<int32_t> first = system_prompt, second = system_prompt;
  first.insert(first.end(), question.begin(), question.end());
  second.push_back(42);  // another question after the same system prompt

  std::printf("request 1:\n");
  if (Status s = ServeRequest(**tm, *keys, first, 4); !s.ok()) {
    std::fprintf(stderr, "request 1: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("request 2 (same system prompt):\n");
  if (Status s = ServeRequest(**tm, *keys, second, 4); !s.ok()) {
    std::fprintf(stderr, "request 2: %s\n", s.ToString().c_str());
    return 1;
  }
  // The second request must have found the 4 system-prompt blocks.
  const RuntimeStats st = (*tm)->Stats();
  const uint64_t hbm_hits = st.tiers[TierIndex(TierKind::kHbm)].hits;
  std::printf("hbm hits: %llu block-layers\n", static_cast<unsigned long long>(hbm_hits));
  return hbm_hits >= 4 * config.geometry.layers ? 0 : 1;
}
