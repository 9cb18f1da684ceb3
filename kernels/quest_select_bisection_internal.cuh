// Internal to the Quest selection kernels: the bisection / radix top-k of one row (TopKRow),
// run by the bisection top-k kernel (quest_select_bisection.cu, 1024 threads) and by the
// fused score kernel's last CTA of a row (quest_select_scores.cu, 256 threads). Not part of
// the public API. (The digit top-k, quest_select_topk.cu, does not use it.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "quest_select.cuh"
#include "quest_select_internal.cuh"

namespace kvtier::kernels::quest_internal {

inline constexpr int kMaxKeysPerThread = 8;  // top-k rows of ≤ 8·threads blocks: bisection in registers

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
  const auto [n, slice0, k, out0, space] = PlaceTopKRow(a, row);
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
inline constexpr uint32_t kTopKStageKeys = 11264;

}  // namespace kvtier::kernels::quest_internal
