// Strong types shared by every kvtier module. Raw integers never cross a module API.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace kvtier {

// A distinct integer type per meaning: SlotId and DeviceId do not convert into each other.
template <class Tag, class Rep>
class StrongInt {
 public:
  using rep_type = Rep;
  constexpr StrongInt() = default;
  constexpr explicit StrongInt(Rep v) : v_(v) {}
  constexpr Rep value() const { return v_; }
  friend constexpr auto operator<=>(StrongInt, StrongInt) = default;

 private:
  Rep v_{};
};

struct SlotIdTag {};
// A tier's slot index, dense from 0 to caps().slot_count - 1.
using SlotId = StrongInt<SlotIdTag, uint32_t>;
inline constexpr SlotId kNoSlot{UINT32_MAX};

struct DeviceIdTag {};
// A CUDA device ordinal; kHostDevice for host memory.
using DeviceId = StrongInt<DeviceIdTag, int32_t>;
inline constexpr DeviceId kHostDevice{-1};

struct LayerTag {};
using LayerId = StrongInt<LayerTag, uint32_t>;

// A byte count. Arithmetic is explicit through value().
struct BytesTag {};
using Bytes = StrongInt<BytesTag, uint64_t>;
constexpr Bytes KiB(uint64_t n) { return Bytes{n << 10}; }
constexpr Bytes MiB(uint64_t n) { return Bytes{n << 20}; }
constexpr Bytes GiB(uint64_t n) { return Bytes{n << 30}; }

// Nanoseconds on a Clock (monotonic; the epoch is the clock's own).
struct TickTag {};
using Tick = StrongInt<TickTag, uint64_t>;

// The three tiers, fastest first. The numeric order is the onboard direction.
enum class TierKind : uint8_t { kHbm = 0, kDram = 1, kNvme = 2 };
inline constexpr size_t kTierCount = 3;
inline constexpr std::array<TierKind, kTierCount> kAllTiers = {TierKind::kHbm, TierKind::kDram,
                                                                TierKind::kNvme};
constexpr size_t TierIndex(TierKind t) { return static_cast<size_t>(t); }
std::string_view TierName(TierKind t);  // "hbm", "dram", "nvme"

// A set of tiers.
class TierMask {
 public:
  constexpr TierMask() = default;
  static constexpr TierMask All() { return TierMask(0b111); }
  static constexpr TierMask Of(TierKind t) { return TierMask(uint8_t(1u << TierIndex(t))); }
  constexpr TierMask With(TierKind t) const { return TierMask(uint8_t(bits_ | (1u << TierIndex(t)))); }
  constexpr bool Has(TierKind t) const { return (bits_ >> TierIndex(t)) & 1u; }
  constexpr bool empty() const { return bits_ == 0; }

 private:
  constexpr explicit TierMask(uint8_t bits) : bits_(bits) {}
  uint8_t bits_ = 0;
};

}  // namespace kvtier

template <class Tag, class Rep>
struct std::hash<kvtier::StrongInt<Tag, Rep>> {
  size_t operator()(kvtier::StrongInt<Tag, Rep> v) const noexcept { return std::hash<Rep>{}(v.value()); }
};
