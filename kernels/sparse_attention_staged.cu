// The staged variant of paged decode attention (round 7), for short page lists at small
// batch (the sparse decode step at batch 1). Why: the streamed kernel's b1 sparse attention
// (2048 tokens × 8 KV heads, 8 MB) took ~15 µs, ~5× its bytes' time: it is a chain of
// latencies (pieces of 64 tokens loaded in 2 rounds into registers at 12–25% occupancy, then
// a global-memory merge: fence, atomic counter, the last CTA's loads of every partial).
// Here:
//   - the pieces of one row (request, KV head, head chunk) form ONE thread-block cluster of
//     `cluster` CTAs (≤ 16; 16 = 128 CTAs at batch 1 on an H100);
//   - each CTA copies its whole piece (≤ 8 pages at budget 2048: 64 KB) into shared memory
//     with cp.async, every 16-byte copy in flight at once, in two commit groups so the first
//     half is computed while the second arrives; only valid tokens are copied;
//   - 8 warps compute from shared memory (the streamed kernel's lane layout: kD/8 lanes per
//     token row, an online softmax per row group), merge into the CTA's (m, l, o);
//   - the pieces merge through distributed shared memory: one cluster barrier, each CTA
//     combines 1/cluster of the row's outputs from every CTA's (m, l, o) in rank order
//     (deterministic), one more cluster barrier before exit. No workspace, no atomics.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>

#include "cp_async.cuh"
#include "sparse_attention_internal.cuh"
#include "sparse_attention_tile.cuh"

namespace kvtier::kernels::attention_internal {
namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kT = 4;  // token-row instructions per warp tile

template <HalfType kType, AttentionOutput kOut>
__device__ __forceinline__ void Write(void* out, size_t index, float value) {
  if constexpr (kOut == AttentionOutput::kFloat32) {
    static_cast<float*>(out)[index] = value;
  } else if constexpr (kType == HalfType::kBf16) {
    static_cast<uint16_t*>(out)[index] = __bfloat16_as_ushort(__float2bfloat16_rn(value));
  } else {
    static_cast<uint16_t*>(out)[index] = __half_as_ushort(__float2half_rn(value));
  }
}


template <int kD, int kHeads>
struct StagedShared {
  uint32_t slots[kStagedMaxChunkPages];
  float warp_m[kWarps][kHeads], warp_l[kWarps][kHeads];
  float warp_o[kWarps][kHeads][kD];
  float cta_m[kHeads], cta_l[kHeads];  // this CTA's piece, read by the cluster's merge
  float cta_o[kHeads][kD];
};

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__global__ void __launch_bounds__(kThreads, 2)
    SparseAttentionStagedKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift) {
  constexpr int kL = kD / 8;      // lanes per token row (one 16-byte vector each)
  constexpr int kR = 32 / kL;     // token rows per warp instruction
  constexpr int kTile = kR * kT;  // tokens per warp tile
  __shared__ StagedShared<kD, kHeads> sh;
  extern __shared__ uint4 staged[];  // the piece's slices, K then V each, as in the arena
  cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  cg::cluster_group cluster = cg::this_cluster();

  const SparseAttentionShape& s = a.shape;
  const uint32_t rank = cluster.block_rank(), pieces_grid = cluster.num_blocks();
  const AttentionRow r = RowOf<kD, kHeads>(a, blockIdx.y);
  const uint32_t page_row = r.page_row, begin = r.begin, end = r.end;
  const size_t out_base = r.out_base;
  const uint32_t n = end - begin;
  const int tid = static_cast<int>(threadIdx.x);
  // Uniform over the cluster (same row): every CTA returns here or none does.
  if (n == 0 || n > chunk_pages * pieces_grid) {
    // No page: zeros. More pages than the plan holds: NaN, so misuse cannot pass for a result.
    if (rank == 0) {
      const float fill = n == 0 ? 0.0f : __int_as_float(0x7fc00000);
      for (int i = tid; i < kHeads * kD; i += kThreads) Write<kType, kOut>(a.out, out_base + i, fill);
    }
    return;
  }
  const uint32_t bt = 1u << block_shift;
  const uint32_t p0 = min(begin + rank * chunk_pages, end), p1 = min(p0 + chunk_pages, end);
  const uint32_t np = p1 - p0;
  const uint32_t last = min(a.last_page_tokens[page_row], bt);
  const uint32_t valid = np * bt - (np > 0 && p1 == end ? bt - last : 0u);
  for (uint32_t i = tid; i < np; i += kThreads) sh.slots[i] = a.page_slots[p0 + i];

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  LoadQueries<kD, kHeads, kType>(a, out_base, c, q);
  __syncthreads();  // sh.slots

  // Copy the valid tokens of the piece: 16-byte chunk x of page p is byte 16·x of its slice
  // (K rows, then V rows). Two commit groups: pages [0, half) and [half, np).
  const uint32_t slice_bytes = 2u * bt * kD * 2u;
  const uint32_t chunk_shift = block_shift + (kD == 128 ? 5 : 4);  // log2(slice_bytes / 16)
  const uint32_t row_shift = kD == 128 ? 4 : 3;                     // log2(16-byte chunks per token row)
  const uint32_t half = (np + 1) / 2;
  const char* arena = static_cast<const char*>(a.arena);
  auto copy_pages = [&](uint32_t from, uint32_t to) {
    for (uint32_t x = (from << chunk_shift) + tid; x < (to << chunk_shift); x += kThreads) {
      const uint32_t page = x >> chunk_shift, within = x & ((1u << chunk_shift) - 1);
      const uint32_t token = (within >> row_shift) & (bt - 1);
      const uint32_t page_valid = p0 + page + 1 == end ? last : bt;
      if (token < page_valid) {
        cp_async::Copy16(reinterpret_cast<char*>(staged) + size_t{page} * slice_bytes + size_t{within} * 16,
                  arena + size_t{sh.slots[page]} * s.slot_bytes + size_t{within} * 16);
      }
    }
    cp_async::Commit();
  };
  copy_pages(0, half);
  copy_pages(half, np);

  float m[kHeads], l[kHeads], o[kHeads][8];
  InitState(m, l, o);
  const char* smem = reinterpret_cast<const char*>(staged);
  const uint32_t v_offset = bt * kD * 2u;
  auto token_off = [&](uint32_t f) {
    return ((f >> block_shift) * slice_bytes) + (f & (bt - 1)) * (kD * 2u) + c * 16u;
  };
  // Tokens [t0, t1) of the piece, tiles of kTile tokens dealt to the warps round-robin.
  auto compute = [&](uint32_t t0, uint32_t t1) {
    for (uint32_t base = t0 + warp * kTile; base < t1; base += kWarps * kTile) {
      float sc[kT][kHeads];
#pragma unroll
      for (int i = 0; i < kT; ++i) {
        const uint32_t f = base + i * kR + rr;
        const bool ok = f < t1;
        float kf[8];
        Unpack<kType>(ok ? *reinterpret_cast<const uint4*>(smem + token_off(f)) : make_uint4(0, 0, 0, 0), kf);
        RowScores(q, kf, sc[i]);
      }
      ReduceMaskScores<kL, kR>(sc, base, rr, t1);
      OnlineSoftmax(sc, m, l, o);
      AccumulatePV<kType>(
          sc,
          [&](int i) {
            const uint32_t f = base + i * kR + rr;
            return f < t1 ? *reinterpret_cast<const uint4*>(smem + token_off(f) + v_offset) : make_uint4(0, 0, 0, 0);
          },
          o);
    }
  };
  const uint32_t split = min(half * bt, valid);
  cp_async::Wait<1>();
  __syncthreads();  // the first half's copies, every thread's
  compute(0, split);
  cp_async::Wait<0>();
  __syncthreads();
  compute(split, valid);

  // Merge the row groups of the warp (lanes c, c + kL, ...), then the warps, into cta_*.
  MergeRowGroups<kL>(m, l, o);
  StoreWarpState<kD>(m, l, o, warp, c, rr, sh.warp_m, sh.warp_l, sh.warp_o);
  __syncthreads();
  for (int i = tid; i < kHeads * kD; i += kThreads) {
    const int g = i / kD, dim = i % kD;
    float mm, ll, oo;
    MergeWarps(sh.warp_m, sh.warp_l, sh.warp_o, g, dim, mm, ll, oo);
    sh.cta_o[g][dim] = oo;
    if (dim == 0) {
      sh.cta_m[g] = mm;
      sh.cta_l[g] = ll;
    }
  }
  // The cluster's pieces: every CTA's cta_* written and visible (release/acquire) ...
  cluster.sync();
  // ... then CTA `rank` combines outputs [rank·per, (rank + 1)·per) over the ranks in order.
  constexpr uint32_t kOuts = kHeads * kD;
  const uint32_t per = (kOuts + pieces_grid - 1) / pieces_grid;
  for (uint32_t i = rank * per + tid; i < min((rank + 1) * per, kOuts); i += kThreads) {
    const uint32_t g = i / kD, dim = i % kD;
    float mm = -INFINITY, ll = 0.0f, oo = 0.0f;
    for (uint32_t p = 0; p < pieces_grid; ++p) {
      const StagedShared<kD, kHeads>* remote = cluster.map_shared_rank(&sh, p);
      float wa, wb, m_new;
      MergeScale(mm, remote->cta_m[g], wa, wb, m_new);
      mm = m_new;
      ll = ll * wa + remote->cta_l[g] * wb;
      oo = oo * wa + remote->cta_o[g][dim] * wb;
    }
    Write<kType, kOut>(a.out, out_base + i, ll > 0.0f ? oo / ll : 0.0f);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

using StagedKernelPtr = void (*)(SparseAttentionDeviceArgs, uint32_t, uint32_t);

template <int kD, int kHeads, HalfType kType>
StagedKernelPtr PickOut(AttentionOutput out) {
  return out == AttentionOutput::kFloat32 ? &SparseAttentionStagedKernel<kD, kHeads, kType, AttentionOutput::kFloat32>
                                          : &SparseAttentionStagedKernel<kD, kHeads, kType, AttentionOutput::kInputType>;
}

template <int kD, int kHeads>
StagedKernelPtr PickType(HalfType type, AttentionOutput out) {
  return type == HalfType::kBf16 ? PickOut<kD, kHeads, HalfType::kBf16>(out) : PickOut<kD, kHeads, HalfType::kFp16>(out);
}

template <int kD>
StagedKernelPtr PickHeads(uint32_t heads, HalfType type, AttentionOutput out) {
  switch (heads) {
    case 1: return PickType<kD, 1>(type, out);
    case 2: return PickType<kD, 2>(type, out);
    case 4: return PickType<kD, 4>(type, out);
    default: return nullptr;
  }
}

StagedKernelPtr PickStaged(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  switch (head_dim) {
    case 64: return PickHeads<64>(heads, type, out);
    case 128: return PickHeads<128>(heads, type, out);
    default: return nullptr;
  }
}

size_t StaticSmem(uint32_t head_dim, uint32_t heads) {
  return head_dim == 64 ? (heads == 1 ? sizeof(StagedShared<64, 1>) : heads == 2 ? sizeof(StagedShared<64, 2>)
                                                                                  : sizeof(StagedShared<64, 4>))
                        : (heads == 1 ? sizeof(StagedShared<128, 1>) : heads == 2 ? sizeof(StagedShared<128, 2>)
                                                                                   : sizeof(StagedShared<128, 4>));
}

// Opt in to the dynamic shared memory and to clusters above 8. The attributes are set again
// only when a launch needs more dynamic shared memory than the instance was last given (a
// host-side cache per instance: a launch in a loop or graph capture costs no attribute call).
cudaError_t Prepare(StagedKernelPtr k, size_t dyn) {
  static std::mutex mu;
  static std::map<StagedKernelPtr, size_t> prepared;  // instance → dynamic bytes opted in
  std::lock_guard<std::mutex> lock(mu);
  auto it = prepared.find(k);
  if (it != prepared.end() && it->second >= dyn) return cudaSuccess;
  if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1); e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn));
      e != cudaSuccess) {
    return e;
  }
  prepared[k] = dyn;
  return cudaSuccess;
}

}  // namespace

size_t StagedStaticSmemBytes(uint32_t head_dim, uint32_t heads) { return StaticSmem(head_dim, heads); }

cudaError_t StagedLimitsForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t heads, int device,
                                  SparseAttentionStagedLimits* limits) {
  *limits = {};
  const StagedKernelPtr k = PickStaged(shape.head_dim, heads, type, AttentionOutput::kFloat32);
  if (k == nullptr) return cudaSuccess;  // no staged variant: limits stay 0
  int major = 0, smem_sm = 0, smem_optin = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device); e != cudaSuccess) {
    return e;
  }
  if (major < 9) return cudaSuccess;  // clusters need sm_90
  if (cudaError_t e = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
      e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
      e != cudaSuccess) {
    return e;
  }
  // The compiled instance's static shared memory, not only the struct's size: the opt-in
  // fails (cudaErrorInvalidValue) when static + dynamic exceeds the per-block limit.
  cudaFuncAttributes attr{};
  if (cudaError_t e = cudaFuncGetAttributes(&attr, k); e != cudaSuccess) return e;
  const size_t fixed = std::max(StaticSmem(shape.head_dim, heads), attr.sharedSizeBytes);
  if (static_cast<size_t>(smem_optin) <= fixed) return cudaSuccess;
  const size_t dyn_max = static_cast<size_t>(smem_optin) - fixed;
  if (cudaError_t e = Prepare(k, dyn_max); e != cudaSuccess) return e;
  const int regs = std::max(attr.numRegs, 1);
  limits->ctas_per_sm = static_cast<uint32_t>(std::min(65536 / (regs * kThreads), 2048 / kThreads));
  limits->smem_per_sm = static_cast<uint64_t>(smem_sm);
  limits->smem_per_cta = dyn_max;
  limits->static_smem = fixed;
  // The largest cluster the device launches for a small piece (16 on an H100).
  for (uint32_t cl : {16u, 8u, 4u, 2u}) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = cl;
    at[0].val.clusterDim.y = 1;
    at[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(cl, 1);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = shape.slice_bytes();
    cfg.attrs = at;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, k, &cfg) == cudaSuccess && clusters > 0) {
      limits->max_cluster = cl;
      break;
    }
    (void)cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t LaunchStaged(const SparseAttentionDeviceArgs& a, const SparseAttentionPlan& plan, cudaStream_t stream) {
  const SparseAttentionShape& s = a.shape;
  const StagedKernelPtr k = PickStaged(s.head_dim, plan.heads_per_cta, a.type, a.output);
  if (k == nullptr || plan.cluster == 0 || plan.cluster > 16 || plan.max_splits != plan.cluster ||
      plan.chunk_pages > kStagedMaxChunkPages) {
    return cudaErrorInvalidValue;
  }
  const size_t dyn = size_t{plan.chunk_pages} * s.slice_bytes();
  if (cudaError_t e = Prepare(k, std::max<size_t>(dyn, 16)); e != cudaSuccess) return e;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = plan.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(plan.cluster, plan.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = dyn;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = a.programmatic_dependent_launch ? 2 : 1;
  const auto shift = static_cast<uint32_t>(__builtin_ctz(s.block_tokens));
  return cudaLaunchKernelEx(&cfg, k, a, plan.chunk_pages, shift);
}

}  // namespace kvtier::kernels::attention_internal
