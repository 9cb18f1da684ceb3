// XXH3-64 built with -mavx2 (CMakeLists.txt); see xxh3_isa.h. Include nothing else here.
#define KVT_XXH3_ISA avx2
#include "xxh3_isa.inc"
