// StreamCopy: host memcpy with non-temporal (streaming) stores, for scattering blocks into
// DRAM slots that will not be read again by this CPU soon (the CPU-assisted D2H path).
//
// A normal store to a line that is not in cache first reads it (read-for-ownership), so a
// memcpy of N bytes costs 3N bytes of DRAM traffic (read source, read destination, write
// destination); streaming stores write whole lines without reading them: 2N. The stores are
// weakly ordered: they are visible to other threads and to devices only after a fence.
// Copy() ends with that fence (sfence), so a completed call is a completed copy and a caller
// may publish it (signal a Fence) right away.
//
// Paths: kAvx512 (64-byte stores) and kAvx2 (32-byte stores), compiled with per-function
// target attributes and picked at run time with __builtin_cpu_supports; kMemcpy everywhere
// (and on other CPUs). Unaligned heads and tails, and copies under kMinStreamBytes, go
// through memcpy. Thread-safe (stateless).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvtier/status.h"

namespace kvtier {

enum class HostCopyPath : uint8_t {
  kAuto,     // the widest streaming path this CPU supports, memcpy when none
  kMemcpy,   // plain std::memcpy (the baseline)
  kAvx2,     // _mm256_stream_si256
  kAvx512,   // _mm512_stream_si512
};

std::string_view HostCopyPathName(HostCopyPath path);  // "auto", "memcpy", "avx2", "avx512"
Result<HostCopyPath> ParseHostCopyPath(std::string_view name);
bool HostCopyPathSupported(HostCopyPath path);  // on this CPU (kAuto and kMemcpy: always)

class StreamCopier {
 public:
  // kInvalidArgument when this CPU lacks `path`; kAuto resolves to the widest supported path.
  static Result<StreamCopier> For(HostCopyPath path);
  StreamCopier();  // kMemcpy

  HostCopyPath path() const { return path_; }  // resolved, never kAuto
  // Copies `bytes` from `src` to `dst` (any alignment; the ranges must not overlap) and
  // fences the streaming stores before returning.
  void Copy(void* dst, const void* src, size_t bytes) const {
    copy_(dst, src, bytes);
    if (fence_ != nullptr) fence_();
  }
  // The same without the fence, for a loop of copies on one thread that ends with Fence().
  void CopyUnfenced(void* dst, const void* src, size_t bytes) const { copy_(dst, src, bytes); }
  void Fence() const {
    if (fence_ != nullptr) fence_();
  }

  // Copies at or under this size go through memcpy on every path.
  static constexpr size_t kMinStreamBytes = 256;

 private:
  using CopyFn = void (*)(void*, const void*, size_t);
  using FenceFn = void (*)();
  StreamCopier(HostCopyPath path, CopyFn copy, FenceFn fence) : path_(path), copy_(copy), fence_(fence) {}
  HostCopyPath path_;
  CopyFn copy_;
  FenceFn fence_;
};

}  // namespace kvtier
