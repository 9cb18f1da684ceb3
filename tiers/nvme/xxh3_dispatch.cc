#include "xxh3_dispatch.h"

#include <atomic>

#include "kvtier/status.h"
#include "xxh3_isa.h"

namespace kvtier::nvme {

namespace {

struct Impl {
  uint64_t (*one)(const void*, size_t) = nullptr;
  uint64_t (*concat)(const void*, size_t, const void*, size_t) = nullptr;
  int (*vector)() = nullptr;
};

Impl Compiled(Xxh3Path path) {
  switch (path) {
    case Xxh3Path::kBaseline:
      return {kvtier_xxh3_64_baseline, kvtier_xxh3_64_concat_baseline, kvtier_xxh3_vector_baseline};
#if defined(KVTIER_XXH3_X86_ISAS)
    case Xxh3Path::kAvx2:
      return {kvtier_xxh3_64_avx2, kvtier_xxh3_64_concat_avx2, kvtier_xxh3_vector_avx2};
    case Xxh3Path::kAvx512:
      return {kvtier_xxh3_64_avx512, kvtier_xxh3_64_concat_avx512, kvtier_xxh3_vector_avx512};
#endif
    default:
      return {};
  }
}

bool CpuHas(Xxh3Path path) {
#if defined(KVTIER_XXH3_X86_ISAS)
  __builtin_cpu_init();
  // libgcc's answers include the OS check (XGETBV: YMM / ZMM state enabled).
  switch (path) {
    case Xxh3Path::kBaseline: return true;
    case Xxh3Path::kAvx2: return __builtin_cpu_supports("avx2") != 0;
    case Xxh3Path::kAvx512: return __builtin_cpu_supports("avx512f") != 0;
  }
  return false;
#else
  return path == Xxh3Path::kBaseline;
#endif
}

// -1: no preference; otherwise the Xxh3Path asked for. `chosen` turns true at the first
// ActiveXxh3Path, after which a preference is refused (the hash must not change under a
// running tier).
std::atomic<int> preferred{-1};
std::atomic<bool> chosen{false};

Xxh3Path Choose() {
  chosen.store(true, std::memory_order_seq_cst);
  if (const int want = preferred.load(std::memory_order_seq_cst); want >= 0) return static_cast<Xxh3Path>(want);
  // Widest first. (AVX-512 measured against AVX2 on this project's VM: docs/benchmarks.md.)
  for (Xxh3Path p : {Xxh3Path::kAvx512, Xxh3Path::kAvx2}) {
    if (Xxh3PathSupported(p)) return p;
  }
  return Xxh3Path::kBaseline;
}

const Impl& Active() {
  static const Impl impl = Compiled(ActiveXxh3Path());
  return impl;
}

const Impl& Checked(Xxh3Path path) {
  KVT_CHECK_MSG(Xxh3PathSupported(path), "XXH3 path not supported here");
  static const Impl impls[] = {Compiled(Xxh3Path::kBaseline), Compiled(Xxh3Path::kAvx2), Compiled(Xxh3Path::kAvx512)};
  return impls[static_cast<int>(path)];
}

}  // namespace

bool Xxh3PathSupported(Xxh3Path path) { return Compiled(path).one != nullptr && CpuHas(path); }

bool PreferXxh3Path(Xxh3Path path) {
  if (!Xxh3PathSupported(path) || chosen.load(std::memory_order_seq_cst)) return false;
  preferred.store(static_cast<int>(path), std::memory_order_seq_cst);
  return !chosen.load(std::memory_order_seq_cst);
}

bool ParseXxh3Path(std::string_view name, Xxh3Path* path) {
  static constexpr std::string_view kNames[] = {"baseline", "avx2", "avx512"};
  for (Xxh3Path p : kAllXxh3Paths) {
    if (name == kNames[static_cast<int>(p)]) {
      *path = p;
      return true;
    }
  }
  return false;
}

Xxh3Path ActiveXxh3Path() {
  static const Xxh3Path path = Choose();
  return path;
}

std::string_view Xxh3PathName(Xxh3Path path) {
  const Impl impl = Compiled(path);
  if (impl.vector == nullptr) return "none";
  switch (impl.vector()) {  // xxhash.h's XXH_VECTOR values
    case 0: return "scalar";
    case 1: return "sse2";
    case 2: return "avx2";
    case 3: return "avx512";
    case 4: return "neon";
    case 5: return "vsx";
    default: return "other";
  }
}

uint64_t Xxh3_64(const void* data, size_t len) { return Active().one(data, len); }
uint64_t Xxh3_64Concat(const void* a, size_t a_len, const void* b, size_t b_len) {
  return Active().concat(a, a_len, b, b_len);
}
uint64_t Xxh3_64On(Xxh3Path path, const void* data, size_t len) { return Checked(path).one(data, len); }
uint64_t Xxh3_64ConcatOn(Xxh3Path path, const void* a, size_t a_len, const void* b, size_t b_len) {
  return Checked(path).concat(a, a_len, b, b_len);
}

}  // namespace kvtier::nvme
