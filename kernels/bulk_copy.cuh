// Tensor Memory Accelerator bulk copies (sm_90+): global -> shared completed on an mbarrier,
// shared -> global committed in bulk groups and waited for by count. The kernels that move
// bytes through shared memory by bulk copies (the block copy kernel, copy_blocks_bulk.cu; the
// bulk sparse attention kernel, sparse_attention_bulk.cu) share these wrappers. Addresses
// 16-byte aligned, sizes multiples of 16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::kernels::bulk {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// An mbarrier expecting one arrival per phase (the thread that posts the bytes).
__device__ __forceinline__ void BarrierInit(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(SharedAddress(bar)) : "memory");
}
// After the barriers' initialisation, before any bulk copy uses them (the async proxy).
__device__ __forceinline__ void BarrierInitFence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Arrives on `bar` and tells it `bytes` more will land in this phase.
__device__ __forceinline__ void BarrierExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SharedAddress(bar)), "r"(bytes)
               : "memory");
}
// Until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void BarrierWait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(SharedAddress(bar)),
      "r"(parity)
      : "memory");
}
// global -> shared, `bytes` counted on `bar` when they land.
__device__ __forceinline__ void Load(void* smem, const void* global, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   SharedAddress(smem)),
               "l"(global), "r"(bytes), "r"(SharedAddress(bar))
               : "memory");
}
// shared -> global, as one bulk group of its own.
__device__ __forceinline__ void Store(void* global, const void* smem, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(global), "r"(SharedAddress(smem)),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Until at most kPending of this thread's bulk groups still read their shared memory.
template <int kPending>
__device__ __forceinline__ void WaitRead() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}
// Until every bulk group of this thread has completed (its writes done).
__device__ __forceinline__ void WaitAll() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

}  // namespace kvtier::kernels::bulk
