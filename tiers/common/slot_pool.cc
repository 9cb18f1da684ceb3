#include "slot_pool.h"

#include <fmt/format.h>

#include <map>
#include <mutex>
#include <set>

namespace kvtier {

// Free slots are kept as extents (runs of adjacent slots), so a reservation of n slots comes
// back as one ascending run whenever a free extent of at least n exists: the GPU movers hand
// runs of adjacent DRAM slots of at least GpuMoverOptions::engine_run_bytes to the copy
// engines, and a batch whose slots were reserved together is such a run (docs/architecture.md).
struct SlotPool::State {
  enum Mark : uint8_t { kFree = 0, kReserved = 1, kFenced = 2 };
  mutable std::mutex mu;
  std::map<uint32_t, uint32_t> extents;             // start -> length, disjoint, never adjacent
  std::set<std::pair<uint32_t, uint32_t>> by_size;  // (length, start) of every extent
  std::vector<Mark> mark;
  uint32_t free = 0;
  uint32_t fenced = 0;

  void AddExtent(uint32_t start, uint32_t length) {
    extents.emplace(start, length);
    by_size.emplace(length, start);
  }
  void RemoveExtent(std::map<uint32_t, uint32_t>::iterator it) {
    by_size.erase({it->second, it->first});
    extents.erase(it);
  }
  // Takes `count` slots from the front of the extent at `it` (count <= its length).
  void TakeFront(std::map<uint32_t, uint32_t>::iterator it, uint32_t count, std::vector<SlotId>* out) {
    const auto [start, length] = *it;
    RemoveExtent(it);
    for (uint32_t s = start; s < start + count; ++s) {
      out->push_back(SlotId{s});
      mark[s] = kReserved;
    }
    if (count < length) AddExtent(start + count, length - count);
    free -= count;
  }
  // Returns one slot to the free extents, merging it with its neighbours.
  void Free(uint32_t s) {
    mark[s] = kFree;
    ++free;
    uint32_t start = s, length = 1;
    auto next = extents.lower_bound(s);
    if (next != extents.end() && next->first == s + 1) {
      length += next->second;
      auto gone = next++;
      RemoveExtent(gone);
    }
    if (next != extents.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == s) {
        start = prev->first;
        length += prev->second;
        RemoveExtent(prev);
      }
    }
    AddExtent(start, length);
  }
};

SlotPool::SlotPool(uint32_t slot_count) : state_(std::make_shared<State>()) {
  state_->mark.assign(slot_count, State::kFree);
  state_->free = slot_count;
  if (slot_count > 0) state_->AddExtent(0, slot_count);
}

uint32_t SlotPool::slot_count() const { return static_cast<uint32_t>(state_->mark.size()); }

Result<std::vector<SlotId>> SlotPool::Reserve(uint32_t count, std::string_view tier_name) {
  std::lock_guard lock(state_->mu);
  State& st = *state_;
  if (count > st.free) {
    return Status::Exhausted(fmt::format("{}: {} slots wanted, {} free of {} ({} waiting for a fence)", tier_name,
                                         count, st.free, st.mark.size(), st.fenced));
  }
  std::vector<SlotId> out;
  out.reserve(count);
  if (count == 0) return out;
  // Best fit: the smallest extent that holds them all (lowest start among equals), so single
  // slots fill holes and long extents stay long. Else the longest extents, longest first.
  auto fit = st.by_size.lower_bound({count, 0});
  if (fit != st.by_size.end()) {
    st.TakeFront(st.extents.find(fit->second), count, &out);
    return out;
  }
  while (out.size() < count) {
    const auto longest = std::prev(st.by_size.end());
    const uint32_t take = std::min<uint32_t>(longest->first, count - static_cast<uint32_t>(out.size()));
    st.TakeFront(st.extents.find(longest->second), take, &out);
  }
  return out;
}

void SlotPool::Release(std::span<const SlotId> slots, Fence last_use) {
  if (slots.empty()) return;
  const bool now = last_use.ready();
  std::vector<SlotId> pending;
  {
    std::lock_guard lock(state_->mu);
    for (SlotId s : slots) {
      KVT_CHECK_MSG(s.value() < state_->mark.size(), fmt::format("release of slot {} out of range", s.value()));
      KVT_CHECK_MSG(state_->mark[s.value()] == State::kReserved,
                    fmt::format("release of slot {} that is not reserved", s.value()));
      if (now) {
        state_->Free(s.value());
      } else {
        state_->mark[s.value()] = State::kFenced;
        pending.push_back(s);
      }
    }
    state_->fenced += static_cast<uint32_t>(pending.size());
  }
  if (pending.empty()) return;
  // Outside the lock: the fence may already have signaled and run this inline.
  last_use.OnReady([state = state_, pending = std::move(pending)](const Status&) {
    std::lock_guard lock(state->mu);
    for (SlotId s : pending) state->Free(s.value());
    state->fenced -= static_cast<uint32_t>(pending.size());
  });
}

bool SlotPool::IsReserved(SlotId slot) const {
  std::lock_guard lock(state_->mu);
  return slot.value() < state_->mark.size() && state_->mark[slot.value()] == State::kReserved;
}

TierUsage SlotPool::usage() const {
  std::lock_guard lock(state_->mu);
  TierUsage u;
  u.free_slots = state_->free;
  u.fenced_slots = state_->fenced;
  u.reserved_slots = static_cast<uint32_t>(state_->mark.size()) - u.free_slots - u.fenced_slots;
  return u;
}

}  // namespace kvtier
