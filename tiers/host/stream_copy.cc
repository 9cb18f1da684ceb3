#include "stream_copy.h"

#include <fmt/format.h>
#include <immintrin.h>

#include <cstring>

namespace kvtier {
namespace {

void CopyMemcpy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

// Bytes up to the next multiple of `align` at `p` (0 when aligned).
inline size_t HeadBytes(const void* p, size_t align) {
  return (align - (reinterpret_cast<uintptr_t>(p) & (align - 1))) & (align - 1);
}

// Both vector paths align the destination to a whole cache line with memcpy first, so no line
// gets both normal and streaming stores (correct either way, but slower), then stream whole
// vectors, four per iteration, then memcpy the tail. Loads are unaligned: the source is
// usually aligned (staging, slots), and an unaligned load of aligned data costs nothing.
__attribute__((target("avx2"))) void CopyAvx2(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  if (bytes <= StreamCopier::kMinStreamBytes) {
    std::memcpy(d, s, bytes);
    return;
  }
  const size_t head = HeadBytes(d, 64);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= 128; bytes -= 128, d += 128, s += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 64));
    const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 96), e);
  }
  for (; bytes >= 32; bytes -= 32, d += 32, s += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  }
  std::memcpy(d, s, bytes);
}

__attribute__((target("avx512f"))) void CopyAvx512(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  if (bytes <= StreamCopier::kMinStreamBytes) {
    std::memcpy(d, s, bytes);
    return;
  }
  const size_t head = HeadBytes(d, 64);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= 256; bytes -= 256, d += 256, s += 256) {
    const __m512i a = _mm512_loadu_si512(s);
    const __m512i b = _mm512_loadu_si512(s + 64);
    const __m512i c = _mm512_loadu_si512(s + 128);
    const __m512i e = _mm512_loadu_si512(s + 192);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), a);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + 64), b);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + 128), c);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + 192), e);
  }
  for (; bytes >= 64; bytes -= 64, d += 64, s += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
  }
  std::memcpy(d, s, bytes);
}

// Orders the streaming stores before anything this thread does next (publishing the copy).
void StoreFence() { _mm_sfence(); }

}  // namespace

std::string_view HostCopyPathName(HostCopyPath path) {
  switch (path) {
    case HostCopyPath::kAuto: return "auto";
    case HostCopyPath::kMemcpy: return "memcpy";
    case HostCopyPath::kAvx2: return "avx2";
    case HostCopyPath::kAvx512: return "avx512";
  }
  return "?";
}

Result<HostCopyPath> ParseHostCopyPath(std::string_view name) {
  for (HostCopyPath p : {HostCopyPath::kAuto, HostCopyPath::kMemcpy, HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
    if (name == HostCopyPathName(p)) return p;
  }
  return Status::InvalidArgument(fmt::format("host copy path '{}' (expected auto, memcpy, avx2 or avx512)", name));
}

bool HostCopyPathSupported(HostCopyPath path) {
  switch (path) {
    case HostCopyPath::kAuto:
    case HostCopyPath::kMemcpy: return true;
    case HostCopyPath::kAvx2: return __builtin_cpu_supports("avx2");
    case HostCopyPath::kAvx512: return __builtin_cpu_supports("avx512f");
  }
  return false;
}

StreamCopier::StreamCopier() : path_(HostCopyPath::kMemcpy), copy_(CopyMemcpy), fence_(nullptr) {}

Result<StreamCopier> StreamCopier::For(HostCopyPath path) {
  if (path == HostCopyPath::kAuto) {
    path = HostCopyPathSupported(HostCopyPath::kAvx512) ? HostCopyPath::kAvx512
           : HostCopyPathSupported(HostCopyPath::kAvx2) ? HostCopyPath::kAvx2
                                                        : HostCopyPath::kMemcpy;
  }
  if (!HostCopyPathSupported(path)) {
    return Status::InvalidArgument(fmt::format("host copy path {}: this CPU does not support it", HostCopyPathName(path)));
  }
  switch (path) {
    case HostCopyPath::kAvx2: return StreamCopier(path, CopyAvx2, StoreFence);
    case HostCopyPath::kAvx512: return StreamCopier(path, CopyAvx512, StoreFence);
    default: return StreamCopier();
  }
}

}  // namespace kvtier
