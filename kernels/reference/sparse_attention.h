// CPU reference of paged (sparse or dense) decode attention, the attention of kvtier's
// sparse-attention path. The CUDA kernel (kernels/sparse_attention.cuh) computes the same
// numbers and is tested against this.
//
// KV lives in an arena of slice slots: slot s starts at element s·slot_elems() and holds one
// slice (one KV head of one block): K [block_tokens][d] then V [block_tokens][d], 16-bit
// floats (bf16 or fp16) stored as uint16_t. For each request and KV head (a "row",
// index r·kv_heads + h) a page list names the slots to attend, in order; every listed page
// is full except the last, which holds `last_page_tokens[row]` valid tokens (1..block_tokens).
// Dense attention is the same call with every block of the sequence listed.
//
// Per query head (q head qh reads KV head qh / group, group = q_heads / kv_heads):
//     out = Σ_t softmax_t(q·k_t / √d) · v_t      over the listed tokens,
// computed as the kernel does it: one pass in page order with an online softmax
// (running max and sum), fp32 dot products and accumulators.
//
// Arrays are C order, dense; functions run on the calling thread, allocate nothing and
// borrow their inputs. Shapes are checked by the binding layers, not here.
#pragma once

#include <cstdint>
#include <span>

namespace kvtier::kernels {

enum class HalfType : uint8_t { kBf16 = 0, kFp16 = 1 };

// IEEE conversions: round to nearest even, NaN stays NaN, overflow becomes ±inf.
float Bf16ToFloat(uint16_t h);
uint16_t FloatToBf16(float f);
float Fp16ToFloat(uint16_t h);
uint16_t FloatToFp16(float f);
inline float HalfToFloat(HalfType t, uint16_t h) { return t == HalfType::kBf16 ? Bf16ToFloat(h) : Fp16ToFloat(h); }
inline uint16_t FloatToHalf(HalfType t, float f) { return t == HalfType::kBf16 ? FloatToBf16(f) : FloatToFp16(f); }

struct SparseAttentionShape {
  uint32_t requests = 0;
  uint32_t q_heads = 0;   // a multiple of kv_heads
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_tokens = 16;
  uint64_t slot_bytes = 0;  // stride between slots in the arena; >= slice_bytes()

  uint32_t group() const { return q_heads / kv_heads; }
  uint32_t rows() const { return requests * kv_heads; }
  uint64_t slice_bytes() const { return uint64_t{2} * block_tokens * head_dim * sizeof(uint16_t); }
  uint64_t slot_elems() const { return slot_bytes / sizeof(uint16_t); }
};

// Page lists in CSR form over rows (r·kv_heads + h): row i lists slots[offsets[i] ..
// offsets[i+1]); offsets has rows() + 1 entries, slots offsets[rows()], last_page_tokens rows().
struct PageListsView {
  std::span<const uint32_t> offsets;
  std::span<const uint32_t> slots;
  std::span<const uint32_t> last_page_tokens;
};

// queries [requests][q_heads][d] (16-bit, `type`), arena as above → out [requests][q_heads][d]
// fp32. A row with no valid token (an empty page list) gets zeros.
void SparseAttention(const SparseAttentionShape& shape, HalfType type, std::span<const uint16_t> arena,
                     std::span<const uint16_t> queries, const PageListsView& pages, std::span<float> out);

}  // namespace kvtier::kernels
