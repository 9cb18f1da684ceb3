// SliceCache: LRU over slots of the HBM slice tier, with step-use, loading and per-request
// sink/recent protection. Nodes are indexed by slot (the tier's slot ids are dense), so the
// LRU list is two int32 links per node and the key map holds slot numbers.
#include "kvtier/slice_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace kvtier {
namespace {

constexpr int32_t kNil = -1;
constexpr uint64_t kNever = UINT64_MAX;

struct SliceKeyHash {
  size_t operator()(const SliceKey& k) const noexcept { return static_cast<size_t>(k.hash64()); }
};

struct Node {
  SliceKey key{};
  RequestId request{};
  uint32_t block_index = 0;
  int32_t prev = kNil;  // towards MRU
  int32_t next = kNil;  // towards LRU
  uint64_t step_used = kNever;  // the step that attends it (not evictable during that step)
  uint64_t call = 0;            // the Acquire that last touched it (not evictable during it)
  uint64_t generation = 0;      // distinguishes a slot's successive occupants
  bool live = false;
  bool loading = false;
  Fence ready{};     // the pending load (while loading)
  Fence last_use{};  // the last step that attended it
};

}  // namespace

struct Acquisition::Loads {
  std::vector<std::pair<uint32_t, uint64_t>> slots;  // (slot, generation) of each miss
  FenceSignal signal;
  std::vector<Fence> others;  // loads of other Acquires this one hit while in flight
};

struct SliceCache::Impl {
  mutable std::mutex mu;
  std::condition_variable idle_cv;
  std::vector<Node> nodes;  // by slot
  std::unordered_map<SliceKey, uint32_t, SliceKeyHash> map;
  std::unordered_map<RequestId, uint32_t> tokens;  // active requests
  int32_t mru = kNil;
  int32_t lru = kNil;
  uint64_t step = 0;
  uint64_t calls = 0;
  uint64_t generations = 0;
  std::vector<uint32_t> used_this_step;
  std::vector<Fence> released_fences;  // last uses of slots given back, possibly pending
  uint32_t capacity = 0;
  uint32_t held = 0;
  uint32_t loads_in_flight = 0;  // Acquisitions whose loads have not completed
  SliceCacheStats stats;

  void Unlink(uint32_t s) {
    Node& n = nodes[s];
    if (n.prev != kNil) nodes[n.prev].next = n.next; else mru = n.next;
    if (n.next != kNil) nodes[n.next].prev = n.prev; else lru = n.prev;
    n.prev = n.next = kNil;
  }
  void PushFront(uint32_t s) {
    Node& n = nodes[s];
    n.prev = kNil;
    n.next = mru;
    if (mru != kNil) nodes[mru].prev = static_cast<int32_t>(s); else lru = static_cast<int32_t>(s);
    mru = static_cast<int32_t>(s);
  }
  void Touch(uint32_t s) {
    if (mru == static_cast<int32_t>(s)) return;
    Unlink(s);
    PushFront(s);
  }
  bool Protected(const Node& n, const SliceCacheOptions& o) const {
    auto it = tokens.find(n.request);
    if (it == tokens.end()) return false;
    if (n.block_index < o.protect_sink_blocks) return true;
    const uint64_t end = (uint64_t{n.block_index} + 1) * o.geometry.block_tokens;
    return o.protect_recent_tokens > 0 && end + o.protect_recent_tokens > it->second;
  }
  bool Evictable(const Node& n, const SliceCacheOptions& o) const {
    return n.live && !n.loading && n.step_used != step && n.call != calls && !Protected(n, o);
  }
  // Forgets slot s (caller releases it to the tier).
  void Forget(uint32_t s) {
    Node& n = nodes[s];
    map.erase(n.key);
    Unlink(s);
    n.live = false;
    n.loading = false;
    n.ready = Fence();
    --held;
  }
  void PruneReleased() {
    std::erase_if(released_fences, [](const Fence& f) { return f.ready(); });
  }
};

Status SliceCacheOptions::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  return Status();
}

Acquisition& Acquisition::operator=(Acquisition&& other) noexcept {
  if (this != &other) {
    if (loads_ && cache_ != nullptr) cache_->Complete(std::move(loads_), Fence::Failed(Status::Cancelled("dropped")));
    slots = std::move(other.slots);
    misses = std::move(other.misses);
    hits = other.hits;
    ready = std::move(other.ready);
    cache_ = other.cache_;
    loads_ = std::move(other.loads_);
  }
  return *this;
}

Acquisition::~Acquisition() {
  if (loads_ && cache_ != nullptr) {
    cache_->Complete(std::move(loads_), Fence::Failed(Status::Cancelled("Acquisition dropped before CompleteLoads")));
  }
}

Result<std::unique_ptr<SliceCache>> SliceCache::Create(const SliceCacheOptions& options, Tier* hbm) {
  KVT_RETURN_IF_ERROR(options.Validate().Annotate("SliceCacheOptions"));
  if (hbm == nullptr) return Status::InvalidArgument("SliceCache needs an HBM tier");
  const TierCaps& caps = hbm->caps();
  if (caps.kind != TierKind::kHbm) {
    return Status::InvalidArgument(fmt::format("SliceCache tier {} is a {} tier, not HBM", hbm->name(), TierName(caps.kind)));
  }
  if (caps.slot_bytes < options.geometry.slice_bytes()) {
    return Status::InvalidArgument(fmt::format("SliceCache tier {} has {} B slots; slices are {} B", hbm->name(),
                                               caps.slot_bytes, options.geometry.slice_bytes()));
  }
  if (options.capacity_slices > caps.slot_count) {
    return Status::InvalidArgument(fmt::format("SliceCacheOptions.capacity_slices {} exceeds the tier's {} slots",
                                               options.capacity_slices, caps.slot_count));
  }
  const uint32_t capacity = options.capacity_slices ? options.capacity_slices : caps.slot_count;
  return std::unique_ptr<SliceCache>(new SliceCache(options, hbm, capacity));
}

SliceCache::SliceCache(const SliceCacheOptions& options, Tier* hbm, uint32_t capacity)
    : options_(options), hbm_(hbm), impl_(std::make_unique<Impl>()) {
  impl_->nodes.resize(hbm->caps().slot_count);
  impl_->capacity = capacity;
  impl_->stats.capacity_slices = capacity;
  impl_->stats.slice_bytes = options.geometry.slice_bytes();
}

SliceCache::~SliceCache() {
  std::unique_lock lock(impl_->mu);
  impl_->idle_cv.wait(lock, [&] { return impl_->loads_in_flight == 0; });
  for (int32_t s = impl_->mru; s != kNil;) {
    Node& n = impl_->nodes[s];
    const int32_t next = n.next;
    const SlotId slot{static_cast<uint32_t>(s)};
    hbm_->Release(std::span(&slot, 1), n.last_use);
    s = next;
  }
}

Result<Acquisition> SliceCache::Acquire(std::span<const SliceRef> refs, SliceUse use) {
  Impl& m = *impl_;
  for (int attempt = 0;; ++attempt) {
    std::unique_lock lock(m.mu);
    ++m.calls;
    Acquisition acq;
    acq.slots.assign(refs.size(), kNoSlot);
    std::vector<Fence> others;
    // Slices missed in this call, by key -> index into `missed_refs` (duplicates share).
    std::unordered_map<SliceKey, uint32_t, SliceKeyHash> new_keys;
    std::vector<uint32_t> missed_refs;    // first ref of each unique miss
    std::vector<uint32_t> miss_of(refs.size(), UINT32_MAX);
    uint32_t hits = 0;
    for (size_t i = 0; i < refs.size(); ++i) {
      const SliceRef& r = refs[i];
      if (auto it = m.map.find(r.key); it != m.map.end()) {
        const uint32_t s = it->second;
        Node& n = m.nodes[s];
        m.Touch(s);
        n.call = m.calls;
        n.request = r.request;
        n.block_index = r.block_index;
        if (use == SliceUse::kStep && n.step_used != m.step) {
          n.step_used = m.step;
          m.used_this_step.push_back(s);
        }
        if (n.loading) others.push_back(n.ready);
        acq.slots[i] = SlotId{s};
        ++hits;
      } else if (auto nk = new_keys.find(r.key); nk != new_keys.end()) {
        miss_of[i] = nk->second;
        ++hits;  // the same slice twice in one call loads once
      } else {
        const auto idx = static_cast<uint32_t>(missed_refs.size());
        new_keys.emplace(r.key, idx);
        missed_refs.push_back(static_cast<uint32_t>(i));
        miss_of[i] = idx;
      }
    }
    const auto need = static_cast<uint32_t>(missed_refs.size());
    std::vector<SlotId> reserved;
    if (need > 0) {
      // Make room: evict LRU victims until the misses fit under the capacity.
      uint32_t free = m.capacity - m.held;
      std::vector<uint32_t> victims;
      for (int32_t s = m.lru; s != kNil && free + victims.size() < need; s = m.nodes[s].prev) {
        if (m.Evictable(m.nodes[s], options_)) victims.push_back(static_cast<uint32_t>(s));
      }
      if (free + victims.size() < need) {
        return Status::Exhausted(fmt::format(
            "slice cache: {} misses need slots but only {} of {} can be freed (the rest are used by this step, "
            "loading or protected)",
            need, free + victims.size(), m.capacity));
      }
      for (uint32_t s : victims) {
        Fence last = m.nodes[s].last_use;
        m.Forget(s);
        const SlotId slot{s};
        hbm_->Release(std::span(&slot, 1), last);
        if (!last.ready()) m.released_fences.push_back(std::move(last));
        ++m.stats.evictions;
      }
      Result<std::vector<SlotId>> r = hbm_->Reserve(need);
      if (!r.ok()) {
        m.PruneReleased();
        if (attempt == 0 && !m.released_fences.empty()) {
          // Slots we gave back wait for their last use: wait (unlocked), then look again.
          std::vector<Fence> wait = m.released_fences;
          ++m.stats.fence_waits;
          lock.unlock();
          (void)Fence::All(wait).Wait();  // a failed use still frees its slot
          continue;
        }
        return std::move(r).status().Annotate("slice cache: reserving slots for misses");
      }
      reserved = std::move(r).value();
    }
    if (use == SliceUse::kStep) {
      m.stats.hits += hits;
      m.stats.misses += need;
    } else {
      m.stats.hint_hits += hits;
      m.stats.hint_misses += need;
    }
    acq.hits = hits;
    acq.cache_ = this;
    Fence own;
    if (need > 0) {
      auto loads = std::make_shared<Acquisition::Loads>();
      auto [fence, signal] = Fence::Make();
      own = fence;
      loads->signal = std::move(signal);
      for (uint32_t k = 0; k < need; ++k) {
        const uint32_t s = reserved[k].value();
        const SliceRef& r = refs[missed_refs[k]];
        Node& n = m.nodes[s];
        n.key = r.key;
        n.request = r.request;
        n.block_index = r.block_index;
        n.live = true;
        n.loading = true;
        n.ready = own;
        n.last_use = Fence();
        n.call = m.calls;
        n.generation = ++m.generations;
        n.step_used = kNever;
        if (use == SliceUse::kStep) {
          n.step_used = m.step;
          m.used_this_step.push_back(s);
        }
        m.PushFront(s);
        m.map.emplace(r.key, s);
        ++m.held;
        loads->slots.emplace_back(s, n.generation);
      }
      m.stats.peak_slices = std::max<uint64_t>(m.stats.peak_slices, m.held);
      ++m.loads_in_flight;
      acq.loads_ = std::move(loads);
    }
    for (size_t i = 0; i < refs.size(); ++i) {
      if (miss_of[i] != UINT32_MAX) acq.slots[i] = reserved[miss_of[i]];
    }
    acq.misses = std::move(missed_refs);
    if (!others.empty() || need > 0) {
      others.push_back(own);
      acq.ready = Fence::All(others);
    }
    return acq;
  }
}

void SliceCache::CompleteLoads(Acquisition& acq, Fence loaded) {
  KVT_CHECK_MSG(acq.cache_ == this || acq.loads_ == nullptr, "CompleteLoads with another cache's Acquisition");
  if (acq.loads_) Complete(std::move(acq.loads_), std::move(loaded));
}

void SliceCache::Complete(std::shared_ptr<Acquisition::Loads> loads, Fence loaded) {
  loaded.OnReady([this, loads = std::move(loads)](const Status& status) {
    std::vector<SlotId> failed;
    {
      std::lock_guard lock(impl_->mu);
      Impl& m = *impl_;
      for (auto [s, gen] : loads->slots) {
        Node& n = m.nodes[s];
        KVT_CHECK(n.live && n.generation == gen && n.loading);  // loading slices are never evicted
        if (status.ok()) {
          n.loading = false;
          n.ready = Fence();
          m.stats.loaded_bytes += options_.geometry.slice_bytes();
        } else {
          m.Forget(s);
          failed.push_back(SlotId{s});
          ++m.stats.failed_loads;
        }
      }
    }
    if (!failed.empty()) hbm_->Release(failed, Fence());  // the failed copy no longer touches them
    loads->signal.Signal(status.ok() ? Status() : Status(status).Annotate("slice load"));
    // Last: the destructor may run as soon as loads_in_flight reaches 0.
    std::lock_guard lock(impl_->mu);
    if (--impl_->loads_in_flight == 0) impl_->idle_cv.notify_all();
  });
}

void SliceCache::EndStep(Fence last_use) {
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  for (uint32_t s : m.used_this_step) {
    Node& n = m.nodes[s];
    if (n.live && n.step_used == m.step) n.last_use = last_use;
  }
  m.used_this_step.clear();
  ++m.step;
  m.PruneReleased();
}

void SliceCache::SetRequestTokens(RequestId request, uint32_t tokens) {
  std::lock_guard lock(impl_->mu);
  impl_->tokens[request] = tokens;
}

void SliceCache::EndRequest(RequestId request) {
  std::lock_guard lock(impl_->mu);
  impl_->tokens.erase(request);
}

bool SliceCache::Contains(const SliceKey& key) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->map.find(key);
  return it != impl_->map.end() && !impl_->nodes[it->second].loading;
}

SliceCacheStats SliceCache::Stats() const {
  const uint64_t metadata = hbm_->usage().metadata_bytes;  // a tier call: outside the lock
  std::lock_guard lock(impl_->mu);
  SliceCacheStats s = impl_->stats;
  s.resident_slices = impl_->held;
  s.metadata_bytes = metadata;
  return s;
}

}  // namespace kvtier
