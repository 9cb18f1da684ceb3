// cp.async (sm_80+): asynchronous global → shared copies, committed in groups and waited for
// by count. The kernels that stage tiles in shared memory (Quest scores, staged sparse
// attention, Expected Attention's MMA pass) share these wrappers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::kernels::cp_async {

// 16 bytes, bypassing L1 (.cg).
__device__ __forceinline__ void Copy16(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}
// 16 bytes, or 16 zeros and no read when `valid` is false.
__device__ __forceinline__ void Copy16OrZero(void* smem, const void* global, bool valid) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(global), "r"(valid ? 16 : 0) : "memory");
}
// 4 bytes (.ca: sizes below 16 must go through L1).
__device__ __forceinline__ void Copy4(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void Commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void Wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace kvtier::kernels::cp_async
