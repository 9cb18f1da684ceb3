// Why the shapes: the score pass reads 2·d + 4 bytes per slice and does ~4 flops per byte,
// so like attention it is a streaming read, spread over one wave of CTAs that loop over their
// passes with loads in flight (a batch of one 32K-token sequence is 32 × 8 CTAs of 2 passes).
// The top-k pass touches only n floats per row (L2-resident right after the scores), so one
// CTA per row suffices; its cost is its serial steps (one barrier per key bit of the
// bisection, ≤ 64 and usually ~35–45, then one per compaction round; long rows: staging fused
// with the first radix pass, ≤ 4 passes of 2 block syncs each, the compaction), not bytes.
#include "quest_select.cuh"
#include "quest_select_internal.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <utility>

namespace kvtier::kernels {
namespace {

using quest_internal::OrderedKey;

constexpr int kScoreThreads = 256;
constexpr int kLanesPerSlice = 8;
constexpr int kSlicesPerPass = kScoreThreads / kLanesPerSlice;  // 32
constexpr int kStages = 4;       // passes whose loads are in flight per thread
constexpr int kGroupChunk = 4;   // query heads per set of max accumulators (staged zero-padded)
constexpr int kSelectThreads = 1024;
constexpr int kMaxKeysPerThread = 8;  // top-k rows of ≤ 8·threads blocks: bisection in registers
constexpr uint32_t kMaxStagedQueryFloats = 12288;               // 48 KiB of shared memory

__device__ __forceinline__ float LoadQuery(const void* q, QuestQueryType t, size_t i) {
  switch (t) {
    case QuestQueryType::kBf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(q)[i]);
    case QuestQueryType::kFp16: return __half2float(static_cast<const __half*>(q)[i]);
    default: return static_cast<const float*>(q)[i];
  }
}

// The kC int8 channels of one lane (16 at d = 128, 8 at d = 64).
template <int kC>
struct Bytes;
template <>
struct Bytes<16> {
  uint4 v;
  __device__ void Load(const int8_t* p) { v = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ uint32_t Word(int i) const { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
};
template <>
struct Bytes<8> {
  uint2 v;
  __device__ void Load(const int8_t* p) { v = __ldg(reinterpret_cast<const uint2*>(p)); }
  __device__ uint32_t Word(int i) const { return i == 0 ? v.x : v.y; }
};

// int8 → fp32, exact, without I2F (a quarter-rate conversion: 16 per SM per clock, the
// score kernel's bottleneck when it did 2·d of them per slice): bias every byte to u = b + 128
// (one XOR per 4 bytes), place u in the mantissa of 2^23 (0x4B0000uu = 8388608 + u, one PRMT),
// subtract 8388736 (exact: both are integers below 2^24).
template <int kC>
__device__ __forceinline__ void ToFloat(const Bytes<kC>& b, float (&f)[kC]) {
#pragma unroll
  for (int w = 0; w < kC / 4; ++w) {
    const uint32_t u = b.Word(w) ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[4 * w + j] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650u + j)) - 8388736.0f;
    }
  }
}

struct TopKShared {
  uint32_t hist[2][256];        // pass p counts into hist[p & 1] and zeroes the other one
  uint32_t warp_counts[2][32];  // per warp: chosen-above count | ties << 16 (double-buffered)
  uint32_t digit, need, done;
};

// hist[digit] += 1 for every lane whose digit is < 256, aggregated per warp (all 32 lanes
// call it). Scores of one row share their top bits, so the usual case is one digit for the
// whole warp: two integer reductions (REDUX) find it and one lane adds the count; only a warp
// with several digits pays for __match_any_sync (one atomic per distinct digit, issued as one
// instruction). A warp with no candidate does nothing.
__device__ __forceinline__ void CountDigit(uint32_t* hist, uint32_t digit, uint32_t lane) {
  const uint32_t act = __ballot_sync(0xffffffffu, digit < 256);
  if (act == 0) return;  // warp-uniform
  const uint32_t lo = __reduce_min_sync(0xffffffffu, digit);  // an active lane's digit
  const uint32_t hi = __reduce_max_sync(0xffffffffu, digit < 256 ? digit : 0u);
  if (lo == hi) {
    if (lane == static_cast<uint32_t>(__ffs(act) - 1)) atomicAdd(&hist[lo], static_cast<uint32_t>(__popc(act)));
    return;
  }
  const uint32_t peers = __match_any_sync(0xffffffffu, digit);
  if (digit < 256 && lane == static_cast<uint32_t>(__ffs(peers) - 1)) {
    atomicAdd(&hist[digit], static_cast<uint32_t>(__popc(peers)));
  }
}

// The top-k of one row (request r, KV head h) by a CTA of kThreads threads: the reference's
// QuestSelectTopK. Rows of ≤ kMaxKeysPerThread·kThreads blocks (8192 at 1024 threads, 2048 in
// the fused 256-thread CTA): bisection on 64-bit (score, index) keys in registers, one barrier
// per key bit (see by_bisection below). Longer rows: the order-preserving keys are staged once
// in `keys_s` when the row has ≤ `cap` blocks (else every pass re-reads the scores from L2). Radix select, 8 bits a
// pass from the top, with a warp-aggregated shared histogram (__match_any_sync: the first
// digit is sign + 7 exponent bits, nearly one bin for scores of one magnitude, so plain
// atomics would serialise 32-way); it stops as soon as the selected bin is taken whole. Then
// one compaction in block order, kThreads blocks per round, one __syncthreads per round: an
// element's output position is (forced or above before it) + min(ties before it, need).
// Scores are read with ld.global.cg: in the fused launch other CTAs of this grid wrote them.
template <int kThreads>
__device__ void TopKRow(const QuestSelectDeviceArgs& a, uint32_t row, uint32_t* keys_s, uint32_t cap,
                        TopKShared& sh) {
  constexpr int kW = kThreads / 32;
  const uint32_t r = row / a.kv_heads, h = row % a.kv_heads;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;
  const uint32_t k = QuestBudgetBlocksOf(n, a.params);
  const uint32_t out0 = a.selected_offsets[row], space = a.selected_offsets[row + 1] - out0;
  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const bool slots = a.block_slots != nullptr && a.selected_slots != nullptr;
  auto emit = [&](uint32_t pos, uint32_t b) {
    a.selected[out0 + pos] = b;
    if (slots) a.selected_slots[out0 + pos] = a.block_slots[slice0 + b];
  };
  if (space != k) {  // the caller's offsets disagree with the budget: visible garbage
    for (uint32_t i = tid; i < space; i += kThreads) {
      a.selected[out0 + i] = 0xffffffffu;
      if (slots) a.selected_slots[out0 + i] = 0xffffffffu;
    }
    return;
  }
  if (k >= n) {
    for (uint32_t b = tid; b < n; b += kThreads) emit(b, b);
    return;
  }
  const float* scores = a.scores + slice0;
  const bool staged = n <= cap;
  auto key = [&](uint32_t b) { return staged ? keys_s[b] : OrderedKey(__ldcg(scores + b)); };
  // k < n, so k ≥ sink_blocks + 1 and block n - 1 is not a sink.
  const uint32_t sinks = a.params.sink_blocks;
  const uint32_t rest = k - sinks - 1;  // chosen by score among blocks [sinks, n - 1)
  // Compaction in block order, one round of kThreads blocks (block b = round·kThreads + tid;
  // every thread calls it, one __syncthreads per round): a block's output position is
  // (forced or above before it) + min(ties before it, need). Both paths below use it.
  uint32_t above_total = 0, tie_total = 0;  // over the rounds before this one
  int buf = 0;
  auto compact_round = [&](uint32_t b, bool forced, bool tie, uint32_t need) {
    const uint32_t fb = __ballot_sync(0xffffffffu, forced), tb = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) sh.warp_counts[buf][warp] = __popc(fb) | (__popc(tb) << 16);
    __syncthreads();
    // Every warp scans the kW packed counts by shuffles (one shared load per lane; a field
    // never exceeds kThreads, so the 16-bit halves do not carry into each other).
    const uint32_t v = lane < static_cast<uint32_t>(kW) ? sh.warp_counts[buf][lane] : 0u;
    uint32_t incl = v;
#pragma unroll
    for (int off = 1; off < kW; off *= 2) {
      const uint32_t t = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= static_cast<uint32_t>(off)) incl += t;
    }
    const uint32_t mine = __shfl_sync(0xffffffffu, incl - v, warp);  // warps before this one
    const uint32_t all = __shfl_sync(0xffffffffu, incl, kW - 1);
    const uint32_t below = (1u << lane) - 1u;
    const uint32_t f_before = above_total + (mine & 0xffffu) + __popc(fb & below);
    const uint32_t t_before = tie_total + (mine >> 16) + __popc(tb & below);
    above_total += all & 0xffffu;
    tie_total += all >> 16;
    if (forced) emit(f_before + min(t_before, need), b);
    else if (tie && t_before < need) emit(f_before + t_before, b);
    buf ^= 1;
  };

  // Rows of ≤ kThreads·kMaxKeysPerThread blocks: bisection on distinct 64-bit keys held in
  // registers. Candidate b (block b = e·kThreads + tid, slot e) has the key
  // K = OrderedKey(score) << 32 | (0xffffffff − b): K orders candidates exactly as the
  // reference ranks them (higher score first, then the lower index), all K are distinct and
  // ≥ 1; a non-candidate (forced block, past the row) holds 0. The selection is the `rest`
  // largest K, i.e. K ≥ T for T = the rest-th largest K, found bit by bit from the top: keep
  // bit `bit` of the prefix if at least `rest` keys are ≥ prefix | bit (index bits above
  // log2(n) are 1 in every key: set without a count, so ≤ 32 + 13 rounds). The count is one
  // __syncthreads_count with one key per thread; with several, a warp REDUX, one shared store
  // per warp and a REDUX of the kW warp sums (double-buffered in sh.hist, unused here: one
  // barrier per bit). It stops as soon as exactly `rest` keys are ≥ the candidate (usually
  // within the score bits, the index bits only break ties). Then selected = forced || K ≥ T —
  // no tie pass.
  auto by_bisection = [&](auto per_thread) {
    constexpr int kE = decltype(per_thread)::value;
    uint64_t keys[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const uint32_t b = static_cast<uint32_t>(e * kThreads) + tid;
      keys[e] = 0;
      if (b >= sinks && b + 1 < n) {
        keys[e] = (uint64_t{OrderedKey(__ldcg(scores + b))} << 32) | (0xffffffffu - b);
      }
    }
    uint64_t t = ~uint64_t{0};  // rest = 0: no key reaches it (OrderedKey ≤ 0xff800000)
    if (rest > 0) {
      uint64_t prefix = 0;  // invariant: at least `rest` keys are ≥ prefix
      int par = 0;
      // Index bits that can differ: every candidate b < n < 2^idx_bits (n ≥ 2 here), so
      // bits 31..idx_bits of 0xffffffff − b are 1 in every key.
      const int idx_bits = 32 - __clz(n - 1);
      for (int bit = 63; bit >= 0; --bit) {
        if (bit == 31) {  // the score half of T is settled: its constant index bits need no count
          prefix |= uint64_t{0xffffffffu << idx_bits};
          bit = idx_bits - 1;
        }
        const uint64_t cand = prefix | (uint64_t{1} << bit);
        uint32_t mine = 0;
#pragma unroll
        for (int e = 0; e < kE; ++e) mine += keys[e] >= cand ? 1u : 0u;
        uint32_t count;
        if constexpr (kE == 1) {
          count = static_cast<uint32_t>(__syncthreads_count(static_cast<int>(mine)));
        } else {
          const uint32_t w = __reduce_add_sync(0xffffffffu, mine);
          if (lane == 0) sh.hist[par][warp] = w;
          __syncthreads();
          count = __reduce_add_sync(0xffffffffu, lane < static_cast<uint32_t>(kW) ? sh.hist[par][lane] : 0u);
          par ^= 1;  // the next bit's stores go to the other buffer: no second barrier
        }
        if (count >= rest) {  // uniform
          prefix = cand;
          if (count == rest) break;  // exactly the selection: the lower bits change nothing
        }
      }
      t = prefix;  // ≥ 1: every candidate key is, and non-candidates (0) are never taken
    }
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const uint32_t c0 = static_cast<uint32_t>(e * kThreads);
      if (c0 < n) {  // uniform
        const uint32_t b = c0 + tid;
        const bool forced = b < n && (b < sinks || b + 1 == n);
        compact_round(b, forced || keys[e] >= t, false, 0);
      }
    }
  };
  if (n <= kThreads * kMaxKeysPerThread) {
    if (n <= kThreads) {
      by_bisection(std::integral_constant<int, 1>{});
    } else if (n <= 2 * kThreads) {
      by_bisection(std::integral_constant<int, 2>{});
    } else if (n <= 4 * kThreads) {
      by_bisection(std::integral_constant<int, 4>{});
    } else {
      by_bisection(std::integral_constant<int, kMaxKeysPerThread>{});
    }
    return;
  }

  // Longer rows: radix select on the 32-bit keys (staged in keys_s when n ≤ cap).
  // Candidates with (key & mask) > prefix are taken, and the first `need` with (key & mask)
  // == prefix. rest = 0: mask 0, need 0 — every candidate a tie, none taken.
  uint32_t prefix = 0, mask = 0, need = rest;
  for (uint32_t i = tid; i < 2 * 256; i += kThreads) (&sh.hist[0][0])[i] = 0;
  __syncthreads();
  // Staging and the first pass's histogram in one sweep (uniform trip count: whole warps).
  for (uint32_t b0 = 0; b0 < n; b0 += kThreads) {
    const uint32_t b = b0 + tid;
    uint32_t digit = 256;  // none
    if (b < n) {
      const uint32_t kk = OrderedKey(__ldcg(scores + b));
      if (staged) keys_s[b] = kk;
      if (rest > 0 && b >= sinks && b + 1 < n) digit = kk >> 24;
    }
    CountDigit(sh.hist[0], digit, lane);
  }
  if (rest > 0) {
    for (int shift = 24, cur = 0; shift >= 0; shift -= 8, cur ^= 1) {
      if (shift < 24) {  // pass 1 was counted while staging
        for (uint32_t i = tid; i < 256; i += kThreads) sh.hist[cur ^ 1][i] = 0;  // the next pass's
        for (uint32_t b0 = sinks; b0 + 1 < n; b0 += kThreads) {  // uniform trip count: whole warps
          const uint32_t b = b0 + tid;
          uint32_t digit = 256;  // none
          if (b + 1 < n) {
            const uint32_t kk = key(b);
            if ((kk & mask) == prefix) digit = (kk >> shift) & 0xffu;
          }
          CountDigit(sh.hist[cur], digit, lane);
        }
      }
      __syncthreads();  // the counts (and keys_s) are complete
      if (warp == 0) {  // lane L holds digits 255 - 8L down to 248 - 8L
        uint32_t cnt[8], sum = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          cnt[j] = sh.hist[cur][255 - 8 * lane - j];
          sum += cnt[j];
        }
        uint32_t incl = sum;
#pragma unroll
        for (int off = 1; off < 32; off *= 2) {
          const uint32_t t = __shfl_up_sync(0xffffffffu, incl, off);
          if (lane >= static_cast<uint32_t>(off)) incl += t;
        }
        const uint32_t hit = __ballot_sync(0xffffffffu, incl >= need);  // non-empty: the total ≥ need
        if (lane == static_cast<uint32_t>(__ffs(hit) - 1)) {
          uint32_t before = incl - sum;
          for (int j = 0; j < 8; ++j) {
            if (before + cnt[j] >= need) {
              sh.digit = 255 - 8 * lane - j;
              sh.need = need - before;
              sh.done = before + cnt[j] == need;  // the whole bin is taken: no finer digit needed
              break;
            }
            before += cnt[j];
          }
        }
      }
      __syncthreads();  // sh.digit/need/done; also: hist[cur ^ 1] zeroed before anyone counts into it
      prefix |= sh.digit << shift;
      mask |= 0xffu << shift;
      need = sh.need;
      if (sh.done) break;  // uniform
    }
  } else {
    __syncthreads();  // keys_s
  }

  // Compaction in block order.
  for (uint32_t c0 = 0; c0 < n; c0 += kThreads) {
    const uint32_t b = c0 + tid;
    bool forced = false, tie = false;
    if (b < n) {
      if (b < sinks || b + 1 == n) {
        forced = true;
      } else {
        const uint32_t m = key(b) & mask;
        forced = m > prefix;  // "above": taken like a forced block
        tie = m == prefix;
      }
    }
    compact_round(b, forced, tie, need);
  }
}

// Keys staged in shared memory by the top-k: 44 KiB (rows of ≤ 11264 blocks, 180K tokens at
// 16), leaving room for the static TopKShared under the 48 KiB a launch gets without opt-in.
constexpr uint32_t kTopKStageKeys = 11264;
constexpr size_t kSmemLimit = 48 * 1024 - sizeof(TopKShared) - 64;  // dynamic bytes of a fused score CTA

// kFused: the last CTA of a row (request, KV head) to finish its scores (a counter per row,
// the threadFenceReduction pattern) runs the row's top-k with its 256 threads, the keys
// staged in the same dynamic shared memory that held the queries (`cap` keys).
//
// A CTA scores `passes` passes of 32 blocks of one row; each thread keeps kStages passes of
// loads in flight (a ring of registers: a pass's bytes are converted, then the same registers
// are refilled with the pass kStages ahead before the math), so loads overlap the math of the
// CTA itself instead of relying on other CTAs. The first loads are issued before the queries
// are staged (independent round trips).
// Sum: per channel P_i = Σ_g max(q_gi, 0), N_i = Σ_g min(q_gi, 0) in registers, one fused
// dot per slice. Max: staged per (chunk of 4 heads, channel) as float4 q⁺ and float4 q⁻
// (zero-padded heads; laid out so a slice's 8 lanes read consecutive float4), so one
// channel's int8 → fp32 conversion serves every head and each (head, channel) costs 2 FFMA
// (no compare/select: the sign split is done once per CTA); the 4 heads' 8-lane sums are
// reduced by a transposing butterfly (4 shuffles, not 12), then maxed over the chunk (2 more). Every bound is summed on the int8 values in fp32 and
// scaled once at the end (scale > 0 commutes with max).
template <int kD, bool kSum, bool kFused>
__global__ void __launch_bounds__(kScoreThreads) QuestScoreKernel(QuestSelectDeviceArgs a, uint32_t cap,
                                                                  uint32_t passes) {
  constexpr int kC = kD / kLanesPerSlice;
  extern __shared__ float4 staged4[];  // sum: P [kD] then N [kD] (floats); max: [chunk][kC][q⁺, q⁻][lane]
  float* staged = reinterpret_cast<float*>(staged4);
  __shared__ TopKShared sh;
  __shared__ bool last_s;
  cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t tile_blocks = passes * kSlicesPerPass;
  const uint32_t b0 = blockIdx.x * tile_blocks;
  if (b0 >= n) {
    if constexpr (kFused) {
      if (n == 0 && blockIdx.x == 0) TopKRow<kScoreThreads>(a, r * a.kv_heads + h, reinterpret_cast<uint32_t*>(staged), 0, sh);
    }
    return;
  }
  const uint32_t my_passes = min(passes, (n - b0 + kSlicesPerPass - 1) / kSlicesPerPass);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % kLanesPerSlice, slot = tid / kLanesPerSlice;
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;  // slice of block 0 of this (request, head)
  Bytes<kC> lo[kStages] = {}, hi[kStages] = {};
  float scale[kStages] = {};
  auto load = [&](int s, uint32_t p) {
    const uint32_t b = b0 + p * kSlicesPerPass + slot;
    if (p < my_passes && b < n) {
      const int8_t* m = a.bounds + (slice0 + b) * 2 * kD + c * kC;
      lo[s].Load(m);
      hi[s].Load(m + kD);
      scale[s] = __ldg(&a.scales[slice0 + b]);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages; ++s) load(s, s);

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t chunks = (group + kGroupChunk - 1) / kGroupChunk;
  const size_t q_base = (size_t{r} * a.q_heads + size_t{h} * group) * kD;
  if constexpr (kSum) {
    for (int i = tid; i < kD; i += kScoreThreads) {
      float pos = 0.0f, neg = 0.0f;
      for (uint32_t g = 0; g < group; ++g) {
        const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{g} * kD + i);
        pos += fmaxf(x, 0.0f);
        neg += fminf(x, 0.0f);
      }
      staged[i] = pos;
      staged[kD + i] = neg;
    }
  } else {
    for (uint32_t i = tid; i < chunks * kGroupChunk * kD; i += kScoreThreads) {
      const uint32_t g = i / kD, ch = i % kD;
      const float x = g < group ? LoadQuery(a.queries, a.query_type, q_base + i) : 0.0f;
      const bool up = x >= 0.0f;  // NaN goes to q⁻ and propagates as it does in the reference
      // float4 index ((chunk·kC + i)·2 + sign)·8 + lane for channel ch = lane·kC + i: the 8
      // lanes of a slice read 8 consecutive float4 (one wavefront, no bank conflict).
      const size_t at = ((size_t{g / kGroupChunk} * kC + ch % kC) * 2 * kLanesPerSlice + ch / kC) * 4 + g % kGroupChunk;
      staged[at] = up ? x : 0.0f;
      staged[at + kLanesPerSlice * 4] = up ? 0.0f : x;
    }
  }
  __syncthreads();

  float pos[kC], neg[kC];
  if constexpr (kSum) {
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      pos[i] = staged[c * kC + i];
      neg[i] = staged[kD + c * kC + i];
    }
  }
  for (uint32_t p0 = 0; p0 < my_passes; p0 += kStages) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const uint32_t p = p0 + s;
      if (p >= my_passes) break;  // uniform over the CTA
      const uint32_t b = b0 + p * kSlicesPerPass + slot;
      const bool valid = b < n;
      float fl[kC], fh[kC];
      ToFloat(lo[s], fl);
      ToFloat(hi[s], fh);
      const float sc = scale[s];
      load(s, p + kStages);  // refill this stage: its bytes are consumed
      float score;
      if constexpr (kSum) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) acc = fmaf(fh[i], pos[i], fmaf(fl[i], neg[i], acc));
#pragma unroll
        for (int off = kLanesPerSlice / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        score = acc;
      } else {
        score = -INFINITY;
        // After the butterfly, lane c holds head j = 2·bit2(c) + bit1(c) of the chunk.
        const uint32_t j_mine = ((c >> 2) & 1) * 2 + ((c >> 1) & 1);
        for (uint32_t k = 0; k < chunks; ++k) {
          const float4* q = staged4 + size_t{k} * kC * 2 * kLanesPerSlice + c;
          float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
#pragma unroll
          for (int i = 0; i < kC; ++i) {
            const float4 qp = q[(2 * i) * kLanesPerSlice], qn = q[(2 * i + 1) * kLanesPerSlice];
            acc0 = fmaf(qp.x, fh[i], fmaf(qn.x, fl[i], acc0));
            acc1 = fmaf(qp.y, fh[i], fmaf(qn.y, fl[i], acc1));
            acc2 = fmaf(qp.z, fh[i], fmaf(qn.z, fl[i], acc2));
            acc3 = fmaf(qp.w, fh[i], fmaf(qn.w, fl[i], acc3));
          }
          // Butterfly over the 8 lanes of the slice: xor 4 halves the heads held (keep 0,1 or
          // 2,3), xor 2 halves again, xor 1 finishes the sum.
          const bool hi4 = (c & 4) != 0, hi2 = (c & 2) != 0;
          const float send_a = hi4 ? acc0 : acc2, send_b = hi4 ? acc1 : acc3;
          float x0 = (hi4 ? acc2 : acc0) + __shfl_xor_sync(0xffffffffu, send_a, 4);
          float x1 = (hi4 ? acc3 : acc1) + __shfl_xor_sync(0xffffffffu, send_b, 4);
          float y = (hi2 ? x1 : x0) + __shfl_xor_sync(0xffffffffu, hi2 ? x0 : x1, 2);
          y += __shfl_xor_sync(0xffffffffu, y, 1);
          if (k * kGroupChunk + j_mine >= group) y = -INFINITY;  // a zero-padded head
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 2));
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 4));
          score = fmaxf(score, y);
        }
      }
      if (c == 0 && valid) a.scores[slice0 + b] = score * sc;  // scale > 0 commutes with max
    }
  }
  if constexpr (kFused) {
    const uint32_t row = r * a.kv_heads + h, tiles = (n + tile_blocks - 1) / tile_blocks;
    __threadfence();
    __syncthreads();  // also: `staged` is free for the keys
    if (tid == 0) last_s = atomicAdd(&a.row_counters[row], 1u) == tiles - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    TopKRow<kScoreThreads>(a, row, reinterpret_cast<uint32_t*>(staged), cap, sh);
    if (tid == 0) a.row_counters[row] = 0;  // ready for the next launch (stream order)
  }
}


// ---- Round 8: the pipelined score kernel (QuestScoreAlgorithm::kPipelined). ----
// Why: the register-ring kernel held 4 passes × 36 B of loads per thread in registers
// (~127 registers, 2 CTAs = 16 warps per SM) and measured 1.2 TB/s at b8/32K — its warps
// stalled, not the memory. Here the loads take no registers: a CTA copies tiles of 64
// slices (bounds, then scales) to shared memory with cp.async, kPipeStages buffers, so 3
// tiles (~50 KB) are in flight per CTA while it scores the 4th, at ≤ 80 registers (3 CTAs
// = 24 warps per SM, ~150 KB in flight per SM). A thread scores 2 slices of a tile (slots
// `slot` and `slot + 32`) with the same lane → channel split as the register-ring kernel
// (lane c: channels c·kC .. c·kC + kC − 1, summed in that order, then the same butterfly), so
// every score is bit for bit the same; one shared load of q⁺/q⁻ (4 heads) feeds both slices.
constexpr int kPipeSlicesPerThread = 2;
constexpr int kPipeTile = kSlicesPerPass * kPipeSlicesPerThread;  // 64 slices per tile
constexpr int kPipeStages = 4;                                    // tile buffers per CTA

template <int kD>
__host__ __device__ constexpr size_t PipeStageBytes() {
  return size_t{kPipeTile} * 2 * kD + size_t{kPipeTile} * sizeof(float);  // bounds, then scales
}

__device__ __forceinline__ void ScoreCpAsync16(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void ScoreCpAsync4(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void ScoreCpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void ScoreCpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Channel i of a lane's kC int8 bytes (the words already XORed with 0x80808080) as fp32: the
// same exact conversion as ToFloat.
template <int kC>
__device__ __forceinline__ float ChannelOf(const uint32_t (&biased)[kC / 4], int i) {
  return __uint_as_float(__byte_perm(biased[i / 4], 0x4B000000u, 0x7650u + (i % 4))) - 8388736.0f;
}

template <int kC>
__device__ __forceinline__ void LoadBiased(const int8_t* p, uint32_t (&w)[kC / 4]) {
  if constexpr (kC == 16) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x ^ 0x80808080u;
    w[1] = v.y ^ 0x80808080u;
    w[2] = v.z ^ 0x80808080u;
    w[3] = v.w ^ 0x80808080u;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x ^ 0x80808080u;
    w[1] = v.y ^ 0x80808080u;
  }
}

// Grid (pieces of tiles_per_cta tiles of a row, kv_heads, requests), 256 threads, dynamic
// shared memory: kPipeStages tile buffers, then the staged queries (the register-ring
// kernel's layout). One barrier per tile: wait for the tile's copies, barrier (every thread's
// copies landed, every warp done with the buffer scored last), refill that buffer with the
// tile kPipeStages − 1 ahead, score.
template <int kD, bool kSum>
__global__ void __launch_bounds__(kScoreThreads, 3) QuestScorePipelinedKernel(QuestSelectDeviceArgs a,
                                                                             uint32_t tiles_per_cta) {
  constexpr int kC = kD / kLanesPerSlice;
  constexpr size_t kBoundBytes = size_t{kPipeTile} * 2 * kD;
  constexpr size_t kStageBytes = PipeStageBytes<kD>();
  extern __shared__ float4 smem4[];
  char* tiles_s = reinterpret_cast<char*>(smem4);
  float4* staged4 = reinterpret_cast<float4*>(tiles_s + kPipeStages * kStageBytes);
  float* staged = reinterpret_cast<float*>(staged4);
  cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t b0 = blockIdx.x * tiles_per_cta * kPipeTile;
  if (b0 >= n) return;
  const uint32_t my_tiles = min(tiles_per_cta, (n - b0 + kPipeTile - 1) / kPipeTile);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % kLanesPerSlice, slot = tid / kLanesPerSlice;
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;  // slice of block 0 of this (request, head)

  // Tile t of this CTA into buffer t % kPipeStages; every thread commits a group per call
  // (empty past the last tile), so the group count stays uniform.
  auto issue = [&](uint32_t t) {
    if (t < my_tiles) {
      const uint32_t b = b0 + t * kPipeTile;
      const uint32_t v = min(static_cast<uint32_t>(kPipeTile), n - b);  // valid slices: nothing past the row is read
      char* buf = tiles_s + (t % kPipeStages) * kStageBytes;
      const int8_t* src = a.bounds + (slice0 + b) * 2 * kD;
      const uint32_t chunks = v * (2 * kD / 16);
#pragma unroll 4
      for (uint32_t j = tid; j < chunks; j += kScoreThreads) ScoreCpAsync16(buf + j * 16, src + j * 16);
      if (static_cast<uint32_t>(tid) < v) ScoreCpAsync4(buf + kBoundBytes + tid * 4, a.scales + slice0 + b + tid);
    }
    ScoreCpAsyncCommit();
  };
#pragma unroll
  for (int t = 0; t < kPipeStages - 1; ++t) issue(t);  // before the queries: independent round trips

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t chunks = (group + kGroupChunk - 1) / kGroupChunk;
  const size_t q_base = (size_t{r} * a.q_heads + size_t{h} * group) * kD;
  if constexpr (kSum) {
    for (int i = tid; i < kD; i += kScoreThreads) {
      float pos = 0.0f, neg = 0.0f;
      for (uint32_t g = 0; g < group; ++g) {
        const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{g} * kD + i);
        pos += fmaxf(x, 0.0f);
        neg += fminf(x, 0.0f);
      }
      staged[i] = pos;
      staged[kD + i] = neg;
    }
  } else {
    for (uint32_t i = tid; i < chunks * kGroupChunk * kD; i += kScoreThreads) {
      const uint32_t g = i / kD, ch = i % kD;
      const float x = g < group ? LoadQuery(a.queries, a.query_type, q_base + i) : 0.0f;
      const bool up = x >= 0.0f;  // NaN goes to q⁻ and propagates as it does in the reference
      const size_t at = ((size_t{g / kGroupChunk} * kC + ch % kC) * 2 * kLanesPerSlice + ch / kC) * 4 + g % kGroupChunk;
      staged[at] = up ? x : 0.0f;
      staged[at + kLanesPerSlice * 4] = up ? 0.0f : x;
    }
  }
  __syncthreads();
  float pos[kSum ? kC : 1], neg[kSum ? kC : 1];
  if constexpr (kSum) {
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      pos[i] = staged[c * kC + i];
      neg[i] = staged[kD + c * kC + i];
    }
  }
  // After the butterfly, lane c holds head j = 2·bit2(c) + bit1(c) of the chunk.
  const uint32_t j_mine = ((c >> 2) & 1) * 2 + ((c >> 1) & 1);
  const bool hi4 = (c & 4) != 0, hi2 = (c & 2) != 0;

  for (uint32_t t = 0; t < my_tiles; ++t) {
    ScoreCpAsyncWait<kPipeStages - 2>();  // this thread's copies of tile t have landed
    __syncthreads();                     // everyone's; and buffer (t − 1) % kPipeStages is free
    issue(t + kPipeStages - 1);
    const char* buf = tiles_s + (t % kPipeStages) * kStageBytes;
    const uint32_t tb = b0 + t * kPipeTile;
    uint32_t lo[kPipeSlicesPerThread][kC / 4], hi[kPipeSlicesPerThread][kC / 4];
    float sc[kPipeSlicesPerThread], score[kPipeSlicesPerThread];
#pragma unroll
    for (int s = 0; s < kPipeSlicesPerThread; ++s) {
      const int local = slot + s * kSlicesPerPass;
      LoadBiased<kC>(reinterpret_cast<const int8_t*>(buf) + local * 2 * kD + c * kC, lo[s]);
      LoadBiased<kC>(reinterpret_cast<const int8_t*>(buf) + local * 2 * kD + kD + c * kC, hi[s]);
      sc[s] = reinterpret_cast<const float*>(buf + kBoundBytes)[local];
    }
    if constexpr (kSum) {
#pragma unroll
      for (int s = 0; s < kPipeSlicesPerThread; ++s) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          acc = fmaf(ChannelOf<kC>(hi[s], i), pos[i], fmaf(ChannelOf<kC>(lo[s], i), neg[i], acc));
        }
#pragma unroll
        for (int off = kLanesPerSlice / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        score[s] = acc;
      }
    } else {
#pragma unroll
      for (int s = 0; s < kPipeSlicesPerThread; ++s) score[s] = -INFINITY;
      for (uint32_t k = 0; k < chunks; ++k) {
        const float4* q = staged4 + size_t{k} * kC * 2 * kLanesPerSlice + c;
        // Opaque per chunk: keeps the compiler from hoisting all 2·kC·2 conversions out of the
        // chunk loop (64 live floats: spills at 80 registers); each is converted where used.
        uint32_t lw[kPipeSlicesPerThread][kC / 4], hw[kPipeSlicesPerThread][kC / 4];
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) {
#pragma unroll
          for (int w = 0; w < kC / 4; ++w) {
            lw[s][w] = lo[s][w];
            hw[s][w] = hi[s][w];
            asm volatile("" : "+r"(lw[s][w]), "+r"(hw[s][w]));
          }
        }
        float acc[kPipeSlicesPerThread][4];
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          const float4 qp = q[(2 * i) * kLanesPerSlice], qn = q[(2 * i + 1) * kLanesPerSlice];
#pragma unroll
          for (int s = 0; s < kPipeSlicesPerThread; ++s) {
            const float fh = ChannelOf<kC>(hw[s], i), fl = ChannelOf<kC>(lw[s], i);
            acc[s][0] = fmaf(qp.x, fh, fmaf(qn.x, fl, acc[s][0]));
            acc[s][1] = fmaf(qp.y, fh, fmaf(qn.y, fl, acc[s][1]));
            acc[s][2] = fmaf(qp.z, fh, fmaf(qn.z, fl, acc[s][2]));
            acc[s][3] = fmaf(qp.w, fh, fmaf(qn.w, fl, acc[s][3]));
          }
        }
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) {
          // The register-ring kernel's butterfly, unchanged (same sums in the same order).
          const float send_a = hi4 ? acc[s][0] : acc[s][2], send_b = hi4 ? acc[s][1] : acc[s][3];
          const float x0 = (hi4 ? acc[s][2] : acc[s][0]) + __shfl_xor_sync(0xffffffffu, send_a, 4);
          const float x1 = (hi4 ? acc[s][3] : acc[s][1]) + __shfl_xor_sync(0xffffffffu, send_b, 4);
          float y = (hi2 ? x1 : x0) + __shfl_xor_sync(0xffffffffu, hi2 ? x0 : x1, 2);
          y += __shfl_xor_sync(0xffffffffu, y, 1);
          if (k * kGroupChunk + j_mine >= group) y = -INFINITY;  // a zero-padded head
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 2));
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 4));
          score[s] = fmaxf(score[s], y);
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kPipeSlicesPerThread; ++s) {
      const uint32_t b = tb + slot + s * kSlicesPerPass;
      if (c == 0 && b < n) a.scores[slice0 + b] = score[s] * sc[s];  // scale > 0 commutes with max
    }
  }
}

__global__ void __launch_bounds__(kSelectThreads) QuestTopKKernel(QuestSelectDeviceArgs a, uint32_t cap) {
  extern __shared__ uint32_t keys_s[];
  __shared__ TopKShared sh;
  cudaGridDependencySynchronize();            // PDL launch behind the scores: their writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  TopKRow<kSelectThreads>(a, blockIdx.x, keys_s, cap, sh);
}

bool ValidShape(const QuestSelectDeviceArgs& a) {
  return a.requests > 0 && a.kv_heads > 0 && a.q_heads % a.kv_heads == 0 && a.q_heads >= a.kv_heads &&
         (a.head_dim == 64 || a.head_dim == 128) && a.requests <= 65535 && a.kv_heads <= 65535 &&
         a.block_offsets != nullptr && a.scores != nullptr;
}

bool ValidForScores(const QuestSelectDeviceArgs& a) {
  if (!ValidShape(a) || a.queries == nullptr || a.bounds == nullptr || a.scales == nullptr) return false;
  return a.params.combine != GqaCombine::kMax || (a.q_heads / a.kv_heads) * a.head_dim <= kMaxStagedQueryFloats;
}

bool ValidForTopK(const QuestSelectDeviceArgs& a) {
  return ValidShape(a) && a.selected_offsets != nullptr && a.selected != nullptr &&
         (a.block_slots == nullptr) == (a.selected_slots == nullptr) &&
         static_cast<uint8_t>(a.topk_algorithm) <= static_cast<uint8_t>(QuestTopKAlgorithm::kAuto);
}

template <class... P, class... A>
cudaError_t LaunchEx(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                     A&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

size_t ScoreSmem(const QuestSelectDeviceArgs& a) {
  const size_t chunks = (a.q_heads / a.kv_heads + kGroupChunk - 1) / kGroupChunk;
  return a.params.combine == GqaCombine::kSum ? 2 * a.head_dim * sizeof(float)
                                              : chunks * kGroupChunk * a.head_dim * 2 * sizeof(float);
}

bool CanFuse(const QuestSelectDeviceArgs& a) { return a.row_counters != nullptr && ScoreSmem(a) <= kSmemLimit; }

// Passes (of 32 blocks) per score CTA so that the grid is one wave of the resident CTAs
// (2 per SM at d = 128: ~120–128 registers): at b1/32K 2 passes per CTA (256 CTAs, latency),
// at b8/128K 64 (4 CTAs per row, a streaming loop with kStages passes in flight).
template <int kD, bool kSum, bool kFused>
uint32_t PassesPerCta(const QuestSelectDeviceArgs& a, size_t smem) {
  static std::atomic<int> resident{0};  // CTAs per SM of this instantiation (a hint: only speed depends on it)
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    sms = 132;
  }
  int per_sm = resident.load(std::memory_order_relaxed);
  if (per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, QuestScoreKernel<kD, kSum, kFused>, kScoreThreads,
                                                      smem) != cudaSuccess ||
        per_sm <= 0) {
      per_sm = 2;
    }
    resident.store(per_sm, std::memory_order_relaxed);
  }
  const uint64_t per_row = (uint64_t{a.max_blocks} + kSlicesPerPass - 1) / kSlicesPerPass;
  // One wave: split each row into as many tiles as the resident slots allow (a row in one
  // CTA when rows outnumber them), then the passes per tile.
  const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(sms) * uint64_t(per_sm);
  const uint64_t tiles = std::max<uint64_t>(1, slots / rows);
  const uint64_t ppc = std::clamp<uint64_t>((per_row + tiles - 1) / tiles, 1, per_row);
  return static_cast<uint32_t>(ppc);
}

template <int kD, bool kSum, bool kFused>
cudaError_t LaunchScoresOf(const QuestSelectDeviceArgs& a, cudaStream_t stream, size_t smem, uint32_t cap) {
  auto k = QuestScoreKernel<kD, kSum, kFused>;
  if (smem > 48 * 1024) {  // a large max group (≤ 12288 query floats, ≤ ~99 KiB split in q⁺/q⁻)
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        e != cudaSuccess) {
      return e;
    }
  }
  const uint32_t passes = PassesPerCta<kD, kSum, kFused>(a, smem);
  const uint32_t tile_blocks = passes * kSlicesPerPass;
  const dim3 grid((a.max_blocks + tile_blocks - 1) / tile_blocks, a.kv_heads, a.requests);
  return LaunchEx(k, grid, dim3(kScoreThreads), smem, stream, a.programmatic_dependent_launch, a, cap, passes);
}

// The pipelined kernel: pieces of `tiles_per_cta` tiles of 64 slices, as many per row as one
// wave of resident CTAs allows (b1/32K on an H100: 8 rows × 32 CTAs of 1 tile; b8/32K: 64
// rows × 6 CTAs of ≤ 6 tiles; b8/128K: 64 × 6 of ≤ 22).
template <int kD, bool kSum>
cudaError_t LaunchPipelinedScoresOf(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  auto k = QuestScorePipelinedKernel<kD, kSum>;
  const size_t smem = kPipeStages * PipeStageBytes<kD>() + ScoreSmem(a);
  static std::atomic<bool> opted_in{false};
  if (!opted_in.load(std::memory_order_relaxed)) {  // once: the largest this kernel may be given
    const size_t most = kPipeStages * PipeStageBytes<kD>() + size_t{kMaxStagedQueryFloats} * 2 * sizeof(float);
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
        e != cudaSuccess) {
      return e;
    }
    opted_in.store(true, std::memory_order_relaxed);
  }
  // Resident CTAs per SM for this shared-memory size (a hint: only speed depends on it),
  // cached as smem << 8 | CTAs.
  static std::atomic<uint64_t> cached{0};
  int per_sm = 0;
  if (const uint64_t v = cached.load(std::memory_order_relaxed); v != 0 && (v >> 8) == smem) {
    per_sm = static_cast<int>(v & 0xff);
  } else {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kScoreThreads, smem) != cudaSuccess || per_sm <= 0) {
      (void)cudaGetLastError();
      per_sm = 1;
    }
    per_sm = std::min(per_sm, 255);
    cached.store((uint64_t{smem} << 8) | static_cast<uint64_t>(per_sm), std::memory_order_relaxed);
  }
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    sms = 132;
  }
  const uint64_t tiles_per_row = (uint64_t{a.max_blocks} + kPipeTile - 1) / kPipeTile;
  const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(sms) * uint64_t(per_sm);
  const uint64_t ctas_per_row = std::max<uint64_t>(1, slots / rows);
  const uint64_t per_cta = std::max<uint64_t>(1, (tiles_per_row + ctas_per_row - 1) / ctas_per_row);
  const dim3 grid(static_cast<uint32_t>((tiles_per_row + per_cta - 1) / per_cta), a.kv_heads, a.requests);
  return LaunchEx(k, grid, dim3(kScoreThreads), smem, stream, a.programmatic_dependent_launch, a,
                  static_cast<uint32_t>(per_cta));
}

bool PipelinedScoresApply(const QuestSelectDeviceArgs& a) {
  return a.score_algorithm == QuestScoreAlgorithm::kPipelined && reinterpret_cast<uintptr_t>(a.bounds) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.scales) % 4 == 0;
}

template <int kD>
cudaError_t LaunchScores(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused) {
  if (!fused && PipelinedScoresApply(a)) {
    return a.params.combine == GqaCombine::kSum ? LaunchPipelinedScoresOf<kD, true>(a, stream)
                                                : LaunchPipelinedScoresOf<kD, false>(a, stream);
  }
  size_t smem = ScoreSmem(a);
  uint32_t cap = 0;
  if (fused) {
    cap = static_cast<uint32_t>(std::min<size_t>(std::min(a.max_blocks, kTopKStageKeys), kSmemLimit / 4));
    smem = std::max(smem, size_t{cap} * 4);
  }
  if (a.params.combine == GqaCombine::kSum) {
    return fused ? LaunchScoresOf<kD, true, true>(a, stream, smem, cap)
                 : LaunchScoresOf<kD, true, false>(a, stream, smem, cap);
  }
  return fused ? LaunchScoresOf<kD, false, true>(a, stream, smem, cap)
               : LaunchScoresOf<kD, false, false>(a, stream, smem, cap);
}

cudaError_t LaunchScoresAny(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused) {
  return a.head_dim == 128 ? LaunchScores<128>(a, stream, fused) : LaunchScores<64>(a, stream, fused);
}

}  // namespace

void QuestSelectedOffsets(const uint32_t* blocks, uint32_t requests, uint32_t kv_heads, const QuestSelectParams& params,
                          uint32_t* offsets) {
  uint32_t at = 0;
  offsets[0] = 0;
  for (uint32_t r = 0; r < requests; ++r) {
    for (uint32_t h = 0; h < kv_heads; ++h) {
      at += QuestBudgetBlocksOf(blocks[r], params);
      offsets[r * kv_heads + h + 1] = at;
    }
  }
}

cudaError_t LaunchQuestScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForScores(a)) return cudaErrorInvalidValue;
  if (a.max_blocks == 0) return cudaSuccess;
  return LaunchScoresAny(a, stream, false);
}

namespace {
cudaError_t LaunchTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl) {
  const bool digits = a.topk_algorithm == QuestTopKAlgorithm::kDigits
                          ? a.max_blocks <= quest_internal::kDigitTopKMaxBlocks
                          : a.topk_algorithm == QuestTopKAlgorithm::kAuto && a.max_blocks <= kDigitTopKAutoMaxBlocks;
  if (digits) {
    return quest_internal::LaunchDigitTopK(a, stream, pdl);
  }
  // Rows the bisection takes (≤ 8192 blocks) need no staged keys.
  const uint32_t cap =
      a.max_blocks <= uint32_t{kSelectThreads} * kMaxKeysPerThread ? 0u : std::min(a.max_blocks, kTopKStageKeys);
  return LaunchEx(QuestTopKKernel, dim3(a.requests * a.kv_heads), dim3(kSelectThreads), size_t{cap} * 4, stream, pdl,
                  a, cap);
}
}  // namespace

cudaError_t LaunchQuestTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForTopK(a)) return cudaErrorInvalidValue;
  return LaunchTopK(a, stream, a.programmatic_dependent_launch);
}

cudaError_t LaunchQuestSelect(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForScores(a) || !ValidForTopK(a)) return cudaErrorInvalidValue;  // nothing enqueued
  if (a.max_blocks == 0) return LaunchQuestTopK(a, stream);  // rows of no block: only the output fill
  if (CanFuse(a)) return LaunchScoresAny(a, stream, true);
  if (cudaError_t e = LaunchScoresAny(a, stream, false); e != cudaSuccess) return e;
  // The top-k always rides PDL behind its scores (the score kernel triggers at its start): its
  // CTAs are resident when the last score CTA ends, no launch gap; it waits for them in
  // cudaGridDependencySynchronize. Same result as a plain launch.
  return LaunchTopK(a, stream, true);
}

}  // namespace kvtier::kernels
