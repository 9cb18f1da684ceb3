// Why the shapes: the score pass reads 2·d + 4 bytes per slice and does ~4 flops per byte,
// so like attention it is a streaming read, spread over many CTAs (a batch of one 32K-token
// sequence is 16 × 8 CTAs). The top-k pass touches only n floats per row (L2-resident right
// after the scores), so one CTA per row suffices; its cost is its serial steps (4 radix
// passes, 2 block scans), not bytes.
#include "quest_select.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kvtier::kernels {
namespace {

constexpr int kScoreThreads = 256;
constexpr int kLanesPerSlice = 8;
constexpr int kSlicesPerPass = kScoreThreads / kLanesPerSlice;  // 32
constexpr int kPasses = 4;
constexpr int kTileBlocks = kSlicesPerPass * kPasses;           // 128 blocks per score CTA
constexpr int kSelectThreads = 256;
constexpr int kSelectWarps = kSelectThreads / 32;
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

template <int kC>
__device__ __forceinline__ void ToFloat(const Bytes<kC>& b, float (&f)[kC]) {
#pragma unroll
  for (int i = 0; i < kC; ++i) {
    const uint32_t w = b.Word(i / 4);
    f[i] = static_cast<float>(static_cast<int32_t>(w << (24 - 8 * (i % 4))) >> 24);  // sign-extended byte
  }
}

template <int kD, bool kSum>
__global__ void __launch_bounds__(kScoreThreads) QuestScoreKernel(QuestSelectDeviceArgs a) {
  constexpr int kC = kD / kLanesPerSlice;
  extern __shared__ float staged[];  // sum: P [kD] then N [kD]; max: q [group][kD]
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t b0 = blockIdx.x * kTileBlocks;
  if (b0 >= n) return;
  const uint32_t group = a.q_heads / a.kv_heads;
  const int tid = static_cast<int>(threadIdx.x);
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
    for (uint32_t i = tid; i < group * kD; i += kScoreThreads) staged[i] = LoadQuery(a.queries, a.query_type, q_base + i);
  }
  __syncthreads();

  const int c = tid % kLanesPerSlice, slot = tid / kLanesPerSlice;
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;  // slice of block 0 of this (request, head)
  Bytes<kC> lo[kPasses], hi[kPasses];
  float scale[kPasses] = {};
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {  // every pass's loads first: 4 slices per lane in flight
    const uint32_t b = b0 + p * kSlicesPerPass + slot;
    if (b < n) {
      const int8_t* m = a.bounds + (slice0 + b) * 2 * kD + c * kC;
      lo[p].Load(m);
      hi[p].Load(m + kD);
      scale[p] = __ldg(&a.scales[slice0 + b]);
    }
  }
  float pos[kC], neg[kC];
  if constexpr (kSum) {
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      pos[i] = staged[c * kC + i];
      neg[i] = staged[kD + c * kC + i];
    }
  }
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const uint32_t b = b0 + p * kSlicesPerPass + slot;
    if (b0 + p * kSlicesPerPass >= n) break;  // uniform over the CTA: no later pass has a block
    float fl[kC], fh[kC];
    if (b < n) {
      ToFloat(lo[p], fl);
      ToFloat(hi[p], fh);
    } else {
#pragma unroll
      for (int i = 0; i < kC; ++i) fl[i] = fh[i] = 0.0f;
    }
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
      for (uint32_t g = 0; g < group; ++g) {
        const float* qg = staged + size_t{g} * kD + c * kC;
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) acc = fmaf(qg[i], qg[i] >= 0.0f ? fh[i] : fl[i], acc);
#pragma unroll
        for (int off = kLanesPerSlice / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        score = fmaxf(score, acc);
      }
    }
    if (c == 0 && b < n) a.scores[slice0 + b] = score * scale[p];  // scale > 0 commutes with max
  }
}

// Order-preserving bits: larger key = larger score. NaN ranks as -inf and -0 as +0, as the
// reference compares them.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  uint32_t u = __float_as_uint(isnan(f) ? -INFINITY : f);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

__device__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* warp_sums) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t incl = v;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const uint32_t t = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += t;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  uint32_t base = 0;
  for (int w = 0; w < warp; ++w) base += warp_sums[w];
  __syncthreads();  // warp_sums may be reused
  return base + incl - v;
}

__global__ void __launch_bounds__(kSelectThreads) QuestTopKKernel(QuestSelectDeviceArgs a) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_sums[kSelectWarps];
  __shared__ uint32_t s_digit, s_need;
  const uint32_t row = blockIdx.x, r = row / a.kv_heads, h = row % a.kv_heads;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;
  const uint32_t k = QuestBudgetBlocksOf(n, a.params);
  const uint32_t out0 = a.selected_offsets[row], space = a.selected_offsets[row + 1] - out0;
  const uint32_t tid = threadIdx.x;
  const bool slots = a.block_slots != nullptr && a.selected_slots != nullptr;
  auto emit = [&](uint32_t pos, uint32_t b) {
    a.selected[out0 + pos] = b;
    if (slots) a.selected_slots[out0 + pos] = a.block_slots[slice0 + b];
  };
  if (space != k) {  // the caller's offsets disagree with the budget: visible garbage
    for (uint32_t i = tid; i < space; i += kSelectThreads) {
      a.selected[out0 + i] = 0xffffffffu;
      if (slots) a.selected_slots[out0 + i] = 0xffffffffu;
    }
    return;
  }
  if (k >= n) {
    for (uint32_t b = tid; b < n; b += kSelectThreads) emit(b, b);
    return;
  }
  // k < n, so k ≥ sink_blocks + 1 and block n - 1 is not a sink.
  const uint32_t sinks = a.params.sink_blocks;
  const uint32_t rest = k - sinks - 1;  // chosen by score among blocks [sinks, n - 1)
  const float* scores = a.scores + slice0;
  uint32_t threshold = 0xffffffffu, need = 0;  // rest = 0: nothing above, no tie taken
  if (rest > 0) {
    uint32_t prefix = 0, mask = 0;
    need = rest;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (uint32_t i = tid; i < 256; i += kSelectThreads) hist[i] = 0;
      __syncthreads();
      for (uint32_t b = sinks + tid; b + 1 < n; b += kSelectThreads) {
        const uint32_t key = OrderedKey(scores[b]);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
      }
      __syncthreads();
      if (tid < 32) {  // lane L holds digits 255 - 8L down to 248 - 8L
        const uint32_t lane = tid;
        uint32_t cnt[8], sum = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          cnt[j] = hist[255 - 8 * lane - j];
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
              s_digit = 255 - 8 * lane - j;
              s_need = need - before;
              break;
            }
            before += cnt[j];
          }
        }
      }
      __syncthreads();
      prefix |= s_digit << shift;
      mask |= 0xffu << shift;
      need = s_need;
    }
    threshold = prefix;  // the key of the rest-th best candidate; `need` ties at it are taken
  }

  // Compaction in block order: thread t owns blocks [t·E, t·E + E).
  const uint32_t per = (n + kSelectThreads - 1) / kSelectThreads;
  const uint32_t lo = min(n, tid * per), hi = min(n, lo + per);
  auto candidate = [&](uint32_t b) { return b >= sinks && b + 1 < n; };
  uint32_t ties = 0;
  for (uint32_t b = lo; b < hi; ++b) ties += candidate(b) && OrderedKey(scores[b]) == threshold;
  const uint32_t ties_before = BlockExclusiveScan(ties, warp_sums);
  auto chosen = [&](uint32_t b, uint32_t& tie_rank) {
    if (!candidate(b)) return true;  // forced: the sinks and the last block
    const uint32_t key = OrderedKey(scores[b]);
    if (key != threshold) return key > threshold;
    return tie_rank++ < need;
  };
  uint32_t count = 0, rank = ties_before;
  for (uint32_t b = lo; b < hi; ++b) count += chosen(b, rank);
  uint32_t pos = BlockExclusiveScan(count, warp_sums);
  rank = ties_before;
  for (uint32_t b = lo; b < hi; ++b) {
    if (chosen(b, rank)) emit(pos++, b);
  }
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
         (a.block_slots == nullptr) == (a.selected_slots == nullptr);
}

template <int kD>
cudaError_t LaunchScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  const dim3 grid((a.max_blocks + kTileBlocks - 1) / kTileBlocks, a.kv_heads, a.requests);
  if (a.params.combine == GqaCombine::kSum) {
    QuestScoreKernel<kD, true><<<grid, kScoreThreads, 2 * kD * sizeof(float), stream>>>(a);
  } else {
    const size_t smem = size_t{a.q_heads / a.kv_heads} * kD * sizeof(float);
    QuestScoreKernel<kD, false><<<grid, kScoreThreads, smem, stream>>>(a);
  }
  return cudaGetLastError();
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
  return a.head_dim == 128 ? LaunchScores<128>(a, stream) : LaunchScores<64>(a, stream);
}

cudaError_t LaunchQuestTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForTopK(a)) return cudaErrorInvalidValue;
  QuestTopKKernel<<<a.requests * a.kv_heads, kSelectThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchQuestSelect(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForScores(a) || !ValidForTopK(a)) return cudaErrorInvalidValue;  // nothing enqueued
  if (cudaError_t e = LaunchQuestScores(a, stream); e != cudaSuccess) return e;
  return LaunchQuestTopK(a, stream);
}

}  // namespace kvtier::kernels
