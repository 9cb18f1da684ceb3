#include "kvtier/geometry.h"

#include <fmt/format.h>

namespace kvtier {

uint32_t DTypeBytes(DType d) {
  switch (d) {
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kF32: return 4;
    case DType::kFp8E4M3: case DType::kFp8E5M2: return 1;
  }
  return 0;
}

std::string_view DTypeName(DType d) {
  switch (d) {
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF32: return "f32";
    case DType::kFp8E4M3: return "fp8e4m3";
    case DType::kFp8E5M2: return "fp8e5m2";
  }
  return "unknown";
}

Result<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kF16, DType::kBF16, DType::kF32, DType::kFp8E4M3, DType::kFp8E5M2}) {
    if (DTypeName(d) == name) return d;
  }
  return Status::InvalidArgument(
      fmt::format("unknown dtype '{}' (expected f16, bf16, f32, fp8e4m3 or fp8e5m2)", name));
}

KvGeometry KvGeometry::Llama3_8B() {
  return KvGeometry{.layers = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16, .dtype = DType::kBF16};
}

Status KvGeometry::Validate() const {
  constexpr uint32_t kMaxLayers = 1024, kMaxHeads = 1024, kMaxHeadDim = 1024;
  constexpr uint64_t kMaxBlockBytes = 64ull << 20;
  auto field = [](std::string_view name, uint32_t v, uint32_t max) -> Status {
    if (v == 0 || v > max) {
      return Status::InvalidArgument(fmt::format("geometry: {} = {} is out of range [1, {}]", name, v, max));
    }
    return Status();
  };
  KVT_RETURN_IF_ERROR(field("layers", layers, kMaxLayers));
  KVT_RETURN_IF_ERROR(field("kv_heads", kv_heads, kMaxHeads));
  KVT_RETURN_IF_ERROR(field("head_dim", head_dim, kMaxHeadDim));
  KVT_RETURN_IF_ERROR(field("block_tokens", block_tokens, kMaxBlockTokens));
  if (DTypeBytes(dtype) == 0) {
    return Status::InvalidArgument(fmt::format("geometry: unknown dtype {}", static_cast<int>(dtype)));
  }
  if (slice_bytes() % 16 != 0) {
    return Status::InvalidArgument(fmt::format(
        "geometry: a slice of {} B (2 x {} tokens x {} dims x {} B) is not a multiple of 16 B",
        slice_bytes(), block_tokens, head_dim, DTypeBytes(dtype)));
  }
  if (block_bytes() > kMaxBlockBytes) {
    return Status::InvalidArgument(
        fmt::format("geometry: a block of {} B exceeds the {} B limit", block_bytes(), kMaxBlockBytes));
  }
  return Status();
}

}  // namespace kvtier
