// Why the shapes: the kᵀΣ̄k term is a (tokens × d) · (d × d) product per query head, so the
// logits launch is a small SGEMM whose A operand (the key tile) is loaded once and reused by
// every head of the GQA group; everything after it reads only logits, values and sums.
#include "expected_attention.cuh"

#include <cfloat>
#include <cstdint>

namespace kvtier::kernels {
namespace {

__device__ uint32_t Blocks(const ExpectedAttentionShape& s) { return (s.tokens + s.block_tokens - 1) / s.block_tokens; }

constexpr int kTile = 64;       // keys per logits CTA (16 rows of 4 per thread row)
constexpr int kChunk = 16;      // Σ̄ rows staged in shared memory at a time
constexpr int kThreads = 256;

size_t AlignUp(size_t x) { return (x + 15) / 16 * 16; }

struct Layout {
  size_t logits = 0, stats = 0, best = 0, total = 0;
};

Layout WorkspaceLayout(const ExpectedAttentionShape& s) {
  Layout l;
  l.logits = 0;
  l.stats = AlignUp(l.logits + sizeof(float) * size_t{s.q_heads} * s.tokens);
  l.best = AlignUp(l.stats + sizeof(float2) * s.q_heads);
  l.total = AlignUp(l.best + sizeof(uint32_t) * s.kv_heads);
  return l;
}

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

template <class Op>
__device__ float BlockReduce(float v, Op op, float* scratch) {
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) v = op(v, scratch[w]);
  return v;
}

__global__ void SoftmaxStatsKernel(const float* __restrict__ logits, float2* __restrict__ stats, uint32_t tokens,
                                   uint32_t sinks) {
  __shared__ float scratch[32];
  const float* row = logits + size_t{blockIdx.x} * tokens;
  float m = -FLT_MAX;
  for (uint32_t t = sinks + threadIdx.x; t < tokens; t += blockDim.x) m = fmaxf(m, row[t]);
  m = BlockReduce(m, [](float a, float b) { return fmaxf(a, b); }, scratch);
  float s = 0;
  for (uint32_t t = sinks + threadIdx.x; t < tokens; t += blockDim.x) s += expf(row[t] - m);
  s = BlockReduce(s, [](float a, float b) { return a + b; }, scratch);
  if (threadIdx.x == 0) stats[blockIdx.x] = make_float2(m, s);
}

// One warp per (KV head, block). Scores are >= 0, so their bits order like uint32; `best` is
// the max over every head, as kvpress pads sinks with scores.max() + 1.
__global__ void BlockScoreKernel(const float* __restrict__ logits, const float2* __restrict__ stats,
                                 const float* __restrict__ values, float* __restrict__ block_scores,
                                 uint32_t* __restrict__ best, ExpectedAttentionShape s, float eps, bool use_vnorm) {
  const uint32_t warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t blocks = Blocks(s);
  if (warp >= s.kv_heads * blocks) return;
  const uint32_t kv = warp / blocks, b = warp % blocks;
  const uint32_t group = s.q_heads / s.kv_heads;
  const uint32_t begin = max(b * s.block_tokens, s.sink_tokens);
  const uint32_t end = min(s.tokens, (b + 1) * s.block_tokens);
  float sum = 0, top = 0;
  for (uint32_t t = begin; t < end; ++t) {
    float w = 0;
    for (uint32_t g = lane; g < group; g += 32) {
      const uint32_t qh = kv * group + g;
      const float2 st = stats[qh];
      w += expf(logits[size_t{qh} * s.tokens + t] - st.x) / st.y;
    }
    float sq = 0;
    if (use_vnorm) {
      const float* v = values + (size_t{kv} * s.tokens + t) * s.head_dim;
      for (uint32_t i = lane; i < s.head_dim; i += 32) sq = fmaf(v[i], v[i], sq);
    }
    for (int off = 16; off > 0; off /= 2) {
      w += __shfl_xor_sync(0xffffffffu, w, off);
      sq += __shfl_xor_sync(0xffffffffu, sq, off);
    }
    const float score = (w / group + eps) * (use_vnorm ? sqrtf(sq) : 1.0f);
    sum += score;
    top = fmaxf(top, score);
  }
  if (lane == 0) {
    block_scores[size_t{kv} * blocks + b] = sum;
    if (end > begin) atomicMax(best, __float_as_uint(top));  // one max over every head (kvpress)
  }
}

__global__ void SinkKernel(float* __restrict__ block_scores, const uint32_t* __restrict__ best,
                           ExpectedAttentionShape s) {
  const uint32_t sinks = min(s.sink_tokens, s.tokens);
  const uint32_t sink_blocks = (sinks + s.block_tokens - 1) / s.block_tokens;
  const uint32_t blocks = Blocks(s);
  for (uint32_t i = threadIdx.x; i < s.kv_heads * sink_blocks; i += blockDim.x) {
    const uint32_t kv = i / sink_blocks, b = i % sink_blocks;
    const uint32_t n = min(sinks, (b + 1) * s.block_tokens) - b * s.block_tokens;
    block_scores[size_t{kv} * blocks + b] += static_cast<float>(n) * (__uint_as_float(*best) + 1.0f);
  }
}

template <int kCols>
void LaunchLogits(const ExpectedAttentionDeviceArgs& a, float* logits, cudaStream_t stream) {
  const auto& s = a.shape;
  const dim3 grid((s.tokens + kTile - 1) / kTile, s.kv_heads);
  LogitsKernel<kCols><<<grid, kThreads, 0, stream>>>(a.keys, a.rotated_mean, a.rotated_cov, logits, s.tokens,
                                                    s.sink_tokens, s.group(), a.use_covariance);
}

}  // namespace

size_t ExpectedAttentionWorkspaceBytes(const ExpectedAttentionShape& shape) { return WorkspaceLayout(shape).total; }

cudaError_t LaunchExpectedAttention(const ExpectedAttentionDeviceArgs& a, cudaStream_t stream) {
  const auto& s = a.shape;
  if (s.kv_heads == 0 || s.q_heads % s.kv_heads != 0 || s.tokens == 0 || s.block_tokens == 0 ||
      a.keys == nullptr || a.rotated_mean == nullptr || a.workspace == nullptr || a.block_scores == nullptr ||
      (a.use_covariance && a.rotated_cov == nullptr) || (a.use_value_norm && a.values == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const Layout l = WorkspaceLayout(s);
  auto* base = static_cast<char*>(a.workspace);
  auto* logits = reinterpret_cast<float*>(base + l.logits);
  auto* stats = reinterpret_cast<float2*>(base + l.stats);
  auto* best = reinterpret_cast<uint32_t*>(base + l.best);
  switch (s.head_dim) {
    case 16: LaunchLogits<1>(a, logits, stream); break;
    case 32: LaunchLogits<2>(a, logits, stream); break;
    case 64: LaunchLogits<4>(a, logits, stream); break;
    case 128: LaunchLogits<8>(a, logits, stream); break;
    default: return cudaErrorInvalidValue;
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  SoftmaxStatsKernel<<<s.q_heads, 512, 0, stream>>>(logits, stats, s.tokens, s.sink_tokens);
  if (cudaError_t e = cudaMemsetAsync(best, 0, sizeof(uint32_t), stream); e != cudaSuccess) return e;
  const uint32_t warps = s.kv_heads * s.blocks();
  BlockScoreKernel<<<(warps + 7) / 8, 256, 0, stream>>>(logits, stats, a.values, a.block_scores, best, s, a.epsilon,
                                                        a.use_value_norm);
  if (s.sink_tokens > 0) SinkKernel<<<1, 256, 0, stream>>>(a.block_scores, best, s);
  return cudaGetLastError();
}

}  // namespace kvtier::kernels
