// MemoryRegion: an anonymous mmap, unmapped exactly once. Move-only.
#pragma once

#include <cstddef>
#include <memory>

#include "kvtier/status.h"

namespace kvtier {

class MemoryRegion {
 public:
  MemoryRegion() = default;
  // Maps `bytes` (rounded up to the page size) of private anonymous memory, not yet
  // touched. kExhausted when the kernel refuses.
  static Result<MemoryRegion> Map(size_t bytes);

  std::byte* data() const { return static_cast<std::byte*>(ptr_.get()); }
  size_t size() const { return ptr_ ? size_ : 0; }

 private:
  struct Unmap {
    size_t bytes;  // no default member initializer: keeps Unmap default-constructible here
    void operator()(void* p) const noexcept;
  };
  MemoryRegion(void* p, size_t n) : ptr_(p, Unmap{n}), size_(n) {}
  std::unique_ptr<void, Unmap> ptr_;
  size_t size_ = 0;
};

}  // namespace kvtier
