#include "metadata_pool.h"

#include <fmt/format.h>

#include <iterator>
#include <utility>

namespace kvtier {

MetadataPool::MetadataPool(std::string tier_name, MemoryAddress base, uint64_t bytes, uint64_t alignment)
    : name_(std::move(tier_name)), base_(base), capacity_(bytes / alignment * alignment), alignment_(alignment) {
  KVT_CHECK_MSG(alignment != 0 && (alignment & (alignment - 1)) == 0, "metadata pool: alignment is not a power of two");
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

Result<MetadataArena> MetadataPool::Reserve(uint64_t bytes) {
  if (bytes == 0) return Status::InvalidArgument(fmt::format("{}: a metadata arena of 0 bytes", name_));
  if (bytes > capacity_) {
    return Status::Exhausted(fmt::format("{}: metadata arena of {} B exceeds the tier's metadata budget of {} B",
                                         name_, bytes, capacity_));
  }
  const uint64_t need = (bytes + alignment_ - 1) / alignment_ * alignment_;
  std::lock_guard lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const uint64_t offset = it->first, left = it->second - need;
    free_.erase(it);
    if (left > 0) free_.emplace(offset + need, left);
    held_.emplace(offset, need);
    used_ += need;
    return MetadataArena{.address = MemoryAddress{base_.device, base_.ptr + offset}, .bytes = bytes};
  }
  return Status::Exhausted(fmt::format("{}: no room for a metadata arena of {} B ({} of {} B of the metadata budget in use)",
                                       name_, bytes, used_, capacity_));
}

void MetadataPool::Release(const MetadataArena& arena) {
  std::lock_guard lock(mu_);
  const bool inside = arena.address.ptr >= base_.ptr && arena.address.ptr < base_.ptr + capacity_;
  auto it = inside ? held_.find(static_cast<uint64_t>(arena.address.ptr - base_.ptr)) : held_.end();
  KVT_CHECK_MSG(it != held_.end(), fmt::format("{}: released a metadata arena it does not hold", name_));
  uint64_t offset = it->first, size = it->second;
  held_.erase(it);
  used_ -= size;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first == offset + size) {  // merge with the range after
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {  // and the one before
      prev->second += size;
      return;
    }
  }
  free_.emplace(offset, size);
}

uint64_t MetadataPool::used_bytes() const {
  std::lock_guard lock(mu_);
  return used_;
}

void MetadataPool::AddTo(TierUsage* usage) const {
  usage->metadata_bytes = used_bytes();
  usage->metadata_capacity_bytes = capacity_;
}

}  // namespace kvtier
