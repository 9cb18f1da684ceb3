// `kvtier bench transfer` / `kvtier probe`: the pools, the placement and the timed copy paths
// (transfer_rig.h).
#include "transfer_rig.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>

#include "cuda_host_pinner.h"
#include "slot_pool.h"

namespace kvtier::cli::transfer {
namespace {

// A DRAM tier over one cudaHostAlloc'd arena, to compare with the DRAM pool's mmap +
// cudaHostRegister (--host-alloc cuda): same slots, another way of pinning.
class HostAllocTier final : public Tier {
 public:
  static Result<std::unique_ptr<HostAllocTier>> Create(uint64_t slot_bytes, uint32_t slots) {
    const uint64_t slot = (slot_bytes + 4095) / 4096 * 4096;
    KVT_ASSIGN_OR_RETURN(PinnedBuffer buf, PinnedBuffer::Allocate(slot * slots));
    return std::unique_ptr<HostAllocTier>(new HostAllocTier(std::move(buf), slot, slots));
  }
  std::string_view name() const override { return "cuda-host-alloc"; }
  const TierCaps& caps() const override { return caps_; }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override { return pool_.Reserve(count, "dram"); }
  void Release(std::span<const SlotId> slots, Fence last_use) override { pool_.Release(slots, last_use); }
  Location Locate(SlotId slot) const override {
    return MemoryAddress{kHostDevice, buf_.data() + uint64_t{slot.value()} * caps_.slot_bytes};
  }
  TierUsage usage() const override { return pool_.usage(); }
  std::byte* base() const { return buf_.data(); }
  size_t bytes() const { return buf_.size(); }

 private:
  HostAllocTier(PinnedBuffer buf, uint64_t slot, uint32_t slots) : buf_(std::move(buf)), pool_(slots) {
    caps_ = TierCaps{.kind = TierKind::kDram, .slot_bytes = slot, .slot_count = slots, .alignment = 4096,
                     .device_addressable = true, .persistent = false};
  }
  PinnedBuffer buf_;
  SlotPool pool_;
  TierCaps caps_;
};

}  // namespace

Result<Pools> MakePools(uint64_t block, uint64_t pool_bytes, int device, bool host_alloc, HugePages huge_pages) {
  if (CudaDeviceCount() <= device) return Status::Unavailable("no CUDA device is visible");
  KVT_RETURN_IF_CUDA_ERROR(cudaSetDevice(device), "cudaSetDevice");
  Pools p;
  p.block = block;
  p.slots = static_cast<uint32_t>(std::max<uint64_t>(4, pool_bytes / block));
  KVT_ASSIGN_OR_RETURN(auto pinner, CudaHostPinner::Create());
  HostTierOptions ho;
  ho.slot_bytes = block;
  ho.slot_count = p.slots;
  ho.pinner = pinner;
  ho.logger = StderrLogger::Default();
  ho.huge_pages = huge_pages;
  if (host_alloc) {
    KVT_ASSIGN_OR_RETURN(auto t, HostAllocTier::Create(block, p.slots));
    p.dram_base = t->base();
    p.dram_bytes = t->bytes();
    p.dram = std::move(t);
  } else {
    KVT_ASSIGN_OR_RETURN(auto t, HostTier::Create(ho));  // slots 4 KiB aligned, as in the DRAM tier
    p.dram_base = t->base();
    p.dram_bytes = t->bytes();
    p.dram_pages = std::string(HugePagesName(t->info().huge_pages));
    p.dram_huge_bytes = t->info().huge_page_bytes;
    p.dram = std::move(t);
  }
  KVT_ASSIGN_OR_RETURN(p.hbm, GpuHbmTier::Create({.device = device, .slot_bytes = block, .slot_count = p.slots}));
  KVT_ASSIGN_OR_RETURN(p.stream, CudaStream::Create(device));
  KVT_ASSIGN_OR_RETURN(p.stream2, CudaStream::Create(device));
  // Random, non-zero contents (never time zeros).
  std::mt19937_64 rng(11);
  std::byte* base = p.dram_base;
  const size_t n = p.dram_bytes / 8;
  for (size_t i = 0; i < n; i += 512) {
    const uint64_t w = rng();
    std::memcpy(base + i * 8, &w, 8);
  }
  return p;
}



Result<Pattern> ParsePattern(std::string_view text) {
  Pattern p;
  auto number = [&](std::string_view field) -> Result<uint32_t> {
    uint32_t v = 0;
    const auto [ptr, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
    if (ec != std::errc() || ptr != field.data() + field.size() || v == 0) {
      return Status::InvalidArgument(fmt::format("--pattern {}: '{}' is not a positive whole number", text, field));
    }
    return v;
  };
  if (text == "random") return p;
  if (text == "sequential") {
    p.kind = Pattern::kSequential;
    return p;
  }
  if (text.starts_with("runs:")) {
    p.kind = Pattern::kRuns;
    KVT_ASSIGN_OR_RETURN(p.run, number(text.substr(5)));
    return p;
  }
  if (text.starts_with("churn:")) {
    const std::string_view rest = text.substr(6);
    const size_t colon = rest.find(':');
    if (colon == std::string_view::npos) {
      return Status::InvalidArgument(fmt::format("--pattern {}: expected churn:MIN:MAX (blocks per request)", text));
    }
    p.kind = Pattern::kChurn;
    KVT_ASSIGN_OR_RETURN(p.min, number(rest.substr(0, colon)));
    KVT_ASSIGN_OR_RETURN(p.max, number(rest.substr(colon + 1)));
    if (p.min > p.max) return Status::InvalidArgument(fmt::format("--pattern {}: MIN above MAX", text));
    return p;
  }
  return Status::InvalidArgument(
      fmt::format("--pattern {} (random, sequential, runs:N or churn:MIN:MAX)", text));
}

std::string PatternName(const Pattern& p) {
  switch (p.kind) {
    case Pattern::kRandom: return "random";
    case Pattern::kSequential: return "sequential";
    case Pattern::kRuns: return fmt::format("runs:{}", p.run);
    case Pattern::kChurn: return fmt::format("churn:{}:{}", p.min, p.max);
  }
  return "?";
}

namespace {

// The DRAM slots of `blocks` blocks as a churned SlotPool hands them out (Pattern::kChurn).
std::vector<uint32_t> ChurnedSlots(uint32_t blocks, uint32_t slots, const Pattern& pattern, std::mt19937_64& rng) {
  SlotPool pool(slots);
  std::vector<std::vector<SlotId>> live;
  std::uniform_int_distribution<uint32_t> size(pattern.min, pattern.max);
  const uint32_t full = slots / 10 * 9;
  auto used = [&] { return slots - pool.usage().free_slots; };
  auto fill = [&] {
    while (used() < full) {
      auto r = pool.Reserve(std::min(size(rng), slots - used()), "churn");
      if (!r.ok() || r->empty()) break;
      live.push_back(std::move(r).value());
    }
  };
  auto release_one = [&] {
    const size_t i = rng() % live.size();
    pool.Release(live[i], Fence());
    live[i] = std::move(live.back());
    live.pop_back();
  };
  fill();
  const uint64_t mean = (uint64_t{pattern.min} + pattern.max) / 2;
  for (uint64_t turn = 0; turn < 4 * uint64_t{slots} / std::max<uint64_t>(mean, 1) && !live.empty(); ++turn) {
    release_one();
    fill();
  }
  while (pool.usage().free_slots < blocks && !live.empty()) release_one();
  std::vector<uint32_t> out;
  out.reserve(blocks);
  while (out.size() < blocks) {
    auto r = pool.Reserve(std::min<uint32_t>(size(rng), blocks - static_cast<uint32_t>(out.size())), "churn");
    if (!r.ok()) break;  // cannot happen: `blocks` slots were made free above
    for (SlotId s : *r) out.push_back(s.value());
  }
  return out;
}

}  // namespace

Placement Place(uint32_t blocks, uint32_t slots, uint64_t seed, const Pattern& pattern) {
  Placement pl;
  if (pattern.kind == Pattern::kSequential) {  // block i at slot i of both pools: one contiguous range each
    pl.dram.resize(blocks);
    std::iota(pl.dram.begin(), pl.dram.end(), 0u);
    pl.hbm = pl.dram;
    return pl;
  }
  std::vector<uint32_t> a(slots), b(slots);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(a.begin(), a.end(), rng);
  std::shuffle(b.begin(), b.end(), rng);
  pl.hbm.assign(b.begin(), b.begin() + blocks);
  if (pattern.kind == Pattern::kRandom) {
    pl.dram.assign(a.begin(), a.begin() + blocks);
  } else if (pattern.kind == Pattern::kRuns) {
    // Runs at distinct run-aligned places of the pool, in random order.
    const uint32_t run = std::min(pattern.run, slots);
    std::vector<uint32_t> starts(slots / run);
    std::iota(starts.begin(), starts.end(), 0u);
    std::shuffle(starts.begin(), starts.end(), rng);
    for (size_t r = 0; pl.dram.size() < blocks && r < starts.size(); ++r) {
      for (uint32_t i = 0; i < run && pl.dram.size() < blocks; ++i) pl.dram.push_back(starts[r] * run + i);
    }
  } else {
    pl.dram = ChurnedSlots(blocks, slots, pattern, rng);
  }
  KVT_CHECK_MSG(pl.dram.size() == blocks, "placement: fewer DRAM slots than blocks");
  return pl;
}

std::pair<size_t, double> DramRuns(const Placement& pl) {
  size_t runs = pl.dram.empty() ? 0 : 1;
  for (size_t i = 1; i < pl.dram.size(); ++i) runs += pl.dram[i] != pl.dram[i - 1] + 1;
  return {runs, runs ? double(pl.dram.size()) / double(runs) : 0.0};
}

std::byte* DramPtr(const Pools& p, uint32_t s) { return std::get<MemoryAddress>(p.dram->Locate(SlotId{s})).ptr; }
std::byte* HbmPtr(const Pools& p, uint32_t s) { return std::get<MemoryAddress>(p.hbm->Locate(SlotId{s})).ptr; }

MoveBatch MakeBatch(const Placement& pl, bool h2d, uint64_t block) {
  MoveBatch b;
  b.segments.reserve(pl.dram.size());
  for (size_t i = 0; i < pl.dram.size(); ++i) {
    const SlotId d{pl.dram[i]}, h{pl.hbm[i]};
    b.segments.push_back(h2d ? CopySegment{d, h, 0, 0, block} : CopySegment{h, d, 0, 0, block});
  }
  return b;
}

Result<double> TimeMover(GpuMover& m, const Placement& pl, bool h2d, uint64_t block) {
  MoveBatch b = MakeBatch(pl, h2d, block);  // the engine's block list: not timed
  const auto t0 = std::chrono::steady_clock::now();
  KVT_RETURN_IF_ERROR(m.Submit(std::move(b)).Wait());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Result<double> TimeContiguous(const Pools& p, uint64_t total, bool h2d, cudaStream_t s) {
  TimingEvents ev;
  cudaEventRecord(ev.a, s);
  std::byte* host = p.dram_base;
  std::byte* dev = HbmPtr(p, 0);
  KVT_RETURN_IF_CUDA_ERROR(h2d ? cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, s)
                               : cudaMemcpyAsync(host, dev, total, cudaMemcpyDeviceToHost, s),
                           "contiguous cudaMemcpyAsync");
  cudaEventRecord(ev.b, s);
  KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "contiguous copy");
  return ev.Seconds();
}

Result<double> TimePerBlock(const Pools& p, const Placement& pl, bool h2d) {
  TimingEvents ev;
  cudaStream_t s = p.stream.get();
  cudaEventRecord(ev.a, s);
  for (size_t i = 0; i < pl.dram.size(); ++i) {
    std::byte* d = DramPtr(p, pl.dram[i]);
    std::byte* h = HbmPtr(p, pl.hbm[i]);
    KVT_RETURN_IF_CUDA_ERROR(h2d ? cudaMemcpyAsync(h, d, p.block, cudaMemcpyHostToDevice, s)
                                 : cudaMemcpyAsync(d, h, p.block, cudaMemcpyDeviceToHost, s),
                             "per-block cudaMemcpyAsync");
  }
  cudaEventRecord(ev.b, s);
  KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "per-block copies");
  return ev.Seconds();
}


Result<double> TimeBatch(const Pools& p, const Placement& pl, bool h2d) {
  BatchCopy batch(p, pl, h2d);
  TimingEvents ev;
  cudaStream_t s = p.stream.get();
  cudaEventRecord(ev.a, s);
  KVT_RETURN_IF_ERROR(batch.Enqueue(s));
  cudaEventRecord(ev.b, s);
  KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "batched copies");
  return ev.Seconds();
}

// The copy kernel alone, timed with CUDA events, on descriptors built and uploaded before the
// clock starts: the GPU-side ceiling of the mover, without its host work (descriptor
// building, threads, fences). kvtier / kernel-only < 1 is host overhead in the mover.
Result<double> TimeKernelOnly(const Pools& p, const Placement& pl, const kernels::CopyLaunch& launch,
                              const DeviceBuffer& descs) {
  TimingEvents ev;
  cudaStream_t s = p.stream.get();
  cudaEventRecord(ev.a, s);
  KVT_RETURN_IF_CUDA_ERROR(kernels::LaunchCopyBlocks(reinterpret_cast<const kernels::DeviceCopyDescriptor*>(descs.data()),
                                                     static_cast<uint32_t>(pl.dram.size()), launch, s),
                           "copy kernel");
  cudaEventRecord(ev.b, s);
  KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "copy kernel");
  return ev.Seconds();
}

Result<DeviceBuffer> UploadDescriptors(const Pools& p, const Placement& pl, bool h2d, int device) {
  std::vector<kernels::DeviceCopyDescriptor> d(pl.dram.size());
  for (size_t i = 0; i < d.size(); ++i) {
    const auto dram = reinterpret_cast<uint64_t>(DramPtr(p, pl.dram[i]));
    const auto hbm = reinterpret_cast<uint64_t>(HbmPtr(p, pl.hbm[i]));
    d[i] = {h2d ? dram : hbm, h2d ? hbm : dram, p.block, 0};
  }
  const size_t bytes = d.size() * sizeof(d[0]);
  KVT_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(device, bytes));
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpy(buf.data(), d.data(), bytes, cudaMemcpyHostToDevice), "uploading descriptors");
  return buf;
}



// H2D diagnostic: the gather kernel moves the first (1 - share) of the blocks while one
// contiguous cudaMemcpyAsync moves share of the bytes (from the start of the DRAM pool to a
// separate device buffer) on a second stream, concurrently. GB/s of all bytes over the wall
// time of both. Above the gather alone = the link has headroom beyond the SM-issued reads.
Result<double> GatherPlusCopy(const Pools& p, GpuMover& up, const Placement& pl, double share, uint32_t repeats,
                              int device) {
  const size_t n = pl.dram.size();
  const size_t copied_blocks = std::min(n - 1, static_cast<size_t>(double(n) * share + 0.5));
  Placement gathered = pl;
  gathered.dram.resize(n - copied_blocks);
  gathered.hbm.resize(n - copied_blocks);
  const uint64_t copy_bytes = uint64_t{copied_blocks} * p.block;
  const uint64_t all = uint64_t{n} * p.block;
  if (copy_bytes == 0) return Status::InvalidArgument("--copy-share rounds to 0 blocks");
  KVT_ASSIGN_OR_RETURN(DeviceBuffer target, DeviceBuffer::Allocate(device, copy_bytes));
  return Gbps(all, repeats, [&]() -> Result<double> {
    MoveBatch b = MakeBatch(gathered, true, p.block);
    const auto t0 = std::chrono::steady_clock::now();
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(target.data(), p.dram_base, copy_bytes, cudaMemcpyHostToDevice,
                                             p.stream2.get()),
                             "contiguous share");
    Fence f = up.Submit(std::move(b));
    KVT_RETURN_IF_ERROR(f.Wait());
    KVT_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(p.stream2.get()), "contiguous share");
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
}

Result<Contender> Contender::Make(int device, uint64_t bytes) {
  constexpr uint64_t kPiece = 64 << 10;
  Contender c;
  c.count = static_cast<uint32_t>(std::max<uint64_t>(1, bytes / kPiece));
  c.bytes = uint64_t{c.count} * kPiece;
  KVT_ASSIGN_OR_RETURN(c.from, DeviceBuffer::Allocate(device, c.bytes));
  KVT_ASSIGN_OR_RETURN(c.to, DeviceBuffer::Allocate(device, c.bytes));
  KVT_ASSIGN_OR_RETURN(c.stream, CudaStream::Create(device));
  std::vector<kernels::DeviceCopyDescriptor> d(c.count);
  for (uint32_t i = 0; i < c.count; ++i) {
    d[i] = {reinterpret_cast<uint64_t>(c.from.data() + i * kPiece), reinterpret_cast<uint64_t>(c.to.data() + i * kPiece),
            kPiece, 0};
  }
  KVT_ASSIGN_OR_RETURN(c.descriptors, DeviceBuffer::Allocate(device, d.size() * sizeof(d[0])));
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpy(c.descriptors.data(), d.data(), d.size() * sizeof(d[0]), cudaMemcpyHostToDevice),
                           "contender descriptors");
  KVT_RETURN_IF_CUDA_ERROR(cudaMemset(c.from.data(), 0x3C, c.bytes), "contender buffer");
  return c;
}

Status Contender::Enqueue(uint32_t times) {
  const kernels::CopyLaunch launch{.uniform_bytes = 64 << 10};
  for (uint32_t t = 0; t < times; ++t) {
    KVT_RETURN_IF_CUDA_ERROR(
        kernels::LaunchCopyBlocks(reinterpret_cast<const kernels::DeviceCopyDescriptor*>(descriptors.data()), count,
                                  launch, stream.get()),
        "contender kernel");
  }
  return Status();
}

Result<Contention> TimeContention(GpuMover& m, const Placement& pl, bool h2d, uint64_t block, Contender& c,
                                  double mover_seconds, uint32_t repeats) {
  auto contender_alone = [&](uint32_t times) -> Result<double> {
    TimingEvents ev;
    cudaEventRecord(ev.a, c.stream.get());
    KVT_RETURN_IF_ERROR(c.Enqueue(times));
    cudaEventRecord(ev.b, c.stream.get());
    KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "contender");
    return ev.Seconds();
  };
  KVT_ASSIGN_OR_RETURN(double one, contender_alone(4));  // warm-up, and one launch's time
  const auto times = static_cast<uint32_t>(std::clamp(mover_seconds / (one / 4), 1.0, 10000.0));
  std::vector<double> mover, alone, shared;
  for (uint32_t r = 0; r < repeats; ++r) {
    KVT_ASSIGN_OR_RETURN(double a, contender_alone(times));
    alone.push_back(2.0 * double(c.bytes) * times / a / 1e9);
    MoveBatch b = MakeBatch(pl, h2d, block);
    TimingEvents ev;
    cudaEventRecord(ev.a, c.stream.get());
    KVT_RETURN_IF_ERROR(c.Enqueue(times));
    cudaEventRecord(ev.b, c.stream.get());
    const auto t0 = std::chrono::steady_clock::now();
    KVT_RETURN_IF_ERROR(m.Submit(std::move(b)).Wait());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.b), "contender");
    mover.push_back(double(pl.dram.size() * block) / secs / 1e9);
    shared.push_back(2.0 * double(c.bytes) * times / ev.Seconds() / 1e9);
  }
  return Contention{Median(mover), Median(alone), Median(shared)};
}

}  // namespace kvtier::cli::transfer
