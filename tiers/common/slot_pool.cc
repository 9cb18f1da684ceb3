#include "slot_pool.h"

#include <fmt/format.h>

#include <mutex>

namespace kvtier {

struct SlotPool::State {
  enum Mark : uint8_t { kFree = 0, kReserved = 1, kFenced = 2 };
  mutable std::mutex mu;
  std::vector<SlotId> free;  // LIFO: a recently freed slot is the warmest
  std::vector<Mark> mark;
  uint32_t fenced = 0;
};

SlotPool::SlotPool(uint32_t slot_count) : state_(std::make_shared<State>()) {
  state_->free.reserve(slot_count);
  for (uint32_t i = slot_count; i > 0; --i) state_->free.push_back(SlotId{i - 1});
  state_->mark.assign(slot_count, State::kFree);
}

uint32_t SlotPool::slot_count() const { return static_cast<uint32_t>(state_->mark.size()); }

Result<std::vector<SlotId>> SlotPool::Reserve(uint32_t count, std::string_view tier_name) {
  std::lock_guard lock(state_->mu);
  if (count > state_->free.size()) {
    return Status::Exhausted(fmt::format("{}: {} slots wanted, {} free of {} ({} waiting for a fence)", tier_name,
                                         count, state_->free.size(), state_->mark.size(), state_->fenced));
  }
  std::vector<SlotId> out(state_->free.end() - count, state_->free.end());
  state_->free.resize(state_->free.size() - count);
  for (SlotId s : out) state_->mark[s.value()] = State::kReserved;
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
        state_->mark[s.value()] = State::kFree;
        state_->free.push_back(s);
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
    for (SlotId s : pending) {
      state->mark[s.value()] = State::kFree;
      state->free.push_back(s);
    }
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
  u.free_slots = static_cast<uint32_t>(state_->free.size());
  u.fenced_slots = state_->fenced;
  u.reserved_slots = static_cast<uint32_t>(state_->mark.size()) - u.free_slots - u.fenced_slots;
  return u;
}

}  // namespace kvtier
