// PoolMapping: the DRAM pool's anonymous mapping, in one of three page backings, unmapped
// exactly once (move-only). HugePageBytes() says how much of a range is really backed by
// huge pages, from /proc/self/smaps.
//
// Why huge pages: the gather/scatter kernels and the copy engines translate every host
// address they touch; with 4 KiB pages a 4 GiB pool is a million translations, with 2 MiB
// pages two thousand. The backing is a measured choice (kvtier bench transfer --huge-pages),
// not an assumption.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "kvtier/status.h"

namespace kvtier {

enum class HugePages : uint8_t {
  kOff,          // MADV_NOHUGEPAGE: 4 KiB pages only (the baseline for measurements)
  kTransparent,  // 2 MiB-aligned mapping + MADV_HUGEPAGE before first touch: transparent huge
                 // pages wherever the kernel has them (THP "always" or "madvise"); advisory
  kHugetlb,      // MAP_HUGETLB | MAP_POPULATE from the hugetlbfs pool (vm.nr_hugepages)
};
std::string_view HugePagesName(HugePages h);  // "off", "transparent", "hugetlb"
Result<HugePages> ParseHugePages(std::string_view name);  // also "on" = transparent

class PoolMapping {
 public:
  static constexpr size_t kHugePageBytes = 2u << 20;

  PoolMapping() = default;
  // Private anonymous memory of at least `bytes` (rounded up to 4 KiB; to 2 MiB for kHugetlb),
  // not yet touched except for kHugetlb (populated by the kernel). kTransparent and kOff
  // start on a 2 MiB boundary. kHugetlb fails with kExhausted when the hugetlbfs pool has too
  // few free pages: the caller decides about falling back.
  static Result<PoolMapping> Map(size_t bytes, HugePages backing);

  std::byte* data() const { return static_cast<std::byte*>(ptr_.get()); }
  size_t size() const { return ptr_ ? size_ : 0; }
  HugePages backing() const { return backing_; }

 private:
  struct Unmap {
    size_t bytes;
    void operator()(void* p) const noexcept;
  };
  PoolMapping(void* p, size_t n, HugePages b) : ptr_(p, Unmap{n}), size_(n), backing_(b) {}
  std::unique_ptr<void, Unmap> ptr_;
  size_t size_ = 0;
  HugePages backing_ = HugePages::kOff;
};

// Bytes of [ptr, ptr + bytes) that sit in huge pages (AnonHugePages + hugetlb pages of the
// mappings that overlap the range, from /proc/self/smaps; a mapping that only partly
// overlaps counts at most the overlap). kUnavailable when smaps cannot be read.
Result<uint64_t> HugePageBytesOf(const void* ptr, size_t bytes);

}  // namespace kvtier
