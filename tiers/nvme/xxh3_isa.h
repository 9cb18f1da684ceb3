// Per-ISA builds of XXH3-64 (xxh3_dispatch.h is the interface; this header is private to it).
//
// xxh3_isa.inc is compiled, as C, once per instruction set (xxh3_isa_baseline.c with the
// target's default flags, xxh3_isa_avx2.c with -mavx2, xxh3_isa_avx512.c with -mavx512f),
// each with XXH_INLINE_ALL so that xxhash.h's vector path follows that file's flags and every
// xxHash function is static to it. Only these functions leave those files, and they include
// nothing but C headers: no C++ inline function or template instance (which the linker could
// merge with a baseline copy) is ever compiled with AVX flags. The dispatcher calls an AVX function only
// after __builtin_cpu_supports says the CPU (and OS) have it.
#pragma once

#include <stddef.h>  // C headers only (see above)
#include <stdint.h>

#define KVT_XXH3_DECLARE(isa)                                                                         \
  uint64_t kvtier_xxh3_64_##isa(const void* data, size_t len);                                        \
  uint64_t kvtier_xxh3_64_concat_##isa(const void* a, size_t a_len, const void* b, size_t b_len);     \
  int kvtier_xxh3_vector_##isa(void);

#ifdef __cplusplus
extern "C" {
#endif
KVT_XXH3_DECLARE(baseline)
#if defined(KVTIER_XXH3_X86_ISAS)
KVT_XXH3_DECLARE(avx2)
KVT_XXH3_DECLARE(avx512)
#endif
#ifdef __cplusplus
}
#endif
