// Round 8: the pipelined streamed kernel (plan.pipeline_stages > 0) and its selection by
// shape. Same lane layout, online softmax and merge as the streamed kernel
// (sparse_attention_streamed.cu); K/V reach shared memory by cp.async instead of registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "sparse_attention.cuh"
#include "sparse_attention_streamed_internal.cuh"

namespace kvtier::kernels::attention_internal {
namespace {

// Why: the register kernel (sparse_attention_streamed.cu) keeps one warp tile of K/V loads
// in flight per warp (4 KiB) at ~160 registers (3 CTAs = 12 warps per SM), so each warp
// waits a DRAM round trip per tile: 1.9 TB/s at b8/32K sparse, 0.69× the copy for dense
// b1. Here the loads take no
// registers: the CTA copies its piece's tokens to shared memory with cp.async in stages of
// kAttnStageTokens<kD> tokens (K then V, 16 KiB), kAttnPipeStages buffers, so 3 stages
// (48 KiB) are in flight per CTA while its warps compute the 4th — ~144 KiB per SM. The math
// is the register kernel's tile body (the same lane layout, per-row-group online softmax,
// fixed merge order), reading K and V from shared memory: each warp one tile of 4 loads
// (8 tokens at d = 128) per stage. Masked tokens are never copied.
constexpr int kAttnPipeStages = 4;
template <int kD>
constexpr int kAttnStageTokens = kWarps * (32 / (kD / 8)) * 4;  // 32 at d = 128, 64 at d = 64
template <int kD>
constexpr size_t kAttnStageBytes = size_t{kAttnStageTokens<kD>} * kD * sizeof(uint16_t) * 2;  // K, V: 16 KiB

__device__ __forceinline__ void AttnCpAsync16(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void AttnCpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void AttnCpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    SparseAttentionPipelinedKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift,
                                   float* __restrict__ partial, float* __restrict__ lse,
                                   uint32_t* __restrict__ counters) {
  constexpr int kL = kD / 8;      // lanes per token row (one 16-byte vector each)
  constexpr int kR = 32 / kL;     // token rows per warp instruction
  constexpr int kT = 4;           // instructions per warp tile, for K and for V
  constexpr int kTile = kR * kT;  // tokens per warp tile; kWarps tiles per stage
  constexpr int kStageTok = kAttnStageTokens<kD>;
  constexpr size_t kHalfBytes = size_t{kStageTok} * kD * sizeof(uint16_t);  // K (then V) of a stage
  constexpr int kChunks = 2 * kStageTok * kL;  // 16-byte copies per stage
  static_assert(kChunks % kThreads == 0, "whole copy rounds");
  static_assert(size_t{kWarps} * kHeads * kD * 4 + kMergeStage * 4 <= kAttnPipeStages * kAttnStageBytes<kD>,
                "the epilogue's buffers fit the drained stages");
  __shared__ uint32_t slots_s[kSparseAttentionMaxChunkPages];
  __shared__ float merge_m[kWarps][kHeads], merge_l[kWarps][kHeads];
  __shared__ bool last_s;
  extern __shared__ uint4 stage_s[];  // [kAttnPipeStages][K tokens | V tokens]
  char* stages = reinterpret_cast<char*>(stage_s);
  cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue

  const SparseAttentionShape& s = a.shape;
  const uint32_t chunks = s.q_heads / s.kv_heads / kHeads;
  const uint32_t row = blockIdx.y, piece = blockIdx.x;
  const uint32_t request = row / (s.kv_heads * chunks);
  const uint32_t kv_head = row / chunks % s.kv_heads;
  const uint32_t head0 = kv_head * (s.q_heads / s.kv_heads) + row % chunks * kHeads;
  const uint32_t page_row = request * s.kv_heads + kv_head;
  const uint32_t begin = a.page_offsets[page_row], end = a.page_offsets[page_row + 1];
  const uint32_t n = end - begin;
  const uint32_t pieces = (n + chunk_pages - 1) / chunk_pages;
  const int tid = static_cast<int>(threadIdx.x);
  const size_t out_base = (size_t{request} * s.q_heads + head0) * kD;
  if (n == 0 || pieces > gridDim.x) {
    // No page: zeros. More pages than the plan allows: NaN, so misuse cannot pass for a result.
    if (piece == 0) {
      const float fill = n == 0 ? 0.0f : __int_as_float(0x7fc00000);
      for (int i = tid; i < kHeads * kD; i += kThreads) WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, fill);
    }
    return;
  }
  if (piece >= pieces) return;

  const uint32_t p0 = begin + piece * chunk_pages;
  const uint32_t p1 = min(p0 + chunk_pages, end);
  const uint32_t bt = 1u << block_shift;
  const uint32_t last = min(a.last_page_tokens[page_row], bt);
  const uint32_t valid = (p1 - p0) * bt - (p1 == end ? bt - last : 0u);
  for (uint32_t i = tid; i < p1 - p0; i += kThreads) slots_s[i] = a.page_slots[p0 + i];

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  {
    const float qscale = kLog2e * rsqrtf(static_cast<float>(kD));
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const uint4 v = *reinterpret_cast<const uint4*>(a.queries + out_base + static_cast<size_t>(g) * kD + c * 8);
      Unpack<kType>(v, q[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[g][j] *= qscale;
    }
  }
  __syncthreads();  // slots_s

  const char* arena = static_cast<const char*>(a.arena);
  const size_t v_offset = size_t{bt} * kD * sizeof(uint16_t);
  const uint32_t n_stages = (valid + kStageTok - 1) / kStageTok;
  // Stage st into buffer st % kAttnPipeStages: copy j of the stage is (K or V, token, vector);
  // one commit group per call from every thread (empty past the last stage).
  auto issue = [&](uint32_t st) {
    if (st < n_stages) {
      char* buf = stages + (st % kAttnPipeStages) * kAttnStageBytes<kD>;
#pragma unroll
      for (int r = 0; r < kChunks / kThreads; ++r) {
        const int j = r * kThreads + tid;
        const int kv = j / (kStageTok * kL), tok = j / kL % kStageTok, vec = j % kL;
        const uint32_t f = st * kStageTok + tok;
        if (f < valid) {
          const char* src = arena + size_t{slots_s[f >> block_shift]} * s.slot_bytes + (kv != 0 ? v_offset : 0) +
                            static_cast<size_t>(f & (bt - 1)) * kD * sizeof(uint16_t) + vec * 16;
          AttnCpAsync16(buf + kv * kHalfBytes + (static_cast<size_t>(tok) * kL + vec) * 16, src);
        }
      }
    }
    AttnCpAsyncCommit();
  };
#pragma unroll
  for (int st = 0; st < kAttnPipeStages - 1; ++st) issue(st);

  float m[kHeads], l[kHeads], o[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[g][j] = 0.0f;
  }

  for (uint32_t st = 0; st < n_stages; ++st) {
    AttnCpAsyncWait<kAttnPipeStages - 2>();  // this thread's copies of stage st have landed
    __syncthreads();                         // everyone's; buffer (st − 1) % stages is free again
    issue(st + kAttnPipeStages - 1);
    const uint32_t t0 = st * kStageTok + warp * kTile;  // this warp's first token of the stage
    if (t0 >= valid) continue;                          // warp-uniform: nothing of this stage is ours
    const char* kbuf = stages + (st % kAttnPipeStages) * kAttnStageBytes<kD> + static_cast<size_t>(warp) * kTile * kD * 2;
    const char* vbuf = kbuf + kHalfBytes;
    float sc[kT][kHeads];
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      float kf[8];
      Unpack<kType>(*reinterpret_cast<const uint4*>(kbuf + (static_cast<size_t>(i * kR + rr) * kL + c) * 16), kf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = fmaf(q[g][j], kf[j], acc);
        sc[i][g] = acc;
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i) {
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int off = kL / 2; off > 0; off /= 2) sc[i][g] += __shfl_xor_sync(0xffffffffu, sc[i][g], off);
      }
      const bool ok = t0 + i * kR + rr < valid;  // the same for the whole row group; stale bytes never count
#pragma unroll
      for (int g = 0; g < kHeads; ++g) sc[i][g] = ok ? sc[i][g] : -INFINITY;
    }
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      float mx = sc[0][g];
#pragma unroll
      for (int i = 1; i < kT; ++i) mx = fmaxf(mx, sc[i][g]);
      float alpha, unused, m_new;
      MergeScale(m[g], mx, alpha, unused, m_new);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      m[g] = m_new;
      l[g] *= alpha;
#pragma unroll
      for (int j = 0; j < 8; ++j) o[g][j] *= alpha;
#pragma unroll
      for (int i = 0; i < kT; ++i) {
        sc[i][g] = exp2f(sc[i][g] - base);  // now the weight p
        l[g] += sc[i][g];
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      // A masked row's weight is 0, but its V bytes are stale (never copied): skip it, so
      // 0 · (a stale NaN pattern) cannot reach o.
      if (t0 + i * kR + rr >= valid) continue;
      float vf[8];
      Unpack<kType>(*reinterpret_cast<const uint4*>(vbuf + (static_cast<size_t>(i * kR + rr) * kL + c) * 16), vf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) o[g][j] = fmaf(sc[i][g], vf[j], o[g][j]);
      }
    }
  }
  AttnCpAsyncWait<0>();  // only empty groups remain; drained before the buffers are reused
  __syncthreads();
  float* merge_o = reinterpret_cast<float*>(stages);
  FinishPiece<kD, kHeads, kType, kOut, false>(a, m, l, o, row, piece, pieces, out_base, partial, lse, counters, merge_m,
                                              merge_l, reinterpret_cast<float (*)[kHeads][kD]>(merge_o),
                                              merge_o + kWarps * kHeads * kD, last_s);
}

// The pipelined kernel: 3 CTAs per SM up to 4 heads (~64 KiB of stages each), 2 for 8.
template <int kD, int kHeads, HalfType kType>
KernelPtr PipelinedFor(AttentionOutput out) {
  return out == AttentionOutput::kFloat32
             ? &SparseAttentionPipelinedKernel<kD, kHeads, kType, AttentionOutput::kFloat32, MinBlocks(kHeads, false)>
             : &SparseAttentionPipelinedKernel<kD, kHeads, kType, AttentionOutput::kInputType, MinBlocks(kHeads, false)>;
}

template <int kD>
KernelPtr PipelinedHeads(uint32_t heads, HalfType type, AttentionOutput out) {
  const bool bf16 = type == HalfType::kBf16;
  switch (heads) {
    case 1: return bf16 ? PipelinedFor<kD, 1, HalfType::kBf16>(out) : PipelinedFor<kD, 1, HalfType::kFp16>(out);
    case 2: return bf16 ? PipelinedFor<kD, 2, HalfType::kBf16>(out) : PipelinedFor<kD, 2, HalfType::kFp16>(out);
    case 4: return bf16 ? PipelinedFor<kD, 4, HalfType::kBf16>(out) : PipelinedFor<kD, 4, HalfType::kFp16>(out);
    case 8: return bf16 ? PipelinedFor<kD, 8, HalfType::kBf16>(out) : PipelinedFor<kD, 8, HalfType::kFp16>(out);
    default: return nullptr;
  }
}

}  // namespace

KernelPtr PickPipelined(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  switch (head_dim) {
    case 64: return PipelinedHeads<64>(heads, type, out);
    case 128: return PipelinedHeads<128>(heads, type, out);
    default: return nullptr;
  }
}

// Dynamic shared memory of a pipelined CTA (the same 64 KiB at d = 64 and 128), opted in
// once per kernel (above the 48 KiB default).
size_t PipelinedSmemBytes() { return kAttnPipeStages * kAttnStageBytes<128>; }
static_assert(kAttnStageBytes<64> == kAttnStageBytes<128>);

cudaError_t OptInPipelined(KernelPtr k) {
  // Remembered per kernel (32 instances at most), so a launch pays the attribute call once.
  static std::atomic<KernelPtr> done[64];
  for (auto& d : done) {
    const KernelPtr v = d.load(std::memory_order_acquire);
    if (v == k) return cudaSuccess;
    if (v == nullptr) break;
  }
  if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(PipelinedSmemBytes()));
      e != cudaSuccess) {
    return e;
  }
  for (auto& d : done) {  // a racing duplicate entry is harmless
    KernelPtr expected = nullptr;
    if (d.compare_exchange_strong(expected, k, std::memory_order_acq_rel) || expected == k) break;
  }
  return cudaSuccess;
}

}  // namespace kvtier::kernels::attention_internal
