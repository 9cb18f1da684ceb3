// XXH3-64 with its vector path chosen at run time. Debian's libxxhash is built for SSE2 only;
// the slot checksum (slot_format.h) hashes every payload written and read, so on the mover's
// single I/O thread it was a third of the CPU. Here XXH3 is compiled into kvtier once per
// instruction set (xxh3_isa.h) and the widest one the CPU supports is picked once, at first
// use. The hash value is defined independently of the vector path: every path returns
// exactly XXH3_64bits of the same bytes, so the on-disk format does not depend on it.
//
// PreferXxh3Path picks a path for measurements before the first hash (the `kvtier` CLI maps
// KVTIER_XXH3=baseline|avx2|avx512 onto it; the library reads no environment).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvtier::nvme {

enum class Xxh3Path : uint8_t { kBaseline, kAvx2, kAvx512 };
inline constexpr Xxh3Path kAllXxh3Paths[] = {Xxh3Path::kBaseline, Xxh3Path::kAvx2, Xxh3Path::kAvx512};

// Compiled into this build and supported by this CPU and OS.
bool Xxh3PathSupported(Xxh3Path path);
// The path every Xxh3_64* call below uses (chosen once, at the first call).
Xxh3Path ActiveXxh3Path();
// Asks for `path` instead of the widest one. False (and no effect) when this build or CPU
// lacks it or the path was already chosen. Thread-safe.
bool PreferXxh3Path(Xxh3Path path);
// "baseline" / "avx2" / "avx512" → the path; false for another name.
bool ParseXxh3Path(std::string_view name, Xxh3Path* path);
// What xxhash.h compiled that path to: "sse2", "avx2", "avx512", "neon", "scalar", ...
// (the baseline's name depends on the target); "none" when not compiled in.
std::string_view Xxh3PathName(Xxh3Path path);

// XXH3-64, seed 0, of data[0, len).
uint64_t Xxh3_64(const void* data, size_t len);
// XXH3-64, seed 0, of the concatenation a[0, a_len) || b[0, b_len).
uint64_t Xxh3_64Concat(const void* a, size_t a_len, const void* b, size_t b_len);

// The same on a given path (tests, benchmarks): the path must be supported.
uint64_t Xxh3_64On(Xxh3Path path, const void* data, size_t len);
uint64_t Xxh3_64ConcatOn(Xxh3Path path, const void* a, size_t a_len, const void* b, size_t b_len);

}  // namespace kvtier::nvme
