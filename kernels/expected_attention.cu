// The launcher, the fp32 SIMT logits pass (fp32 keys with the exact covariance term) and the
// score pass after the logits. Why the shapes: the kᵀΣ̄k term is a (tokens × d) · (d × d)
// product per query head, so the logits launch is a small GEMM whose A operand (the key tile)
// is loaded once and reused by every head of the GQA group; the score pass reads only logits
// (L2-sized: q_heads · tokens floats), ‖v‖ and the softmax partials, in one launch: the
// softmax finalisation, block sums and sink rule were three launches (2–4 µs of drain and
// fill each per layer) and are one. The tensor-core logits passes are in
// expected_attention_stream.cu (streaming) and expected_attention_mma.cu (cp.async ring).
#include "expected_attention.cuh"

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "expected_attention_internal.cuh"

namespace kvtier::kernels {
namespace {

constexpr int kTile = static_cast<int>(detail::kTileKeys);  // keys per SIMT logits CTA
constexpr int kChunk = 16;      // Σ̄ rows staged in shared memory at a time
constexpr int kThreads = 256;

template <int kCols>
__global__ void __launch_bounds__(kThreads) LogitsKernel(const float* __restrict__ keys,
                                                          const float* __restrict__ mean,
                                                          const float* __restrict__ cov, float* __restrict__ logits,
                                                          uint32_t tokens, uint32_t sinks, uint32_t group,
                                                          bool use_cov) {
  constexpr int kD = 16 * kCols;
  constexpr int kStride = kD + 1;  // padded rows: the 4 key rows a warp reads sit in different banks
  __shared__ float ks[kTile * kStride];
  __shared__ float ss[kChunk * kD];
  const uint32_t kv = blockIdx.y;
  const uint32_t t0 = blockIdx.x * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const float* kbase = keys + (size_t{kv} * tokens) * kD;
  for (int i = tid; i < kTile * kD; i += kThreads) {
    const int r = i / kD, c = i % kD;
    const uint32_t t = t0 + r;
    ks[r * kStride + c] = t < tokens ? kbase[size_t{t} * kD + c] : 0.0f;
  }
  __syncthreads();
  const int tr = tid / 16, tc = tid % 16;  // rows tr*4 .. tr*4+3; columns tc + 16c
  const float inv_sqrt_d = rsqrtf(static_cast<float>(kD));
  for (uint32_t g = 0; g < group; ++g) {
    const uint32_t qh = kv * group + g;
    float acc[4][kCols] = {};
    if (use_cov) {
      const float* sigma = cov + size_t{qh} * kD * kD;
      for (int k0 = 0; k0 < kD; k0 += kChunk) {
        __syncthreads();  // the previous chunk is consumed
        for (int i = tid; i < kChunk * kD; i += kThreads) ss[i] = sigma[static_cast<size_t>(k0) * kD + i];
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kChunk; ++kk) {
          float a[4], b[kCols];
#pragma unroll
          for (int r = 0; r < 4; ++r) a[r] = ks[(tr * 4 + r) * kStride + k0 + kk];
#pragma unroll
          for (int c = 0; c < kCols; ++c) b[c] = ss[kk * kD + tc + 16 * c];
#pragma unroll
          for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int c = 0; c < kCols; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
      }
    }
    const float* mu = mean + size_t{qh} * kD;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float quad = 0, lin = 0;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float k = ks[(tr * 4 + r) * kStride + tc + 16 * c];
        quad = fmaf(acc[r][c], k, quad);
        lin = fmaf(mu[tc + 16 * c], k, lin);
      }
#pragma unroll
      for (int off = 8; off > 0; off /= 2) {  // the 16 lanes of one row group
        quad += __shfl_xor_sync(0xffffffffu, quad, off, 16);
        lin += __shfl_xor_sync(0xffffffffu, lin, off, 16);
      }
      const uint32_t t = t0 + tr * 4 + r;
      if (tc == 0 && t < tokens && t >= sinks) {
        logits[size_t{qh} * tokens + t] = lin * inv_sqrt_d + quad / (2.0f * kD);
      }
    }
  }
}

// (max, Σexp) pairs merge associatively; (-FLT_MAX, 0) is the identity.
__device__ float2 Merge(float2 a, float2 b) {
  const float m = fmaxf(a.x, b.x);
  return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
}

__device__ float2 BlockMerge(float2 v, float2* scratch) {
  for (int off = 16; off > 0; off /= 2) {
    v = Merge(v, make_float2(__shfl_xor_sync(0xffffffffu, v.x, off), __shfl_xor_sync(0xffffffffu, v.y, off)));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) v = Merge(v, scratch[w]);
  return v;
}

// grid (parts, q_heads): the softmax partial of one contiguous part of one head's non-sink keys
// (the SIMT path; the tensor-core logits pass writes its partials itself).
__global__ void SoftmaxPartialKernel(const float* __restrict__ logits, float2* __restrict__ partials, uint32_t tokens,
                                     uint32_t sinks, uint32_t* __restrict__ best) {
  if (threadIdx.x < 2 && blockIdx.x == 0 && blockIdx.y == 0) best[threadIdx.x] = 0;
  __shared__ float2 scratch[32];
  const uint32_t per_part = (tokens + gridDim.x - 1) / gridDim.x;
  const uint32_t begin = max(sinks, blockIdx.x * per_part), end = min(tokens, (blockIdx.x + 1) * per_part);
  const float* row = logits + size_t{blockIdx.y} * tokens;
  float2 v = make_float2(-FLT_MAX, 0.0f);
  for (uint32_t t = begin + threadIdx.x; t < end; t += blockDim.x) v = Merge(v, make_float2(row[t], 1.0f));
  v = BlockMerge(v, scratch);
  if (threadIdx.x == 0) partials[size_t{blockIdx.y} * gridDim.x + blockIdx.x] = v;
}

// One warp per token row: ‖v‖₂ of fp32 values (the SIMT path).
__global__ void ValueNormKernel(const float* __restrict__ values, float* __restrict__ vnorm, size_t rows,
                                uint32_t head_dim) {
  const size_t warps = size_t{gridDim.x} * (blockDim.x / 32);
  const uint32_t lane = threadIdx.x % 32;
  for (size_t r = size_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const float* v = values + r * head_dim;
    float sq = 0;
    for (uint32_t i = lane; i < head_dim; i += 32) sq = fmaf(v[i], v[i], sq);
    for (int off = 16; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
    if (lane == 0) vnorm[r] = sqrtf(sq);
  }
}

__device__ float2 WarpMerge(float2 v) {
  for (int off = 16; off > 0; off /= 2) {
    v = Merge(v, make_float2(__shfl_xor_sync(0xffffffffu, v.x, off), __shfl_xor_sync(0xffffffffu, v.y, off)));
  }
  return v;
}

constexpr int kScoreCtasMax = 1024;

// The score pass, one launch. CTA c owns a contiguous range of (KV head, block) items; it
// first merges the softmax partials of the query heads of the KV heads in its range into
// shared memory (`stats`, indexed by query head; dynamic, q_heads float2), then scores its
// items, `lanes` lanes per item (a power of two >= min(block_tokens, 32): two 16-token blocks
// per warp), a lane per token. Scores are >= 0, so their bits order like uint32; `best[0]` is
// the max over every head (kvpress pads sinks with scores.max() + 1), and the last CTA to
// take a ticket (`best[1]`) adds the sink bonus. The logits pass zeroed both words.
// No __launch_bounds__: with it ptxas caps the kernel at 32 registers (8 CTAs per SM) and
// spills; 40 registers keep 6.
__global__ void ScoreKernel(const float* __restrict__ logits, const float2* __restrict__ partials, uint32_t parts,
                            const float* __restrict__ vnorm, float* block_scores, uint32_t* best,
                            ExpectedAttentionShape s, float eps, bool use_vnorm, uint32_t lanes) {
  extern __shared__ float2 stats[];
  __shared__ uint32_t cta_best;
  __shared__ bool last;
  const uint32_t blocks = (s.tokens + s.block_tokens - 1) / s.block_tokens, items = s.kv_heads * blocks, group = s.q_heads / s.kv_heads;
  const uint32_t per_cta = (items + gridDim.x - 1) / gridDim.x;
  const uint32_t first = blockIdx.x * per_cta, end = min(items, first + per_cta);
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) cta_best = 0;
  if (first < end) {
    const uint32_t h1 = ((end - 1) / blocks + 1) * group;
    for (uint32_t h = first / blocks * group + warp; h < h1; h += kThreads / 32) {  // warp-uniform
      float2 v = make_float2(-FLT_MAX, 0.0f);
      for (uint32_t i = lane; i < parts; i += 32) v = Merge(v, partials[size_t{h} * parts + i]);
      v = WarpMerge(v);
      if (lane == 0) stats[h] = v;
    }
  }
  __syncthreads();
  const uint32_t per_warp = 32 / lanes, sub = lane / lanes, sl = lane % lanes;
  float top = 0;
  for (uint32_t base = first + warp * per_warp; base < end; base += (kThreads / 32) * per_warp) {  // warp-uniform
    const uint32_t item = base + sub;
    const uint32_t kv = item / blocks, b = item % blocks;
    float sum = 0;
    if (item < end) {
      const uint32_t begin = max(b * s.block_tokens, s.sink_tokens);
      const uint32_t stop = min(s.tokens, (b + 1) * s.block_tokens);
      for (uint32_t t = begin + sl; t < stop; t += lanes) {
        float w = 0;
        for (uint32_t g = 0; g < group; ++g) {
          const uint32_t qh = kv * group + g;
          const float2 st = stats[qh];
          w += expf(logits[size_t{qh} * s.tokens + t] - st.x) / st.y;
        }
        const float score = (w / group + eps) * (use_vnorm ? vnorm[size_t{kv} * s.tokens + t] : 1.0f);
        sum += score;
        top = fmaxf(top, score);
      }
    }
    for (uint32_t off = lanes / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (item < end && sl == 0) block_scores[size_t{kv} * blocks + b] = sum;
  }
  for (int off = 16; off > 0; off /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, off));
  if (lane == 0) atomicMax(&cta_best, __float_as_uint(top));
  __threadfence();  // this thread's block scores, before the ticket below
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicMax(&best[0], cta_best);
    __threadfence();
    last = atomicAdd(&best[1], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last || s.sink_tokens == 0) return;
  __threadfence();
  const float bonus = __uint_as_float(atomicAdd(&best[0], 0u)) + 1.0f;
  const uint32_t sinks = min(s.sink_tokens, s.tokens);
  const uint32_t sink_blocks = (sinks + s.block_tokens - 1) / s.block_tokens;
  for (uint32_t i = threadIdx.x; i < s.kv_heads * sink_blocks; i += blockDim.x) {
    const uint32_t kv = i / sink_blocks, b = i % sink_blocks;
    const uint32_t n = min(sinks, (b + 1) * s.block_tokens) - b * s.block_tokens;
    float* out = block_scores + size_t{kv} * blocks + b;
    *out = __ldcg(out) + static_cast<float>(n) * bonus;
  }
}

template <int kCols>
void LaunchLogits(const ExpectedAttentionDeviceArgs& a, float* logits, cudaStream_t stream) {
  const auto& s = a.shape;
  const dim3 grid((s.tokens + kTile - 1) / kTile, s.kv_heads);
  LogitsKernel<kCols><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(a.keys), a.rotated_mean, a.rotated_cov,
                                                    logits, s.tokens, s.sink_tokens, s.group(), a.use_covariance);
}

// The fp32 SIMT path: logits, then ‖v‖ and the softmax partials in their own passes.
cudaError_t LaunchSimtLogits(const ExpectedAttentionDeviceArgs& a, float* logits, float* vnorm, float2* partials,
                             uint32_t* best, uint32_t* parts, cudaStream_t stream) {
  const auto& s = a.shape;
  switch (s.head_dim) {
    case 16: LaunchLogits<1>(a, logits, stream); break;
    case 32: LaunchLogits<2>(a, logits, stream); break;
    case 64: LaunchLogits<4>(a, logits, stream); break;
    case 128: LaunchLogits<8>(a, logits, stream); break;
    default: return cudaErrorInvalidValue;
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (a.use_value_norm && a.value_norms == nullptr) {
    const size_t rows = size_t{s.kv_heads} * s.tokens;
    const auto ctas = static_cast<unsigned>(std::min<size_t>((rows + 7) / 8, 4096));
    ValueNormKernel<<<ctas, 256, 0, stream>>>(static_cast<const float*>(a.values), vnorm, rows, s.head_dim);
  }
  *parts = (s.tokens + 4095) / 4096;  // <= Tiles(s), the workspace's room
  SoftmaxPartialKernel<<<dim3(*parts, s.q_heads), 256, 0, stream>>>(logits, partials, s.tokens, s.sink_tokens, best);
  return cudaGetLastError();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

size_t ExpectedAttentionWorkspaceBytes(const ExpectedAttentionShape& shape) {
  return detail::WorkspaceLayout(shape).total;
}

cudaError_t LaunchExpectedAttention(const ExpectedAttentionDeviceArgs& a, cudaStream_t stream) {
  const auto& s = a.shape;
  const bool exact = a.use_covariance && a.covariance_rank == 0;
  const bool low_rank = a.use_covariance && a.covariance_rank > 0;
  const bool dims_ok = s.head_dim == 16 || s.head_dim == 32 || s.head_dim == 64 || s.head_dim == 128;
  const bool dtype_ok = a.kv_dtype == KvDType::kFp32 || a.kv_dtype == KvDType::kBf16 || a.kv_dtype == KvDType::kFp16;
  if (!dims_ok || !dtype_ok || s.kv_heads == 0 || s.q_heads % s.kv_heads != 0 || s.tokens == 0 ||
      s.block_tokens == 0 || a.keys == nullptr || a.rotated_mean == nullptr || a.workspace == nullptr ||
      a.block_scores == nullptr || (exact && a.rotated_cov == nullptr) ||
      (low_rank && (a.covariance_rank % 8 != 0 || a.covariance_rank > s.head_dim || a.cov_factors == nullptr ||
                    a.cov_residual == nullptr)) ||
      (a.use_value_norm && a.values == nullptr && a.value_norms == nullptr) ||
      (a.logits_stages != 0 && (a.logits_stages < 2 || a.logits_stages > 4)) ||
      (a.logits_pass != LogitsPass::kAuto && a.logits_pass != LogitsPass::kRing) || !Aligned16(a.keys) ||
      !Aligned16(a.values) || reinterpret_cast<uintptr_t>(a.value_norms) % alignof(float) != 0 ||
      !Aligned16(a.workspace)) {
    return cudaErrorInvalidValue;
  }
  const detail::WorkspaceLayout l(s);
  auto* base = static_cast<char*>(a.workspace);
  auto* logits = reinterpret_cast<float*>(base + l.logits);
  auto* vnorm = reinterpret_cast<float*>(base + l.vnorm);  // written before the score pass unless precomputed
  auto* partials = reinterpret_cast<float2*>(base + l.partials);
  auto* best = reinterpret_cast<uint32_t*>(base + l.best);
  uint32_t parts = 0;
  cudaError_t e = cudaSuccess;
  if (detail::UseStreamLogits(a)) {
    if (a.use_value_norm && a.value_norms == nullptr) {  // ‖v‖ first: the streaming pass reads only keys
      e = LaunchValueNorms({.dtype = a.kv_dtype, .head_dim = s.head_dim, .heads = s.kv_heads, .tokens = s.tokens,
                            .values = a.values, .values_head_stride = size_t{s.tokens} * s.head_dim, .norms = vnorm,
                            .norms_head_stride = s.tokens},
                           stream);
    }
    if (e == cudaSuccess) e = detail::LaunchStreamLogits(a, logits, partials, best, &parts, stream);
  } else if (exact && a.kv_dtype == KvDType::kFp32) {
    e = LaunchSimtLogits(a, logits, vnorm, partials, best, &parts, stream);
  } else {
    e = detail::LaunchMmaLogits(a, logits, vnorm, partials, best, &parts, stream);
  }
  if (e != cudaSuccess) return e;
  const uint32_t items = s.kv_heads * s.blocks();
  uint32_t lanes = 32;
  while (lanes / 2 >= s.block_tokens) lanes /= 2;  // the smallest power of two >= min(block_tokens, 32)
  const uint32_t per_step = (kThreads / 32) * (32 / lanes);
  const auto ctas = static_cast<unsigned>(std::min<uint32_t>((items + per_step - 1) / per_step, kScoreCtasMax));
  const float* norms = a.value_norms != nullptr ? a.value_norms : vnorm;
  ScoreKernel<<<ctas, kThreads, s.q_heads * sizeof(float2), stream>>>(logits, partials, parts, norms, a.block_scores,
                                                                      best, s, a.epsilon, a.use_value_norm, lanes);
  return cudaGetLastError();
}

}  // namespace kvtier::kernels
