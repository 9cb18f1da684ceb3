// The digit top-k of Quest selection (round 7): one CTA of 1024 threads per (request, KV head)
// row of ≤ 8192 blocks, consecutive blocks held in registers: 2 per thread for rows ≤ 2048, 8
// above (eighth session; before, 256 threads × 8 for the short rows: docs/sparse.md, round
// 12b). Why this shape: the round-5 bisection spent ~43 dependent rounds of (compare, warp
// sum, block barrier) on one SM per row, ~9.5 µs for 2048 scores (ncu: ~450 cycles a round).
// Here the chain is short and mostly barrier-free:
//   1. the row's slots, then the keys K = OrderedKey(score) of the candidates (blocks
//      [sinks, n−1)); behind LaunchQuestSelect's own score launch the row's place and slots
//      are read before the PDL wait (eighth session), the scores after it. The AND and OR of
//      every candidate key (warp REDUX + one barrier) give the bits all candidates share, so
//      the first digit starts at the highest bit in which they differ (the top 8 bits of
//      scores of one magnitude are one value: a plain radix would spend its first pass on them);
//   2. passes of an 11-bit digit: a shared histogram of the candidates still tied with the
//      prefix (plain shared atomics: the digits below the shared prefix are spread), one
//      barrier, each thread sums its 2 bins (2048 over 1024 threads) in descending digit
//      order, zeroes them in the other histogram (the next pass's) and scans the sums over its warp,
//      one barrier, then EVERY warp (redundantly: no third barrier) narrows down to the digit
//      holding the `need`-th largest — the warp, then its thread, then the thread's bin, one
//      lane per candidate, a warp scan and a ballot each (eighth session; before, a lane summed
//      8 or 32 thread sums in a row, with 8-way bank conflicts); stop once that digit's bin is
//      taken whole, or every bit is settled (32 bits = 3 passes at most, usually 2);
//   3. one compaction in block order: packed (above, tie) counts per thread, one block scan
//      (one barrier); a thread writes its selected blocks and their slots (held since step 1
//      at 2 keys per thread; at 8 they would spill, so read there).
// Same contract and same result, bit for bit, as QuestSelectTopK on the same scores: forced
// blocks (sinks, the last block) always selected, then the highest scores (NaN = −inf,
// −0 = +0), ties to the lower index; sorted output.
#include <cuda_runtime.h>

#include <cstdint>

#include "quest_select_internal.cuh"

namespace kvtier::kernels::quest_internal {
namespace {

constexpr int kKeysPerThread = 8;  // rows of 2049–8192 blocks
constexpr int kShortRowKeys = 2;   // rows of ≤ 2048 blocks (eighth session; 256 threads × 8 before)
constexpr int kDigitBits = 11;
constexpr uint32_t kBins = 1u << kDigitBits;  // 2048
constexpr uint32_t kFull = 0xffffffffu;

template <int kThreads>
struct DigitShared {
  uint32_t hist[2][kBins];            // pass p counts into hist[p & 1] and zeroes the other one
  uint32_t tincl[2][kThreads];        // per thread: its bins' sum plus its warp's earlier threads'
  uint32_t wsum[2][kThreads / 32];    // per warp: the sum of its threads' bins
  uint32_t reduce[2][kThreads / 32];  // per warp: AND and OR of the candidate keys
  uint32_t warp_total[kThreads / 32]; // per warp: packed (above | ties << 16) counts
};

// QuestSelectDeviceArgs::prefetch for the slice at position `pos` of its row's selection.
__device__ __forceinline__ void PrefetchSlice(const QuestSelectDeviceArgs::SlicePrefetch& p, uint32_t pos,
                                              uint32_t slot) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.arena == nullptr || (p.period != 0 && pos % p.period >= p.count)) return;
  const char* src = static_cast<const char*>(p.arena) + slot * p.slot_bytes;
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(p.bytes) : "memory");
#else
  (void)p, (void)pos, (void)slot;  // no bulk prefetch below sm_90
#endif
}

// Inclusive scan over the 32 lanes.
__device__ __forceinline__ uint32_t WarpInclusiveScan(uint32_t v, uint32_t lane) {
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const uint32_t t = __shfl_up_sync(kFull, v, off);
    if (lane >= static_cast<uint32_t>(off)) v += t;
  }
  return v;
}

// `inputs_early`: only the scores come from the kernel this launch waits for (PDL) — the
// offsets and slots were written before it started — so the row's place and slots are read
// before cudaGridDependencySynchronize. LaunchQuestSelect sets it (the launch rides behind its
// own score kernel, which writes only scores and triggers after its own wait); a top-k launched
// alone (LaunchQuestTopK) may follow a kernel that writes any input, and waits first.
template <int kThreads, int kE>
__global__ void __launch_bounds__(kThreads) QuestTopKDigitKernel(QuestSelectDeviceArgs a, bool inputs_early) {
  constexpr int kW = kThreads / 32;
  constexpr int kBpt = static_cast<int>(kBins) / kThreads;  // bins per thread: 8 or 2
  static_assert(kBpt >= 1 && kBpt <= 32 && kW <= 32);
  // The slots of the row's blocks are loaded before the scores (no dependent load at the end),
  // except at 8 keys per thread of 1024 threads, whose 64-register budget they would spill.
  constexpr bool kPrefetchSlots = kE <= 4;
  __shared__ DigitShared<kThreads> sh;
  // PDL: wait for the previous kernel (and its writes), then let a PDL-launched successor be
  // scheduled — before anything is read, or (inputs_early) before the first score is read.
  auto enter = [] {
    cudaGridDependencySynchronize();
    cudaTriggerProgrammaticLaunchCompletion();
  };
  if (!inputs_early) enter();

  const uint32_t row = blockIdx.x;
  const auto [n, slice0, k, out0, space] = PlaceTopKRow(a, row);
  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const bool slots = a.block_slots != nullptr && a.selected_slots != nullptr;
  if (inputs_early && (space != k || k >= n || n > uint32_t{kThreads} * kE)) enter();  // writes only below
  if (space != k) {  // the caller's offsets disagree with the budget: visible garbage
    for (uint32_t i = tid; i < space; i += kThreads) {
      a.selected[out0 + i] = 0xffffffffu;
      if (slots) a.selected_slots[out0 + i] = 0xffffffffu;
    }
    return;
  }
  if (k >= n || n > uint32_t{kThreads} * kE) {  // (n above the launch's max_blocks: a caller bug)
    if (k < n) {
      for (uint32_t i = tid; i < k; i += kThreads) {
        a.selected[out0 + i] = 0xffffffffu;
        if (slots) a.selected_slots[out0 + i] = 0xffffffffu;
      }
      return;
    }
    for (uint32_t b = tid; b < n; b += kThreads) {
      a.selected[out0 + b] = b;
      if (slots) {
        const uint32_t slot = a.block_slots[slice0 + b];
        a.selected_slots[out0 + b] = slot;
        PrefetchSlice(a.prefetch, b, slot);
      }
    }
    return;
  }
  // k < n, so k ≥ sink_blocks + 1, block n − 1 is not a sink and rest < the candidates.
  const uint32_t sinks = a.params.sink_blocks;
  const uint32_t rest = k - sinks - 1;
  const float* scores = a.scores + slice0;
  const uint32_t b0 = tid * kE;  // this thread's blocks: b0 .. b0 + kE − 1

  for (uint32_t i = tid; i < kBins; i += kThreads) sh.hist[0][i] = 0;
  uint32_t keys[kE], slot_of[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const uint32_t b = b0 + e;
    slot_of[e] = kPrefetchSlots && slots && b < n ? __ldg(a.block_slots + slice0 + b) : 0u;
  }
  if (inputs_early) enter();
  uint32_t cand = 0;  // bit e: block b0 + e is a candidate
  uint32_t and_k = kFull, or_k = 0;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const uint32_t b = b0 + e;
    keys[e] = 0;
    if (b >= sinks && b + 1 < n) {
      keys[e] = OrderedKey(__ldcg(scores + b));  // .cg: written by the previous kernel
      cand |= 1u << e;
      and_k &= keys[e];
      or_k |= keys[e];
    }
  }
  and_k = __reduce_and_sync(kFull, and_k);
  or_k = __reduce_or_sync(kFull, or_k);
  if (lane == 0) {
    sh.reduce[0][warp] = and_k;
    sh.reduce[1][warp] = or_k;
  }
  __syncthreads();  // also: hist[0] zeroed
  and_k = __reduce_and_sync(kFull, lane < static_cast<uint32_t>(kW) ? sh.reduce[0][lane] : kFull);
  or_k = __reduce_or_sync(kFull, lane < static_cast<uint32_t>(kW) ? sh.reduce[1][lane] : 0u);

  // Candidates with (K & mask) > prefix are taken; of those with (K & mask) == prefix (the
  // ties), the first `need` in block order.
  uint32_t prefix = 0, mask = 0, need = rest;
  const uint32_t diff = and_k ^ or_k;
  if (rest > 0 && diff == 0) {  // every candidate has the same key: ties only
    prefix = and_k;
    mask = kFull;
  } else if (rest > 0) {
    int top = 31 - __clz(diff);  // highest bit in which candidates differ
    mask = top == 31 ? 0u : kFull << (top + 1);
    prefix = and_k & mask;
    for (int pass = 0;; ++pass) {
      const int cur = pass & 1;
      const int lo = top >= kDigitBits - 1 ? top - (kDigitBits - 1) : 0;
      const uint32_t dmask = (2u << (top - lo)) - 1u;  // top − lo + 1 ≤ 11 bits
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        if (((cand >> e) & 1u) != 0 && (keys[e] & mask) == prefix) {
          atomicAdd(&sh.hist[cur][(keys[e] >> lo) & dmask], 1u);
        }
      }
      __syncthreads();  // the histogram is complete
      // Thread t owns digits kBins − 1 − (t·kBpt + j): thread order = descending digits.
      uint32_t sum = 0;
#pragma unroll
      for (int j = 0; j < kBpt; ++j) {
        const uint32_t d = kBins - 1 - (tid * kBpt + j);
        sum += sh.hist[cur][d];
        sh.hist[cur ^ 1][d] = 0;  // the next pass's (last read before this pass's first barrier)
      }
      const uint32_t tincl = WarpInclusiveScan(sum, lane);
      sh.tincl[cur][tid] = tincl;
      if (lane == 31) sh.wsum[cur][warp] = tincl;
      __syncthreads();  // the per-thread and per-warp sums
      // Every warp, redundantly (no third barrier), narrows down to the digit holding the
      // `need`-th largest: the warp, then its thread, then the thread's bin — each one lane per
      // candidate, an inclusive scan and a ballot. Past the last candidate a lane carries the
      // total (≥ need), so every ballot has a hit among the real candidates.
      const uint32_t wv = lane < static_cast<uint32_t>(kW) ? sh.wsum[cur][lane] : 0u;
      const uint32_t wincl = WarpInclusiveScan(wv, lane);
      const uint32_t w_at = static_cast<uint32_t>(__ffs(__ballot_sync(kFull, wincl >= need)) - 1);
      const uint32_t before_w = __shfl_sync(kFull, wincl - wv, w_at);
      const uint32_t tv = sh.tincl[cur][w_at * 32 + lane];
      const uint32_t t_at = static_cast<uint32_t>(__ffs(__ballot_sync(kFull, before_w + tv >= need)) - 1);
      const uint32_t tv_prev = __shfl_sync(kFull, tv, t_at == 0 ? 0u : t_at - 1);
      const uint32_t before_t = before_w + (t_at == 0 ? 0u : tv_prev);
      const uint32_t t = w_at * 32 + t_at;
      const uint32_t c = lane < static_cast<uint32_t>(kBpt) ? sh.hist[cur][kBins - 1 - (t * kBpt + lane)] : 0u;
      const uint32_t cincl = WarpInclusiveScan(c, lane);
      const uint32_t j_at = static_cast<uint32_t>(__ffs(__ballot_sync(kFull, before_t + cincl >= need)) - 1);
      const uint32_t digit = kBins - 1 - (t * kBpt + j_at);
      const uint32_t count = __shfl_sync(kFull, c, j_at);
      const uint32_t before = before_t + __shfl_sync(kFull, cincl - c, j_at);
      need -= before;  // 1 ≤ need ≤ count
      prefix |= digit << lo;
      mask |= dmask << lo;
      if (count == need || lo == 0) break;  // uniform: the bin is taken whole, or no bit is left
      top = lo - 1;
    }
  }
  // rest = 0: mask 0, prefix 0, need 0 — every candidate a tie, none taken.

  // Compaction in block order: (forced or above before b) + min(ties before b, need).
  uint32_t above = 0, ties = 0;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const uint32_t b = b0 + e;
    if (b >= n) continue;
    if (((cand >> e) & 1u) == 0) {
      above |= 1u << e;  // a forced block (a sink or the last one)
    } else {
      const uint32_t m = keys[e] & mask;
      if (m > prefix) above |= 1u << e;
      else if (m == prefix) ties |= 1u << e;
    }
  }
  const uint32_t packed = static_cast<uint32_t>(__popc(above)) | (static_cast<uint32_t>(__popc(ties)) << 16);
  const uint32_t incl = WarpInclusiveScan(packed, lane);  // a field never exceeds 8192: no carry
  if (lane == 31) sh.warp_total[warp] = incl;
  __syncthreads();
  const uint32_t wv = lane < static_cast<uint32_t>(kW) ? sh.warp_total[lane] : 0u;
  const uint32_t wincl = WarpInclusiveScan(wv, lane);
  const uint32_t ex = __shfl_sync(kFull, wincl - wv, warp) + incl - packed;
  uint32_t f_before = ex & 0xffffu, t_before = ex >> 16;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const uint32_t b = b0 + e;
    uint32_t pos = kFull;
    if ((above >> e) & 1u) {
      pos = f_before + min(t_before, need);
      ++f_before;
    } else if ((ties >> e) & 1u) {
      if (t_before < need) pos = f_before + t_before;
      ++t_before;
    }
    if (pos != kFull) {
      a.selected[out0 + pos] = b;
      if (slots) {
        const uint32_t slot = kPrefetchSlots ? slot_of[e] : a.block_slots[slice0 + b];
        a.selected_slots[out0 + pos] = slot;
        PrefetchSlice(a.prefetch, pos, slot);
      }
    }
  }
}

}  // namespace

cudaError_t LaunchDigitTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl, bool inputs_early) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(a.requests * a.kv_heads);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cfg.blockDim = dim3(1024);
  if (a.max_blocks <= 1024 * kShortRowKeys) {
    return cudaLaunchKernelEx(&cfg, QuestTopKDigitKernel<1024, kShortRowKeys>, a, inputs_early);
  }
  return cudaLaunchKernelEx(&cfg, QuestTopKDigitKernel<1024, kKeysPerThread>, a, inputs_early);
}

}  // namespace kvtier::kernels::quest_internal
