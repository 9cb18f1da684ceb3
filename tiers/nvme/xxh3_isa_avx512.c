// XXH3-64 built with -mavx512f (CMakeLists.txt); see xxh3_isa.h. Include nothing else here.
#define KVT_XXH3_ISA avx512
#include "xxh3_isa.inc"
