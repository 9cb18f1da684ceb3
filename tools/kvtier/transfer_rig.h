// `kvtier bench transfer` / `kvtier probe` (CUDA builds): the pools the blocks sit in, their
// placement, and the timed copy paths (the kvtier movers, and the CUDA copies an engine would
// otherwise use) that the two commands compare. transfer_rig.cc defines them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "copy_blocks.cuh"
#include "cuda_util.h"
#include "gpu_bench_support.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#include "host_tier.h"
#include "kvtier/status.h"

namespace kvtier::cli::transfer {

struct Pools {
  std::unique_ptr<Tier> dram;
  std::byte* dram_base = nullptr;
  size_t dram_bytes = 0;
  std::string dram_pages = "cuda-host-alloc";  // page backing of the DRAM pool, for the report
  uint64_t dram_huge_bytes = 0;                // bytes of it in huge pages (smaps)
  std::unique_ptr<GpuHbmTier> hbm;
  CudaStream stream, stream2;
  uint64_t block = 0;
  uint32_t slots = 0;
};

// A DRAM pool (the DRAM tier: mmap + cudaHostRegister; or one cudaHostAlloc arena with
// `host_alloc`) and an HBM pool of `pool_bytes` each in slots of `block`, random contents.
Result<Pools> MakePools(uint64_t block, uint64_t pool_bytes, int device, bool host_alloc = false,
                        HugePages huge_pages = HugePages::kTransparent);

// Timing events (cudaEventDisableTiming would make cudaEventElapsedTime fail).
struct TimingEvents {
  cudaEvent_t a = nullptr, b = nullptr;
  TimingEvents() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~TimingEvents() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  double Seconds() const {
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms / 1e3;
  }
};

struct Placement {
  std::vector<uint32_t> dram, hbm;  // slot of block i in each pool
};

// Where the blocks sit (`--pattern`):
//   random       distinct random slots of both pools (blocks scattered as by a cache's churn
//                at block granularity: no two adjacent, so the movers' copy-engine runs
//                never apply)
//   sequential   block i at slot i of both pools
//   runs:N       DRAM slots in runs of N adjacent slots at random places; HBM slots random
//   churn:A:B    DRAM slots as the DRAM tier's own SlotPool hands them out after churn:
//                requests of A..B blocks (uniform) fill the pool to 90%, then one random
//                request at a time is released and new ones reserved, for four pool turnovers;
//                the blocks are the slots of new requests reserved after that (what an offload
//                gets); HBM slots random
struct Pattern {
  enum Kind { kRandom, kSequential, kRuns, kChurn } kind = kRandom;
  uint32_t run = 0;               // kRuns
  uint32_t min = 0, max = 0;      // kChurn: request sizes in blocks
};
Result<Pattern> ParsePattern(std::string_view text);
std::string PatternName(const Pattern& p);
Placement Place(uint32_t blocks, uint32_t slots, uint64_t seed, const Pattern& pattern = {});
// Runs of adjacent DRAM slots in a placement: their count and mean length in blocks.
std::pair<size_t, double> DramRuns(const Placement& pl);
std::byte* DramPtr(const Pools& p, uint32_t s);
std::byte* HbmPtr(const Pools& p, uint32_t s);
MoveBatch MakeBatch(const Placement& pl, bool h2d, uint64_t block);

// One cudaMemcpyBatchAsync of the blocks of `pl` (the copy engines' path for scattered blocks):
// the address lists are built when the object is made, not when it is enqueued.
struct BatchCopy {
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  BatchCopy(const Pools& p, const Placement& pl, bool h2d) : sizes(pl.dram.size(), p.block) {
    for (size_t i = 0; i < pl.dram.size(); ++i) {
      std::byte* d = DramPtr(p, pl.dram[i]);
      std::byte* h = HbmPtr(p, pl.hbm[i]);
      dsts.push_back(h2d ? static_cast<void*>(h) : static_cast<void*>(d));
      srcs.push_back(h2d ? static_cast<const void*>(d) : static_cast<const void*>(h));
    }
  }
  Status Enqueue(cudaStream_t s) {
    if (dsts.empty()) return Status();
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    KVT_RETURN_IF_CUDA_ERROR(
        cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), dsts.size(), &attr, &attr_index, 1, s),
        "cudaMemcpyBatchAsync");
    return Status();
  }
};

// Seconds of one copy of the placed blocks: by a kvtier mover (Submit to fence), one
// contiguous cudaMemcpyAsync of `total` bytes, one cudaMemcpyAsync per block, one
// cudaMemcpyBatchAsync, the copy kernel alone on uploaded descriptors (UploadDescriptors).
Result<double> TimeMover(GpuMover& m, const Placement& pl, bool h2d, uint64_t block);
Result<double> TimeContiguous(const Pools& p, uint64_t total, bool h2d, cudaStream_t s);
Result<double> TimePerBlock(const Pools& p, const Placement& pl, bool h2d);
Result<double> TimeBatch(const Pools& p, const Placement& pl, bool h2d);
Result<double> TimeKernelOnly(const Pools& p, const Placement& pl, const kernels::CopyLaunch& launch,
                              const DeviceBuffer& descs);
Result<DeviceBuffer> UploadDescriptors(const Pools& p, const Placement& pl, bool h2d, int device);

// Runs `fn` `repeats` times after one warm-up; the median of the GB/s figures.
template <class Fn>
Result<double> Gbps(uint64_t bytes, uint32_t repeats, Fn&& fn) {
  KVT_ASSIGN_OR_RETURN(double warm, fn());
  (void)warm;
  std::vector<double> rates;
  for (uint32_t r = 0; r < repeats; ++r) {
    KVT_ASSIGN_OR_RETURN(double secs, fn());
    rates.push_back(double(bytes) / secs / 1e9);
  }
  return rates.empty() ? 0.0 : Median(rates);
}

// H2D diagnostic (--copy-share): GB/s of the gather on (1 - share) of the blocks concurrent
// with one contiguous copy of share of the bytes.
Result<double> GatherPlusCopy(const Pools& p, GpuMover& up, const Placement& pl, double share, uint32_t repeats,
                              int device);

// --contend: a device-bound kernel next to a mover, as a decode step's attention reads KV from
// HBM on every SM while the next layer's blocks are loaded. The contender is the copy kernel
// (16-byte loads, 4 CTAs per SM) moving `bytes` between two HBM buffers.
struct Contender {
  DeviceBuffer from, to, descriptors;
  uint32_t count = 0;
  uint64_t bytes = 0;
  CudaStream stream;
  static Result<Contender> Make(int device, uint64_t bytes);
  Status Enqueue(uint32_t times);  // `times` launches back to back on its stream
};
struct Contention {
  double mover_gbps = 0;        // the mover's PCIe rate with the contender running
  double contender_alone = 0;   // the contender's HBM rate (read + write), alone
  double contender_shared = 0;  // the same with the mover running
};
// Medians over `repeats`: the contender alone, then the contender and one mover batch started
// together; the contender runs as many launches as take about `mover_seconds` alone.
Result<Contention> TimeContention(GpuMover& m, const Placement& pl, bool h2d, uint64_t block, Contender& c,
                                  double mover_seconds, uint32_t repeats);

}  // namespace kvtier::cli::transfer
