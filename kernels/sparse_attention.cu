// Paged sparse decode attention: the planner (PlanSparseAttention*, the workspace) and the
// public launch, which dispatches to one of four kernels:
//   - the streamed kernel (round 6, K/V in registers): sparse_attention_streamed.cu;
//   - the staged kernel (round 7, thread-block clusters): sparse_attention_staged.cu;
//   - the bulk kernel (round 10, the streamed kernel's tiles with K/V pages streamed into
//     shared memory by TMA bulk copies): sparse_attention_bulk.cu;
//   - the tensor-core kernel (round 10, mma.sync scores and P·V): sparse_attention_mma.cu.
// The streamed kernel's helpers and merge: sparse_attention_streamed_internal.cuh.
#include "sparse_attention.cuh"
#include "sparse_attention_internal.cuh"
#include "sparse_attention_streamed_internal.cuh"

#include <algorithm>
#include <cstdint>

namespace kvtier::kernels {
namespace {

using attention_internal::KernelPtr;
using attention_internal::kThreads;
using attention_internal::kWarps;
using attention_internal::Pick;

size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

// Allows `kernel` `smem` bytes of dynamic shared memory: with the static part the total may
// pass 48 KiB at any size, so every kernel with dynamic shared memory opts in.
template <class Kernel>
cudaError_t OptInSharedMemory(Kernel kernel, uint32_t smem) {
  if (smem == 0) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// CTAs of `kernel` (kThreads each, `smem` bytes of dynamic shared memory) resident per SM of
// the current device.
template <class Kernel>
cudaError_t ResidentCtasPerSm(Kernel kernel, uint32_t smem, uint32_t* ctas) {
  if (cudaError_t e = OptInSharedMemory(kernel, smem); e != cudaSuccess) return e;
  int per_sm = 0;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem); e != cudaSuccess) {
    return e;
  }
  *ctas = static_cast<uint32_t>(std::max(per_sm, 0));
  return cudaSuccess;
}

struct Layout {
  size_t counters = 0, claims = 0, partial = 0, lse = 0, total = 0;  // claims: balanced plans only
};

Layout WorkspaceLayout(const SparseAttentionShape& s, const SparseAttentionPlan& p) {
  Layout l;
  const size_t pieces = size_t{p.rows} * p.max_splits * p.heads_per_cta;  // (row, piece, head)
  l.counters = 0;
  l.claims = sizeof(uint32_t) * p.rows;
  l.partial = AlignUp(sizeof(uint32_t) * p.rows * (p.balance ? 2 : 1));
  l.lse = AlignUp(l.partial + sizeof(float) * pieces * s.head_dim);
  l.total = AlignUp(l.lse + sizeof(float) * pieces);
  return l;
}

uint32_t HeadsPerCta(uint32_t group) {
  for (uint32_t h : {8u, 4u, 2u}) {
    if (group % h == 0) return h;
  }
  return 1;
}

// Tokens a CTA of the deep variant loads in one round: 4 warps × (256/d rows × 8 loads).
uint32_t DeepRoundTokens(uint32_t head_dim) { return kWarps * (256 / head_dim) * 8; }

bool ShapeSupported(const SparseAttentionShape& s) {
  const uint32_t bt = s.block_tokens;
  return s.requests > 0 && s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 && s.q_heads >= s.kv_heads &&
         (s.head_dim == 64 || s.head_dim == 128) && bt > 0 && bt <= 256 && (bt & (bt - 1)) == 0 &&
         s.slot_bytes % 16 == 0 && s.slot_bytes >= s.slice_bytes();
}

}  // namespace

namespace {

// The split heuristic at `heads` per CTA, trying w = first_waves, first_waves + 1, ... waves.
SparseAttentionPlan PlanFromWaves(const SparseAttentionShape& shape, uint32_t heads, uint32_t max_pages_per_row,
                                  uint32_t sm_count, uint32_t ctas_per_sm, uint64_t first_waves) {
  SparseAttentionPlan p;
  if (shape.kv_heads == 0) return p;
  p.heads_per_cta = heads;
  p.rows = shape.requests * shape.kv_heads * (shape.group() / p.heads_per_cta);
  const uint64_t slots = uint64_t{std::max(sm_count, 1u)} * std::max(ctas_per_sm, 1u);
  const uint32_t pages = std::max(max_pages_per_row, 1u);
  const uint32_t min_chunk = std::min(pages, kSparseAttentionMinChunkPages);
  uint32_t best_chunk = 0;
  double best_use = -1;
  for (uint64_t waves = std::max<uint64_t>(first_waves, 1);; ++waves) {
    const uint64_t splits = std::max<uint64_t>(1, waves * slots / std::max(p.rows, 1u));
    const auto chunk = static_cast<uint32_t>(std::max<uint64_t>(min_chunk, (pages + splits - 1) / splits));
    if (chunk > kSparseAttentionMaxChunkPages) continue;
    const uint64_t ctas = uint64_t{p.rows} * ((pages + chunk - 1) / chunk);
    const double use = double(ctas) / double((ctas + slots - 1) / slots * slots);  // of the waves it occupies
    if (use > best_use + 1e-9) {
      best_use = use;
      best_chunk = chunk;
    }
    if (use >= 0.9 || chunk == min_chunk) break;
  }
  p.chunk_pages = best_chunk;
  p.max_splits = (pages + p.chunk_pages - 1) / p.chunk_pages;
  return p;
}

SparseAttentionPlan PlanWithHeads(const SparseAttentionShape& shape, uint32_t heads, uint32_t max_pages_per_row,
                                  uint32_t sm_count, uint32_t ctas_per_sm) {
  return PlanFromWaves(shape, heads, max_pages_per_row, sm_count, ctas_per_sm, 1);
}

SparseAttentionPlan PlanWithHeads(const SparseAttentionShape& shape, uint32_t heads, uint32_t max_pages_per_row,
                                  uint32_t sm_count, uint32_t ctas_per_sm, uint32_t deep_ctas_per_sm) {
  SparseAttentionPlan p = PlanWithHeads(shape, heads, max_pages_per_row, sm_count, ctas_per_sm);
  if (deep_ctas_per_sm == 0 || p.heads_per_cta > 4 || p.rows == 0 || shape.block_tokens == 0 ||
      (shape.head_dim != 64 && shape.head_dim != 128)) {
    return p;
  }
  const uint32_t round = DeepRoundTokens(shape.head_dim);
  if (shape.block_tokens > round) return p;  // a page alone takes more than one round
  const uint32_t chunk = round / shape.block_tokens, pages = std::max(max_pages_per_row, 1u);
  const uint64_t splits = (pages + chunk - 1) / chunk;
  // Only where the standard plan's CTAs take more than one round (half a deep round: 4
  // loads per tile) and the deep pieces (one round each) all fit in one wave.
  if (uint64_t{p.chunk_pages} * shape.block_tokens <= round / 2 ||
      uint64_t{p.rows} * splits > uint64_t{std::max(sm_count, 1u)} * deep_ctas_per_sm || splits > 65535u * 1024u) {
    return p;
  }
  p.chunk_pages = chunk;
  p.max_splits = static_cast<uint32_t>(splits);
  p.tile_loads = 8;
  return p;
}

uint32_t Log2Heads(uint32_t heads) { return heads >= 8 ? 3 : heads >= 4 ? 2 : heads >= 2 ? 1 : 0; }

}  // namespace

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm) {
  if (shape.kv_heads == 0) return {};
  return PlanWithHeads(shape, HeadsPerCta(shape.group()), max_pages_per_row, sm_count, ctas_per_sm);
}

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm, uint32_t deep_ctas_per_sm) {
  if (shape.kv_heads == 0) return {};
  return PlanWithHeads(shape, HeadsPerCta(shape.group()), max_pages_per_row, sm_count, ctas_per_sm, deep_ctas_per_sm);
}

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, const SparseAttentionOccupancy& occ) {
  if (shape.kv_heads == 0) return {};
  const uint32_t heads = HeadsPerCta(shape.group());
  const uint32_t sms = std::max(sm_count, 1u);
  auto plan = [&](uint32_t h) {
    return PlanWithHeads(shape, h, max_pages_per_row, sm_count, occ.standard[Log2Heads(h)], occ.deep[Log2Heads(h)]);
  };
  // CTAs of `p` resident at once if the whole grid is one wave of its variant, else 0.
  auto one_wave = [&](const SparseAttentionPlan& p) -> uint64_t {
    const uint32_t per_sm = p.tile_loads == 8 ? occ.deep[Log2Heads(p.heads_per_cta)]
                                              : occ.standard[Log2Heads(p.heads_per_cta)];
    const uint64_t ctas = uint64_t{p.rows} * p.max_splits;
    return per_sm > 0 && ctas <= uint64_t{sms} * per_sm ? ctas : 0;
  };
  const SparseAttentionPlan full = plan(heads);
  if (heads < 2 || occ.standard[Log2Heads(heads / 2)] == 0) return full;
  // Every K/V byte is read once per head chunk: half the heads per CTA reads it twice, the
  // second time from L2 only if the launch's K/V fits in it with room (≤ half).
  const uint64_t kv_bytes = uint64_t{shape.requests} * shape.kv_heads * std::max(max_pages_per_row, 1u) *
                            shape.slice_bytes();
  if (kv_bytes > occ.l2_bytes / 2) return full;
  const uint64_t resident = one_wave(full);
  if (resident == 0) return full;  // more than a wave: the SMs are full already
  // Half the heads also when it keeps as many CTAs resident (round 12c): each CTA then streams
  // twice the pages of its row and a row merges half as many pieces.
  const SparseAttentionPlan half = plan(heads / 2);
  return one_wave(half) >= resident ? half : full;
}

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, const SparseAttentionOccupancy& occ,
                                        SparseAttentionRule rule) {
  const SparseAttentionPlan p = PlanSparseAttention(shape, max_pages_per_row, sm_count, occ);
  if (rule != SparseAttentionRule::kRound9Dense || p.rows == 0 || p.tile_loads == 8 ||
      max_pages_per_row < kDenseRuleMinPages) {
    return p;
  }
  const uint32_t per_sm = occ.standard[Log2Heads(p.heads_per_cta)];
  if (per_sm == 0 || uint64_t{p.rows} * p.max_splits > uint64_t{std::max(sm_count, 1u)} * per_sm) {
    return p;  // occupancy unknown, or several waves already
  }
  return PlanFromWaves(shape, p.heads_per_cta, max_pages_per_row, sm_count, per_sm, kDenseRuleMinWaves);
}

SparseAttentionPlan PlanStagedSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                              uint32_t sm_count, const SparseAttentionStagedLimits& lim) {
  SparseAttentionPlan p;  // cluster 0: no staged plan
  if (shape.kv_heads == 0 || shape.q_heads % shape.kv_heads != 0 || lim.max_cluster < 2 || lim.ctas_per_sm == 0 ||
      max_pages_per_row == 0) {
    return p;
  }
  const uint32_t heads = std::min(HeadsPerCta(shape.group()), 4u);
  const uint64_t rows = uint64_t{shape.requests} * shape.kv_heads * (shape.group() / heads);
  if (rows == 0 || rows > 65535) return p;
  uint32_t cl = lim.max_cluster;
  while (cl > 2 && cl / 2 >= max_pages_per_row) cl /= 2;  // no cluster larger than the pages need
  for (; cl >= 2; cl /= 2) {
    const uint32_t chunk = (max_pages_per_row + cl - 1) / cl;
    const uint64_t dyn = uint64_t{chunk} * shape.slice_bytes();
    if (chunk > kStagedMaxChunkPages || dyn > lim.smem_per_cta) break;  // smaller clusters: longer pieces
    const uint64_t per_sm = std::min<uint64_t>(lim.ctas_per_sm, lim.smem_per_sm / (dyn + lim.static_smem + 1024));
    if (per_sm == 0 || rows * cl > uint64_t{std::max(sm_count, 1u)} * per_sm) continue;  // not one wave
    p.heads_per_cta = heads;
    p.rows = static_cast<uint32_t>(rows);
    p.chunk_pages = chunk;
    p.max_splits = cl;
    p.cluster = cl;
    return p;
  }
  return p;
}

cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionPlan* plan) {
  return PlanSparseAttentionForDevice(shape, type, max_pages_per_row, device, SparseAttentionKernels::kAuto, plan);
}

cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionKernels kernels, SparseAttentionPlan* plan) {
  return PlanSparseAttentionForDevice(shape, type, max_pages_per_row, device, kernels, SparseAttentionRule::kDefault,
                                      plan);
}

cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionKernels kernels, SparseAttentionRule rule,
                                         SparseAttentionPlan* plan) {
  if (plan == nullptr || !ShapeSupported(shape)) return cudaErrorInvalidValue;
  if (kernels != SparseAttentionKernels::kAuto && kernels != SparseAttentionKernels::kStreamed &&
      kernels != SparseAttentionKernels::kMma && kernels != SparseAttentionKernels::kMmaBalanced &&
      kernels != SparseAttentionKernels::kStaged) {
    return cudaErrorInvalidValue;
  }
  int sms = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess) return e;
  int l2 = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device); e != cudaSuccess) return e;
  // Occupancy of the largest head chunk and of half of it (the batch-1 alternative).
  const uint32_t heads = HeadsPerCta(shape.group());
  const auto sm_count = static_cast<uint32_t>(sms);

  // The register-tile streamed kernel (round 6): standard and deep variants.
  auto streamed = [&](SparseAttentionPlan* out) -> cudaError_t {
    SparseAttentionOccupancy occ;
    occ.l2_bytes = static_cast<uint64_t>(std::max(l2, 0));
    for (uint32_t h : {heads, heads / 2}) {
      if (h == 0) continue;
      for (bool deep : {false, true}) {
        const KernelPtr k = Pick(shape.head_dim, h, type, AttentionOutput::kFloat32, deep);
        if (k == nullptr) continue;
        if (cudaError_t e = ResidentCtasPerSm(k, 0, &(deep ? occ.deep : occ.standard)[Log2Heads(h)]); e != cudaSuccess) {
          return e;
        }
      }
    }
    *out = PlanSparseAttention(shape, max_pages_per_row, sm_count, occ, rule);
    return cudaSuccess;
  };
  // The tensor-core kernel: the same split heuristic on its own occupancy (no deep tiles).
  auto tensor_core = [&](bool balance, SparseAttentionPlan* out) -> cudaError_t {
    SparseAttentionOccupancy occ;
    occ.l2_bytes = static_cast<uint64_t>(std::max(l2, 0));
    const uint32_t smem = attention_internal::MmaSmemBytes(shape.head_dim);
    for (uint32_t h : {heads, heads / 2}) {
      if (h == 0) continue;
      const attention_internal::MmaKernelPtr k =
          attention_internal::PickMma(shape.head_dim, h, type, AttentionOutput::kFloat32);
      if (k == nullptr) continue;
      if (cudaError_t e = ResidentCtasPerSm(k, smem, &occ.standard[Log2Heads(h)]); e != cudaSuccess) return e;
    }
    *out = PlanSparseAttention(shape, max_pages_per_row, sm_count, occ, rule);
    out->mma = out->rows != 0;
    out->balance = out->mma && balance && shape.block_tokens >= kSparseAttentionBalanceMinBlockTokens;
    return cudaSuccess;
  };

  switch (kernels) {
    case SparseAttentionKernels::kAuto: {
      // Round 12c: the tensor-core kernel where its planner takes half the heads per CTA (short
      // lists at small batch); else, as in round 11c, the streamed kernel where its planner
      // takes a short-list plan (half the heads or deep tiles); else the tensor-core kernel.
      if (cudaError_t e = tensor_core(false, plan); e != cudaSuccess || plan->heads_per_cta < heads) return e;
      SparseAttentionPlan s;
      if (cudaError_t e = streamed(&s); e != cudaSuccess) return e;
      if (s.tile_loads == 8 || s.heads_per_cta < heads) *plan = s;
      return cudaSuccess;
    }
    case SparseAttentionKernels::kStaged: {
      // The default of rounds 7-11: the staged plan where one fits, else the tensor-core kernel.
      SparseAttentionStagedLimits lim;
      if (cudaError_t e = attention_internal::StagedLimitsForDevice(shape, type, std::min(heads, 4u), device, &lim);
          e != cudaSuccess) {
        return e;
      }
      const SparseAttentionPlan staged = PlanStagedSparseAttention(shape, max_pages_per_row, sm_count, lim);
      if (staged.cluster != 0) {
        *plan = staged;
        return cudaSuccess;
      }
      return tensor_core(false, plan);
    }
    case SparseAttentionKernels::kStreamed: return streamed(plan);
    case SparseAttentionKernels::kMma: return tensor_core(false, plan);
    case SparseAttentionKernels::kMmaBalanced: return tensor_core(true, plan);
  }
  return cudaErrorInvalidValue;
}

cudaError_t SparseAttentionCtasPerSm(const SparseAttentionShape& shape, HalfType type, AttentionOutput output,
                                     uint32_t heads_per_cta, uint32_t tile_loads, uint32_t* ctas_per_sm) {
  return SparseAttentionCtasPerSm(shape, type, output,
                                  SparseAttentionPlan{.heads_per_cta = heads_per_cta, .tile_loads = tile_loads},
                                  ctas_per_sm);
}

cudaError_t SparseAttentionCtasPerSm(const SparseAttentionShape& shape, HalfType type, AttentionOutput output,
                                     const SparseAttentionPlan& plan, uint32_t* ctas_per_sm) {
  if (ctas_per_sm == nullptr) return cudaErrorInvalidValue;
  *ctas_per_sm = 0;
  if (plan.cluster != 0) return cudaSuccess;
  const uint32_t h = plan.heads_per_cta;
  auto occupancy = [&](auto k, uint32_t smem) {
    return k == nullptr ? cudaSuccess : ResidentCtasPerSm(k, smem, ctas_per_sm);
  };
  if (plan.mma) {
    return occupancy(attention_internal::PickMma(shape.head_dim, h, type, output),
                     attention_internal::MmaSmemBytes(shape.head_dim));
  }
  if (plan.bulk) return occupancy(attention_internal::PickBulk(shape.head_dim, h, type, output), attention_internal::kBulkRingBytes);
  return occupancy(Pick(shape.head_dim, h, type, output, plan.tile_loads == 8), 0u);
}

const char* ApplySparseAttentionOverrides(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                          const SparseAttentionPlan& base, const SparseAttentionPlanOverrides& o,
                                          SparseAttentionPlan* plan) {
  if (plan == nullptr) return "no plan to write";
  if (!ShapeSupported(shape)) return "unsupported attention shape";
  if (base.cluster != 0) return "overrides apply to the streamed plan (plan with SparseAttentionKernels::kStreamed)";
  if (base.heads_per_cta == 0 || base.chunk_pages == 0) return "the base plan is empty";
  SparseAttentionPlan p = base;
  if (o.heads_per_cta != 0) {
    const uint32_t h = o.heads_per_cta;
    if (h != 1 && h != 2 && h != 4 && h != 8) return "heads per CTA must be 1, 2, 4 or 8";
    if (shape.group() % h != 0) return "heads per CTA must divide the GQA group (q_heads / kv_heads)";
    p.heads_per_cta = h;
  }
  const uint64_t rows = uint64_t{shape.requests} * shape.kv_heads * (shape.group() / p.heads_per_cta);
  if (rows > 65535) return "more than 65535 rows (requests x KV heads x head chunks)";
  p.rows = static_cast<uint32_t>(rows);
  if (o.chunk_pages != 0 && o.splits != 0) return "give chunk pages or splits, not both";
  const uint32_t pages = std::max(max_pages_per_row, 1u);
  if (o.chunk_pages != 0) {
    if (o.chunk_pages > kSparseAttentionMaxChunkPages) return "chunk pages must be 1 .. 256";
    p.chunk_pages = o.chunk_pages;
  } else if (o.splits != 0) {
    const uint32_t chunk = (pages + o.splits - 1) / o.splits;
    if (chunk > kSparseAttentionMaxChunkPages) return "too few splits: pieces would exceed 256 pages";
    p.chunk_pages = chunk;
  }
  p.max_splits = (pages + p.chunk_pages - 1) / p.chunk_pages;
  if (p.max_splits > 65535u * 1024u) return "too many pieces per row";
  if (o.tile_loads != 0) {
    if (o.tile_loads != 4 && o.tile_loads != 8) return "tile loads must be 4 or 8";
    p.tile_loads = o.tile_loads;
  }
  if (p.tile_loads == 8 && p.heads_per_cta > 4) return "deep tiles (8 loads) need heads per CTA <= 4";
  if (o.bulk > 2) return "bulk must be 0 (as planned), 1 (the bulk kernel) or 2 (registers)";
  if (o.mma > 2) return "mma must be 0 (as planned), 1 (the tensor-core kernel) or 2 (not)";
  if (o.balance > 2) return "balance must be 0 (as planned), 1 (balanced) or 2 (static pieces)";
  if (o.bulk != 0) p.bulk = o.bulk == 1;
  if (o.mma != 0) p.mma = o.mma == 1;
  if (o.balance != 0) p.balance = o.balance == 1;
  if (p.mma) {
    if (p.bulk) return "the tensor-core kernel and the bulk kernel are two kernels: pick one";
    if (p.tile_loads == 8) return "the tensor-core kernel has no deep tiles (8 loads)";
  }
  if (p.balance) {
    if (!p.mma) return "balanced rows need the tensor-core kernel (mma)";
    if (shape.block_tokens < kSparseAttentionBalanceMinBlockTokens) return "balanced rows need block tokens >= 16";
  }
  if (p.bulk) {
    if (p.tile_loads == 8) return "the bulk kernel has standard tiles (4 loads), not deep ones";
    if (!attention_internal::BulkFits(shape, p.heads_per_cta)) {
      return "the bulk kernel needs heads per CTA <= 4 and block tokens <= 4096 / head dim";
    }
  }
  *plan = p;
  return nullptr;
}

size_t SparseAttentionWorkspaceBytes(const SparseAttentionShape& shape, const SparseAttentionPlan& plan) {
  return WorkspaceLayout(shape, plan).total;
}

cudaError_t InitSparseAttentionWorkspace(void* workspace, const SparseAttentionShape& shape,
                                         const SparseAttentionPlan& plan, cudaStream_t stream) {
  if (workspace == nullptr) return cudaErrorInvalidValue;
  const Layout l = WorkspaceLayout(shape, plan);
  return cudaMemsetAsync(static_cast<char*>(workspace) + l.counters, 0, l.partial - l.counters, stream);
}

cudaError_t LaunchSparseAttention(const SparseAttentionDeviceArgs& a, const SparseAttentionPlan& plan,
                                  cudaStream_t stream) {
  const SparseAttentionShape& s = a.shape;
  if (!ShapeSupported(s) || a.arena == nullptr || a.queries == nullptr || a.page_offsets == nullptr ||
      a.page_slots == nullptr || a.last_page_tokens == nullptr || a.out == nullptr || a.workspace == nullptr ||
      reinterpret_cast<uintptr_t>(a.arena) % 16 != 0 || reinterpret_cast<uintptr_t>(a.queries) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.workspace) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const uint32_t h = plan.heads_per_cta;
  if ((h != 1 && h != 2 && h != 4 && h != 8) || s.group() % h != 0 || plan.chunk_pages == 0 ||
      plan.chunk_pages > kSparseAttentionMaxChunkPages || plan.max_splits == 0 || plan.max_splits > 65535u * 1024u ||
      plan.rows != s.requests * s.kv_heads * (s.group() / plan.heads_per_cta) || plan.rows > 65535 ||
      (plan.tile_loads != 0 && plan.tile_loads != 4 && plan.tile_loads != 8)) {
    return cudaErrorInvalidValue;
  }
  if (plan.cluster != 0) {
    return plan.bulk || plan.mma ? cudaErrorInvalidValue : attention_internal::LaunchStaged(a, plan, stream);
  }
  if (plan.bulk && (plan.mma || plan.tile_loads == 8 || !attention_internal::BulkFits(s, h))) return cudaErrorInvalidValue;
  if (plan.mma && plan.tile_loads == 8) return cudaErrorInvalidValue;
  if (plan.balance && (!plan.mma || s.block_tokens < kSparseAttentionBalanceMinBlockTokens)) return cudaErrorInvalidValue;
  const Layout l = WorkspaceLayout(s, plan);
  char* ws = static_cast<char*>(a.workspace);
  const auto shift = static_cast<uint32_t>(__builtin_ctz(s.block_tokens));
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(plan.max_splits, plan.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = a.programmatic_dependent_launch ? 1 : 0;
  auto* partial = reinterpret_cast<float*>(ws + l.partial);
  auto* lse = reinterpret_cast<float*>(ws + l.lse);
  auto* counters = reinterpret_cast<uint32_t*>(ws + l.counters);
  auto launch = [&](auto kernel, uint32_t smem, auto... extra) -> cudaError_t {
    if (kernel == nullptr) return cudaErrorInvalidValue;
    if (cudaError_t e = OptInSharedMemory(kernel, smem); e != cudaSuccess) return e;
    cfg.dynamicSmemBytes = smem;
    return cudaLaunchKernelEx(&cfg, kernel, a, plan.chunk_pages, shift, partial, lse, counters, extra...);
  };
  if (plan.mma) {
    uint32_t* claims = plan.balance ? reinterpret_cast<uint32_t*>(ws + l.claims) : nullptr;
    return launch(attention_internal::PickMma(s.head_dim, h, a.type, a.output),
                  attention_internal::MmaSmemBytes(s.head_dim), claims);
  }
  if (plan.bulk) {
    return launch(attention_internal::PickBulk(s.head_dim, h, a.type, a.output), attention_internal::kBulkRingBytes);
  }
  return launch(Pick(s.head_dim, h, a.type, a.output, plan.tile_loads == 8), 0u);
}

}  // namespace kvtier::kernels
