// `kvtier bench transfer` and `kvtier probe` (CUDA builds): the kvtier movers against the
// CUDA copy paths an engine would otherwise use, on the same bytes, in the same run.
//
// Blocks sit at random slots of two pools (pinned DRAM and HBM, 4 GiB each by default), as
// KV blocks do in a serving engine; the baselines move exactly the same blocks:
//   contiguous  one cudaMemcpyAsync of the same total bytes (the PCIe ceiling)
//   per_block   one cudaMemcpyAsync per block
//   batch       one cudaMemcpyBatchAsync of all blocks
// Diagnostics: --pattern sequential puts block i at slot i of both pools (per-block cost
// without the translation/locality cost of random slots); --huge-pages picks the DRAM pool's
// page backing; --copy-share F (h2d) also runs the gather kernel on (1-F) of the blocks
// concurrently with one contiguous cudaMemcpyAsync of F of the bytes on a second stream
// (method "gather+copy"): does the link carry more than the SM-issued reads alone? With
// --direction both, F of each direction's blocks go by cudaMemcpyBatchAsync next to the movers
// (method "kvtier+batch"): do the copy engines add to the SM-issued traffic of both directions?
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "commands.h"
#include "copy_blocks.cuh"
#include "gpu_mover.h"
#include "host_tier.h"
#include "transfer_rig.h"

namespace kvtier::cli {
namespace {

using namespace transfer;  // NOLINT: this command's own rig (transfer_rig.h)

struct TransferOptions {
  std::string direction = "h2d";
  uint64_t block_size = 16384;
  uint64_t total = 1ull << 30;
  uint64_t pool = 4ull << 30;
  std::string mode = "auto";
  uint32_t cpu_threads = 8;
  uint32_t ctas = 0;
  uint32_t unroll = 4;
  uint32_t repeats = 5;
  int device = 0;
  std::string host_alloc = "register";
  std::string huge_pages = "transparent";
  std::string pattern = "random";
  std::string cpu_copy = "auto";
  uint32_t d2h_ctas = 0;  // 0 = --ctas
  uint32_t ctas_per_sm = 0;  // GpuMoverOptions::ctas_per_sm (0 = by direction: 4 h2d, 2 d2h)
  std::string baselines = "all";  // all, or contiguous (skips per_block and batch: diagnostic runs)
  double copy_share = 0;  // h2d: gather + concurrent contiguous copy of this share; both: movers + batch share
  uint64_t launch_bytes = 32 << 20;  // GpuMoverOptions::launch_bytes
  uint64_t first_launch_bytes = 1 << 20;  // GpuMoverOptions::first_launch_bytes (0 = no ramp)
  std::string descriptor_upload = "side";  // GpuMoverOptions::descriptor_upload: side or inline
  bool streaming = false;
  uint64_t engine_run_bytes = 128 << 10;  // GpuMoverOptions::engine_run_bytes (0 = off)
  uint64_t engine_piece_bytes = 8 << 20;  // GpuMoverOptions::engine_piece_bytes
  uint32_t engine_pieces = 4;             // GpuMoverOptions::engine_pieces
  uint32_t engine_streams = 2;            // GpuMoverOptions::engine_streams
  std::string copy_kernel = "auto";       // GpuMoverOptions::copy_kernel: loads, bulk or auto
  uint32_t bulk_chunk = 16 << 10;         // GpuMoverOptions::bulk_chunk_bytes
  uint32_t bulk_stages = 4;               // GpuMoverOptions::bulk_stages
  bool contend = false;   // h2d / d2h: also time the mover next to a device-bound kernel
  bool pair_diag = false;  // both: each mover next to a contiguous copy of the other direction
  bool json = false;
};

struct Row {
  std::string direction, method;
  double gbps;
};

Status RunTransfer(const TransferOptions& o, std::vector<Row>* rows) {
  if (o.block_size == 0 || o.block_size % 16 != 0) {
    return Status::InvalidArgument(fmt::format("--block-size {} is not a positive multiple of 16", o.block_size));
  }
  if (o.direction != "h2d" && o.direction != "d2h" && o.direction != "both") {
    return Status::InvalidArgument(fmt::format("--direction {} (expected h2d, d2h or both)", o.direction));
  }
  KVT_ASSIGN_OR_RETURN(D2hMode mode, ParseD2hMode(o.mode));
  const uint32_t blocks = static_cast<uint32_t>(std::max<uint64_t>(1, o.total / o.block_size));
  const uint64_t bytes = uint64_t{blocks} * o.block_size;
  const uint64_t pool = std::max<uint64_t>(o.pool, 2 * bytes + o.block_size);
  if (o.host_alloc != "register" && o.host_alloc != "cuda") {
    return Status::InvalidArgument(fmt::format("--host-alloc {} (register or cuda)", o.host_alloc));
  }
  KVT_ASSIGN_OR_RETURN(HugePages huge, ParseHugePages(o.huge_pages));
  KVT_ASSIGN_OR_RETURN(HostCopyPath cpu_copy, ParseHostCopyPath(o.cpu_copy));
  KVT_ASSIGN_OR_RETURN(DescriptorUpload upload, ParseDescriptorUpload(o.descriptor_upload));
  KVT_ASSIGN_OR_RETURN(Pattern pattern, ParsePattern(o.pattern));
  if (o.baselines != "all" && o.baselines != "contiguous") {
    return Status::InvalidArgument(fmt::format("--baselines {} (all or contiguous)", o.baselines));
  }
  if (!(o.copy_share >= 0 && o.copy_share < 1)) {
    return Status::InvalidArgument(fmt::format("--copy-share {} out of [0, 1)", o.copy_share));
  }
  KVT_ASSIGN_OR_RETURN(Pools p, MakePools(o.block_size, pool, o.device, o.host_alloc == "cuda", huge));
  fmt::print(stderr, "kvtier bench transfer: DRAM pool {:.2f} GiB, pages {}, {:.0f} MiB in huge pages; pattern {}\n",
             double(p.dram_bytes) / double(1ull << 30), p.dram_pages, double(p.dram_huge_bytes) / double(1 << 20),
             o.pattern);
  if (uint64_t{p.slots} < 2ull * blocks) return Status::InvalidArgument("--pool is too small for --total");
  GpuMoverOptions mo;
  mo.device = o.device;
  mo.d2h_mode = mode;
  mo.cpu_threads = o.cpu_threads;
  mo.ctas = o.ctas;
  mo.ctas_per_sm = o.ctas_per_sm;
  mo.unroll = o.unroll;
  mo.streaming = o.streaming;
  mo.cpu_copy = cpu_copy;
  mo.launch_bytes = o.launch_bytes;
  mo.first_launch_bytes = o.first_launch_bytes;
  mo.descriptor_upload = upload;
  mo.engine_run_bytes = o.engine_run_bytes;
  mo.engine_piece_bytes = o.engine_piece_bytes;
  mo.engine_pieces = o.engine_pieces;
  mo.engine_streams = o.engine_streams;
  KVT_ASSIGN_OR_RETURN(mo.copy_kernel, ParseCopyKernel(o.copy_kernel));
  mo.bulk_chunk_bytes = o.bulk_chunk;
  mo.bulk_stages = o.bulk_stages;
  KVT_ASSIGN_OR_RETURN(auto up, GpuMover::Create(p.dram.get(), p.hbm.get(), mo));
  if (o.d2h_ctas != 0) mo.ctas = o.d2h_ctas;
  KVT_ASSIGN_OR_RETURN(auto down, GpuMover::Create(p.hbm.get(), p.dram.get(), mo));
  const Placement pl = Place(blocks, p.slots, 5, pattern);
  const auto [runs, mean_run] = DramRuns(pl);
  fmt::print(stderr, "kvtier bench transfer: {} blocks in {} runs of adjacent DRAM slots (mean {:.1f} blocks)\n", blocks,
             runs, mean_run);

  auto one_direction = [&](bool h2d) -> Status {
    const std::string dir = h2d ? "h2d" : "d2h";
    GpuMover& m = h2d ? *up : *down;
    const D2hMode d2h_mode = m.ModeFor(o.block_size);
    fmt::print(stderr, "kvtier bench transfer: {} copy kernel {}\n", dir, CopyKernelName(m.copy_kernel()));
    const std::string method =
        h2d ? "kvtier"
        : d2h_mode == D2hMode::kCpuAssisted
            ? fmt::format("kvtier-cpu-{}", HostCopyPathName(m.cpu_copy_path()))
            : fmt::format("kvtier-{}", D2hModeName(d2h_mode));
    KVT_ASSIGN_OR_RETURN(double k, Gbps(bytes, o.repeats, [&] { return TimeMover(m, pl, h2d, o.block_size); }));
    KVT_ASSIGN_OR_RETURN(double c, Gbps(bytes, o.repeats, [&] { return TimeContiguous(p, bytes, h2d, p.stream.get()); }));
    rows->push_back({dir, method, k});
    rows->push_back({dir, "contiguous", c});
    Result<double> bt = 0.0;
    if (o.baselines == "all") {
      KVT_ASSIGN_OR_RETURN(double pb, Gbps(bytes, o.repeats, [&] { return TimePerBlock(p, pl, h2d); }));
      bt = Gbps(bytes, o.repeats, [&] { return TimeBatch(p, pl, h2d); });
      rows->push_back({dir, "per_block", pb});
      rows->push_back({dir, "batch", bt.ok() ? *bt : 0.0});
    }
    if (h2d || d2h_mode == D2hMode::kKernel) {
      KVT_ASSIGN_OR_RETURN(DeviceBuffer descs, UploadDescriptors(p, pl, h2d, o.device));
      const kernels::CopyLaunch launch = m.KernelLaunch(o.block_size);  // the mover's own kernel and shape
      KVT_ASSIGN_OR_RETURN(double ko, Gbps(bytes, o.repeats, [&] { return TimeKernelOnly(p, pl, launch, descs); }));
      rows->push_back({dir, "kernel-only", ko});
    }
    if (!bt.ok()) fmt::print(stderr, "kvtier bench transfer: batch baseline failed: {}\n", bt.status().ToString());
    if (o.contend) {
      KVT_ASSIGN_OR_RETURN(Contender rival, Contender::Make(o.device, 512ull << 20));
      KVT_ASSIGN_OR_RETURN(Contention t, TimeContention(m, pl, h2d, o.block_size, rival, double(bytes) / k / 1e9, o.repeats));
      rows->push_back({dir, "kvtier-contended", t.mover_gbps});
      rows->push_back({dir, "contender-alone-hbm", t.contender_alone});
      rows->push_back({dir, "contender-with-kvtier-hbm", t.contender_shared});
    }
    if (h2d && o.copy_share > 0) {
      KVT_ASSIGN_OR_RETURN(double g, GatherPlusCopy(p, m, pl, o.copy_share, o.repeats, o.device));
      rows->push_back({dir, fmt::format("gather+copy{:.0f}%", 100 * o.copy_share), g});
    }
    return Status();
  };
  if (o.direction == "h2d" || o.direction == "d2h") return one_direction(o.direction == "h2d");

  // Both directions at once: disjoint blocks each way.
  const uint32_t half = std::max<uint32_t>(1, blocks / 2);
  Placement a = pl, b = pl;
  a.dram.resize(half);
  a.hbm.resize(half);
  b.dram.assign(pl.dram.begin() + half, pl.dram.end());
  b.hbm.assign(pl.hbm.begin() + half, pl.hbm.end());
  const uint64_t half_bytes = uint64_t{half} * o.block_size;
  auto both_kvtier = [&]() -> Result<double> {
    MoveBatch x = MakeBatch(a, true, o.block_size), y = MakeBatch(b, false, o.block_size);
    const auto t0 = std::chrono::steady_clock::now();
    Fence f1 = up->Submit(std::move(x));
    Fence f2 = down->Submit(std::move(y));
    KVT_RETURN_IF_ERROR(f1.Wait());
    KVT_RETURN_IF_ERROR(f2.Wait());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto both_contiguous = [&]() -> Result<double> {
    TimingEvents e1, e2;
    cudaEventRecord(e1.a, p.stream.get());
    cudaEventRecord(e2.a, p.stream2.get());
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(HbmPtr(p, 0), p.dram_base, half_bytes, cudaMemcpyHostToDevice,
                                             p.stream.get()), "h2d");
    KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(p.dram_base + half_bytes, HbmPtr(p, half), half_bytes,
                                             cudaMemcpyDeviceToHost, p.stream2.get()), "d2h");
    cudaEventRecord(e1.b, p.stream.get());
    cudaEventRecord(e2.b, p.stream2.get());
    KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(e1.b), "h2d");
    KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(e2.b), "d2h");
    return std::max(e1.Seconds(), e2.Seconds());
  };
  KVT_ASSIGN_OR_RETURN(double k, Gbps(2 * half_bytes, o.repeats, both_kvtier));
  KVT_ASSIGN_OR_RETURN(double c, Gbps(2 * half_bytes, o.repeats, both_contiguous));
  rows->push_back({"both", "kvtier", k});
  rows->push_back({"both", "contiguous", c});
  if (o.pair_diag) {
    // Diagnostic: one direction by its mover, the other by one contiguous copy (the copy
    // engine) of the same bytes, concurrently. Does a copy engine in one direction coexist
    // with SM-issued traffic in the other at the link's rate?
    auto mover_plus_copy = [&](bool mover_h2d) -> Result<double> {
      MoveBatch x = MakeBatch(mover_h2d ? a : b, mover_h2d, o.block_size);
      const auto t0 = std::chrono::steady_clock::now();
      if (mover_h2d) {
        KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(p.dram_base + half_bytes, HbmPtr(p, half), half_bytes,
                                                 cudaMemcpyDeviceToHost, p.stream2.get()), "d2h copy");
      } else {
        KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(HbmPtr(p, 0), p.dram_base, half_bytes, cudaMemcpyHostToDevice,
                                                 p.stream2.get()), "h2d copy");
      }
      Fence f = (mover_h2d ? *up : *down).Submit(std::move(x));
      KVT_RETURN_IF_ERROR(f.Wait());
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(p.stream2.get()), "copy");
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    KVT_ASSIGN_OR_RETURN(double hk, Gbps(2 * half_bytes, o.repeats, [&] { return mover_plus_copy(true); }));
    KVT_ASSIGN_OR_RETURN(double dk, Gbps(2 * half_bytes, o.repeats, [&] { return mover_plus_copy(false); }));
    rows->push_back({"both", "h2d-kvtier+d2h-contiguous", hk});
    rows->push_back({"both", "h2d-contiguous+d2h-kvtier", dk});
  }
  if (o.copy_share > 0) {
    // Diagnostic: each direction's movers take the first (1 - F) of its blocks and one
    // cudaMemcpyBatchAsync per direction (the copy engines, on the bench's two streams) the
    // rest, all concurrently. Above `kvtier` = the copy engines add to what the SM-issued
    // traffic of both directions together can carry.
    const size_t shared = std::min<size_t>(half - 1, static_cast<size_t>(double(half) * o.copy_share + 0.5));
    if (shared == 0) return Status::InvalidArgument("--copy-share rounds to 0 blocks");
    auto split = [&](const Placement& whole, Placement* kernel, Placement* engines) {
      *kernel = whole;
      kernel->dram.resize(half - shared);
      kernel->hbm.resize(half - shared);
      engines->dram.assign(whole.dram.begin() + (half - shared), whole.dram.begin() + half);
      engines->hbm.assign(whole.hbm.begin() + (half - shared), whole.hbm.begin() + half);
    };
    Placement ak, ac, bk, bc;
    split(a, &ak, &ac);
    split(b, &bk, &bc);
    BatchCopy up_ce(p, ac, true), down_ce(p, bc, false);
    auto both_shared = [&]() -> Result<double> {
      MoveBatch x = MakeBatch(ak, true, o.block_size), y = MakeBatch(bk, false, o.block_size);
      const auto t0 = std::chrono::steady_clock::now();
      KVT_RETURN_IF_ERROR(up_ce.Enqueue(p.stream.get()));
      KVT_RETURN_IF_ERROR(down_ce.Enqueue(p.stream2.get()));
      Fence f1 = up->Submit(std::move(x));
      Fence f2 = down->Submit(std::move(y));
      KVT_RETURN_IF_ERROR(f1.Wait());
      KVT_RETURN_IF_ERROR(f2.Wait());
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(p.stream.get()), "h2d share");
      KVT_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(p.stream2.get()), "d2h share");
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    KVT_ASSIGN_OR_RETURN(double m, Gbps(2 * half_bytes, o.repeats, both_shared));
    rows->push_back({"both", fmt::format("kvtier+batch{:.0f}%", 100 * o.copy_share), m});
  }
  return Status();
}

void PrintRows(const TransferOptions& o, const std::vector<Row>& rows) {
  if (o.json) {
    for (const Row& r : rows) {
      nlohmann::json j{{"bench", "transfer"}, {"direction", r.direction}, {"block_size", o.block_size},
                       {"total", o.total}, {"mode", o.mode}, {"ctas", o.ctas}, {"unroll", o.unroll},
                       {"host_alloc", o.host_alloc}, {"streaming", o.streaming}, {"huge_pages", o.huge_pages},
                       {"pattern", o.pattern}, {"engine_run_bytes", o.engine_run_bytes}, {"cpu_copy", o.cpu_copy},
                       {"d2h_ctas", o.d2h_ctas}, {"ctas_per_sm", o.ctas_per_sm}, {"copy_kernel", o.copy_kernel}, {"bulk_chunk", o.bulk_chunk},
                       {"bulk_stages", o.bulk_stages},
                       {"cpu_threads", o.cpu_threads}, {"launch_bytes", o.launch_bytes},
                       {"first_launch_bytes", o.first_launch_bytes}, {"descriptor_upload", o.descriptor_upload},
                       {"method", r.method}, {"gbps", r.gbps}};
      fmt::print("{}\n", j.dump());
    }
    return;
  }
  fmt::print("kvtier bench transfer: {} B blocks, {:.0f} MiB per run, median of {} runs; launches of {} B "
             "(first {} B), descriptor upload {}\n",
             o.block_size, double(o.total) / double(1 << 20), o.repeats, o.launch_bytes, o.first_launch_bytes,
             o.descriptor_upload);
  fmt::print("{:<6} {:<14} {:>9} {:>18}\n", "dir", "method", "GB/s", "kvtier / this");
  for (const Row& r : rows) {
    double kv = 0;
    for (const Row& x : rows) {
      if (x.direction == r.direction && x.method.rfind("kvtier", 0) == 0) kv = x.gbps;
    }
    fmt::print("{:<6} {:<14} {:>9.2f} {:>17.2f}x\n", r.direction, r.method, r.gbps, r.gbps > 0 ? kv / r.gbps : 0.0);
  }
}

struct ProbeOptions {
  std::string out = "kvtier-profile.json";
  uint64_t total = 256ull << 20;
  uint32_t repeats = 3;
  int device = 0;
};

Status RunProbe(const ProbeOptions& o) {
  TransferProfile profile;
  cudaDeviceProp prop{};
  KVT_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, o.device), "cudaGetDeviceProperties");
  profile.device_name = prop.name;
  for (uint64_t block : {4096ull, 16384ull, 65536ull, 262144ull, 2097152ull}) {
    const uint32_t blocks = static_cast<uint32_t>(o.total / block);
    KVT_ASSIGN_OR_RETURN(Pools p, MakePools(block, 4 * o.total, o.device));
    const Placement pl = Place(blocks, p.slots, 9);
    const uint64_t bytes = uint64_t{blocks} * block;
    PathRates r;
    for (D2hMode mode : {D2hMode::kKernel, D2hMode::kCpuAssisted}) {
      GpuMoverOptions mo;
      mo.device = o.device;
      mo.d2h_mode = mode;
      KVT_ASSIGN_OR_RETURN(auto up, GpuMover::Create(p.dram.get(), p.hbm.get(), mo));
      KVT_ASSIGN_OR_RETURN(auto down, GpuMover::Create(p.hbm.get(), p.dram.get(), mo));
      if (mode == D2hMode::kKernel) {
        KVT_ASSIGN_OR_RETURN(r.h2d_gather, Gbps(bytes, o.repeats, [&] { return TimeMover(*up, pl, true, block); }));
        KVT_ASSIGN_OR_RETURN(r.d2h_scatter, Gbps(bytes, o.repeats, [&] { return TimeMover(*down, pl, false, block); }));
      } else {
        KVT_ASSIGN_OR_RETURN(r.d2h_cpu_assisted, Gbps(bytes, o.repeats, [&] { return TimeMover(*down, pl, false, block); }));
      }
    }
    KVT_ASSIGN_OR_RETURN(r.h2d_per_block, Gbps(bytes, o.repeats, [&] { return TimePerBlock(p, pl, true); }));
    KVT_ASSIGN_OR_RETURN(r.d2h_per_block, Gbps(bytes, o.repeats, [&] { return TimePerBlock(p, pl, false); }));
    if (block == 65536) {
      KVT_ASSIGN_OR_RETURN(profile.h2d_contiguous, Gbps(bytes, o.repeats, [&] { return TimeContiguous(p, bytes, true, p.stream.get()); }));
      KVT_ASSIGN_OR_RETURN(profile.d2h_contiguous, Gbps(bytes, o.repeats, [&] { return TimeContiguous(p, bytes, false, p.stream.get()); }));
      // Host memcpy with all cores, pool to pool.
      auto host = Gbps(bytes, o.repeats, [&]() -> Result<double> {
        const auto t0 = std::chrono::steady_clock::now();
        tbb::parallel_for(size_t{0}, pl.dram.size(), [&](size_t i) {
          const uint32_t from = pl.dram[i], to = (pl.dram[i] + p.slots / 2) % p.slots;
          std::memcpy(DramPtr(p, to), DramPtr(p, from), block);
        });
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      });
      KVT_ASSIGN_OR_RETURN(profile.host_memcpy, std::move(host));
    }
    profile.by_block_size[block] = r;
    fmt::print("  {:>8} B: h2d gather {:6.2f}  d2h scatter {:6.2f}  d2h cpu {:6.2f}  per-block h2d {:6.2f} d2h {:6.2f} GB/s\n",
               block, r.h2d_gather, r.d2h_scatter, r.d2h_cpu_assisted, r.h2d_per_block, r.d2h_per_block);
  }
  fmt::print("  contiguous h2d {:.2f} GB/s, d2h {:.2f} GB/s; host memcpy {:.2f} GB/s\n", profile.h2d_contiguous,
             profile.d2h_contiguous, profile.host_memcpy);
  KVT_RETURN_IF_ERROR(profile.Save(o.out));
  fmt::print("kvtier probe: wrote {}\n", o.out);
  return Status();
}

}  // namespace

void AddBenchTransferCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<TransferOptions>();
  CLI::App* cmd = bench.add_subcommand("transfer", "DRAM<->HBM block movers vs cudaMemcpyAsync / cudaMemcpyBatchAsync");
  cmd->add_option("--direction", o->direction, "h2d, d2h or both");
  cmd->add_option("--block-size", o->block_size, "bytes per block (a multiple of 16)");
  cmd->add_option("--total", o->total, "bytes moved per run");
  cmd->add_option("--pool", o->pool, "bytes of each pool the blocks are scattered over");
  cmd->add_option("--mode", o->mode, "D2H path: kernel, cpu or auto");
  cmd->add_option("--cpu-threads", o->cpu_threads, "threads of the CPU-assisted D2H scatter");
  cmd->add_option("--ctas", o->ctas, "copy kernel blocks (0 = sized to the device)");
  cmd->add_option("--unroll", o->unroll, "16-byte loads in flight per thread: 4 or 8");
  cmd->add_flag("--streaming", o->streaming, "evict-first loads and stores in the copy kernel");
  cmd->add_option("--host-alloc", o->host_alloc,
                  "DRAM pool pinning: register (mmap + cudaHostRegister, the DRAM tier) or cuda (cudaHostAlloc)");
  cmd->add_option("--huge-pages", o->huge_pages, "DRAM pool pages: off, transparent (= on, the default) or hugetlb");
  cmd->add_option("--pattern", o->pattern,
                  "block placement: random (default), sequential, runs:N (DRAM runs of N slots) or churn:MIN:MAX "
                  "(DRAM slots from a churned SlotPool, requests of MIN..MAX blocks)");
  cmd->add_option("--cpu-copy", o->cpu_copy, "CPU-assisted scatter copy: auto (non-temporal), memcpy, avx2, avx512");
  cmd->add_option("--d2h-ctas", o->d2h_ctas, "copy kernel blocks of the D2H mover (0 = --ctas)");
  cmd->add_option("--ctas-per-sm", o->ctas_per_sm,
                  "with --ctas 0: at most this many copy kernel blocks per SM (0 = the movers' default: 4 for h2d, 2 "
                  "for d2h; 4 = the previous d2h default)")
      ->check(CLI::Range(0u, 8u));
  cmd->add_option("--baselines", o->baselines,
                  "all (contiguous, per_block, batch) or contiguous (diagnostic runs; skips the slow baselines)");
  cmd->add_option("--copy-share", o->copy_share,
                  "h2d: also time the gather on 1-F of the blocks concurrent with a contiguous copy of F of the bytes; "
                  "both: also time the movers on 1-F of each direction's blocks next to cudaMemcpyBatchAsync of the rest");
  cmd->add_option("--launch-bytes", o->launch_bytes,
                  "kernel paths: bytes per launch, so host descriptor building overlaps the copy (0 = one launch)");
  cmd->add_option("--first-launch-bytes", o->first_launch_bytes,
                  "kernel paths: bytes of a batch's first launch, doubling up to --launch-bytes (0 = no ramp)");
  cmd->add_option("--descriptor-upload", o->descriptor_upload,
                  "kernel paths: side (descriptors uploaded on a second stream, kernels queue back to back) or "
                  "inline (on the copy stream before each kernel, the previous behaviour)");
  cmd->add_option("--repeats", o->repeats, "timed runs; the median is reported");
  cmd->add_option("--device", o->device, "CUDA device");
  cmd->add_option("--engine-run-bytes", o->engine_run_bytes,
                  "runs of adjacent DRAM slots at least this long go by the copy engines (0 = never)");
  cmd->add_option("--engine-piece-bytes", o->engine_piece_bytes, "copy-engine path: bytes per staging piece");
  cmd->add_option("--engine-pieces", o->engine_pieces, "copy-engine path: staging pieces in the ring");
  cmd->add_option("--engine-streams", o->engine_streams, "copy-engine path: 2 (copies overlap the kernels) or 1");
  cmd->add_option("--copy-kernel", o->copy_kernel,
                  "kernel paths: loads (16-byte loads and stores by every thread), bulk (TMA bulk copies, 16 one-warp "
                  "CTAs) or auto (bulk for h2d, loads for d2h)");
  cmd->add_option("--bulk-chunk", o->bulk_chunk, "bulk kernel: bytes per bulk copy (a multiple of 16, <= 64 KiB)");
  cmd->add_option("--bulk-stages", o->bulk_stages, "bulk kernel: shared-memory stages per CTA (2..8)");
  cmd->add_flag("--contend", o->contend,
               "h2d/d2h: also time the mover next to a device-bound copy kernel on every SM (its HBM GB/s alone "
               "and with the mover; the mover's GB/s with it)");
  cmd->add_flag("--pair-diag", o->pair_diag,
               "both: also time each direction's mover next to one contiguous copy of the other direction");
  cmd->add_flag("--json", o->json, "one JSON line per method");
  cmd->callback([o, exit_code] {
    std::vector<Row> rows;
    if (Status s = RunTransfer(*o, &rows); !s.ok()) {
      fmt::print(stderr, "kvtier bench transfer: {}\n", s.ToString());
      *exit_code = s.code() == StatusCode::kInvalidArgument ? 2 : 1;
      return;
    }
    PrintRows(*o, rows);
  });
}

void AddProbeCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ProbeOptions>();
  CLI::App* cmd = app.add_subcommand("probe", "measure this machine's transfer paths and write a JSON profile");
  cmd->add_option("--out", o->out, "profile path (default kvtier-profile.json)");
  cmd->add_option("--total", o->total, "bytes per measurement");
  cmd->add_option("--repeats", o->repeats, "timed runs per measurement");
  cmd->add_option("--device", o->device, "CUDA device");
  cmd->callback([o, exit_code] {
    if (Status s = RunProbe(*o); !s.ok()) {
      fmt::print(stderr, "kvtier probe: {}\n", s.ToString());
      *exit_code = 1;
    }
  });
}

}  // namespace kvtier::cli
