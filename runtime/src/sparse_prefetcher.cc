// SparsePrefetcher: selection -> slice refs -> SliceCache::Acquire -> one MoveBatch of the
// misses (src = the block's DRAM slot at the head's slice offset, dst = the slice slot).
#include "kvtier/sparse_prefetcher.h"

#include <fmt/format.h>

#include <utility>
#include <variant>

namespace kvtier {
namespace {

// Where ref k came from.
struct RefOrigin {
  uint32_t selection;
  uint32_t head;
  uint32_t block;
};

}  // namespace

Result<std::unique_ptr<SparsePrefetcher>> SparsePrefetcher::Create(SliceCache* cache, Mover* dram_to_hbm) {
  if (cache == nullptr || dram_to_hbm == nullptr) {
    return Status::InvalidArgument("SparsePrefetcher needs a slice cache and a DRAM -> HBM mover");
  }
  if (dram_to_hbm->source() != TierKind::kDram || dram_to_hbm->destination() != TierKind::kHbm) {
    return Status::InvalidArgument(fmt::format("SparsePrefetcher mover {} copies {} -> {}, not dram -> hbm",
                                               dram_to_hbm->name(), TierName(dram_to_hbm->source()),
                                               TierName(dram_to_hbm->destination())));
  }
  return std::unique_ptr<SparsePrefetcher>(new SparsePrefetcher(cache, dram_to_hbm));
}

Status SparsePrefetcher::Check(std::span<const LayerSelection> layer) const {
  const KvGeometry& g = cache_->options().geometry;
  for (size_t j = 0; j < layer.size(); ++j) {
    const LayerSelection& s = layer[j];
    const SequenceLayer& q = s.sequence;
    if (q.keys.size() != q.dram_slots.size()) {
      return Status::InvalidArgument(fmt::format("selection {} (request {}): {} keys but {} DRAM slots", j,
                                                 q.request.value(), q.keys.size(), q.dram_slots.size()));
    }
    if (s.blocks.size() != size_t{g.kv_heads} * s.blocks_per_head) {
      return Status::InvalidArgument(fmt::format("selection {} (request {}): {} indices, expected {} kv heads x {}", j,
                                                 q.request.value(), s.blocks.size(), g.kv_heads, s.blocks_per_head));
    }
    for (uint32_t b : s.blocks) {
      if (b > q.keys.size()) {
        return Status::InvalidArgument(fmt::format("selection {} (request {}): block {} beyond the {} full blocks + tail",
                                                   j, q.request.value(), b, q.keys.size()));
      }
    }
  }
  return Status();
}

Result<Acquisition> SparsePrefetcher::Load(std::span<const LayerSelection> layer, SliceUse use,
                                           std::vector<SliceRef>* refs, uint32_t* tail) {
  KVT_RETURN_IF_ERROR(Check(layer));
  const KvGeometry& g = cache_->options().geometry;
  std::vector<RefOrigin> origin;
  refs->clear();
  *tail = 0;
  for (uint32_t j = 0; j < layer.size(); ++j) {
    const LayerSelection& s = layer[j];
    cache_->SetRequestTokens(s.sequence.request, s.sequence.tokens);
    for (uint32_t h = 0; h < g.kv_heads; ++h) {
      for (uint32_t i = 0; i < s.blocks_per_head; ++i) {
        const uint32_t b = s.blocks[size_t{h} * s.blocks_per_head + i];
        if (b == s.sequence.keys.size()) {
          ++*tail;
          continue;
        }
        refs->push_back(SliceRef{.key = SliceKey{s.sequence.keys[b], h}, .request = s.sequence.request, .block_index = b});
        origin.push_back(RefOrigin{j, h, b});
      }
    }
  }
  KVT_ASSIGN_OR_RETURN(Acquisition acq, cache_->Acquire(*refs, use));
  if (acq.misses.empty()) return acq;
  MoveBatch batch;
  batch.segments.reserve(acq.misses.size());
  for (uint32_t k : acq.misses) {
    const RefOrigin& o = origin[k];
    batch.segments.push_back(CopySegment{.src = layer[o.selection].sequence.dram_slots[o.block],
                                         .dst = acq.slots[k],
                                         .src_offset = g.SliceOffset(o.head),
                                         .dst_offset = 0,
                                         .bytes = g.slice_bytes()});
  }
  counters_.batches.fetch_add(1, std::memory_order_relaxed);
  counters_.slices_loaded.fetch_add(acq.misses.size(), std::memory_order_relaxed);
  if (use == SliceUse::kHint) counters_.hint_slices.fetch_add(acq.misses.size(), std::memory_order_relaxed);
  cache_->CompleteLoads(acq, mover_->Submit(std::move(batch)));
  return acq;
}

Result<LayerPrefetch> SparsePrefetcher::Prefetch(std::span<const LayerSelection> layer) {
  counters_.layer_calls.fetch_add(1, std::memory_order_relaxed);
  std::vector<SliceRef> refs;
  LayerPrefetch out;
  KVT_ASSIGN_OR_RETURN(Acquisition acq, Load(layer, SliceUse::kStep, &refs, &out.tail));
  const KvGeometry& g = cache_->options().geometry;
  const Tier* hbm = cache_->tier();
  out.hits = acq.hits;
  out.misses = static_cast<uint32_t>(acq.misses.size());
  out.ready = acq.ready;
  out.tables.reserve(layer.size());
  size_t k = 0;  // walks refs in the order Load built them
  for (const LayerSelection& s : layer) {
    PageTable t;
    t.request = s.sequence.request;
    t.kv_heads = g.kv_heads;
    t.blocks_per_head = s.blocks_per_head;
    t.slots.reserve(s.blocks.size());
    t.pointers.reserve(s.blocks.size());
    for (uint32_t b : s.blocks) {
      if (b == s.sequence.keys.size()) {
        t.slots.push_back(kNoSlot);
        t.pointers.push_back(nullptr);
        continue;
      }
      const SlotId slot = acq.slots[k++];
      t.slots.push_back(slot);
      const Location loc = hbm->Locate(slot);
      const auto* mem = std::get_if<MemoryAddress>(&loc);
      t.pointers.push_back(mem != nullptr ? mem->ptr : nullptr);
    }
    out.tables.push_back(std::move(t));
  }
  return out;
}

Result<Fence> SparsePrefetcher::PrefetchHint(std::span<const LayerSelection> layer) {
  counters_.hint_calls.fetch_add(1, std::memory_order_relaxed);
  std::vector<SliceRef> refs;
  uint32_t tail = 0;
  KVT_ASSIGN_OR_RETURN(Acquisition acq, Load(layer, SliceUse::kHint, &refs, &tail));
  return acq.ready;
}

SparsePrefetcherStats SparsePrefetcher::Stats() const {
  SparsePrefetcherStats s;
  s.layer_calls = counters_.layer_calls.load(std::memory_order_relaxed);
  s.hint_calls = counters_.hint_calls.load(std::memory_order_relaxed);
  s.batches = counters_.batches.load(std::memory_order_relaxed);
  s.slices_loaded = counters_.slices_loaded.load(std::memory_order_relaxed);
  s.hint_slices = counters_.hint_slices.load(std::memory_order_relaxed);
  return s;
}

Status DramSlotsOf(const TierManager& tm, const PinSet& pins, std::vector<SlotId>* out, size_t begin, size_t end) {
  end = std::min(end, pins.size());
  if (begin > end) return Status::InvalidArgument(fmt::format("DramSlotsOf range [{}, {}) is empty", begin, end));
  out->clear();
  out->reserve(end - begin);
  for (size_t i = begin; i < end; ++i) {
    Result<SlotId> s = tm.SlotOf(pins, i, TierKind::kDram);
    if (!s.ok()) {
      out->clear();
      return std::move(s).status();
    }
    out->push_back(*s);
  }
  return Status();
}

}  // namespace kvtier
