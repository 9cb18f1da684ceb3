// XXH3-64 built with the target's default flags (SSE2 on x86-64); see xxh3_isa.h. Include nothing else here.
#define KVT_XXH3_ISA baseline
#include "xxh3_isa.inc"
