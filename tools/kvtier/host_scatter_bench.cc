// `kvtier bench host-scatter`: the CPU half of the CPU-assisted D2H path, measurable without
// a GPU. Blocks are copied from one contiguous staging buffer (where the D2H copy lands) to
// random slots of a DRAM pool (the HostTier itself, >= 1 GiB), by 1..N TBB threads, split
// into the same 256 KiB pieces the mover uses. Compared in the same run, interleaved run by
// run: memcpy (normal stores) and StreamCopier (non-temporal stores, one sfence per task).
// Bytes moved = the staging size per run; GB/s counts each byte once.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "commands.h"
#include "host_tier.h"
#include "pool_mapping.h"
#include "stream_copy.h"

namespace kvtier::cli {
namespace {

struct HostScatterOptions {
  std::vector<uint64_t> block_sizes = {16384, 65536};
  std::vector<uint32_t> threads = {1, 2, 4, 8};
  uint64_t total = 256ull << 20;  // staging bytes scattered per run
  uint64_t pool = 1ull << 30;     // DRAM pool the slots are drawn from
  uint32_t repeats = 5;
  std::string path = "auto";
  std::string huge_pages = "transparent";
  bool json = false;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Piece {
  const std::byte* src;
  std::byte* dst;
  uint64_t bytes;
};

// One scatter of every piece by `arena`'s threads; seconds.
double Scatter(tbb::task_arena& arena, const std::vector<Piece>& pieces, const StreamCopier& copier) {
  const auto t0 = std::chrono::steady_clock::now();
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, pieces.size(), 2), [&](const tbb::blocked_range<size_t>& r) {
      for (size_t i = r.begin(); i != r.end(); ++i) copier.CopyUnfenced(pieces[i].dst, pieces[i].src, pieces[i].bytes);
      copier.Fence();
    });
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Status RunHostScatter(const HostScatterOptions& o) {
  KVT_ASSIGN_OR_RETURN(HostCopyPath path, ParseHostCopyPath(o.path));
  if (path == HostCopyPath::kMemcpy) return Status::InvalidArgument("--path memcpy: the baseline is always measured; pick a streaming path");
  KVT_ASSIGN_OR_RETURN(StreamCopier nt, StreamCopier::For(path));
  KVT_ASSIGN_OR_RETURN(HugePages huge, ParseHugePages(o.huge_pages));
  const StreamCopier plain;
  if (o.repeats == 0) return Status::InvalidArgument("--repeats 0");
  if (o.pool < (1ull << 30)) return Status::InvalidArgument("--pool below 1 GiB: the slots would fit in caches");
  for (uint32_t t : o.threads) {
    if (t == 0 || t > 256) return Status::InvalidArgument(fmt::format("--threads {} out of [1, 256]", t));
  }
  // The staging buffer the D2H copy would land in: contiguous, touched, random contents.
  KVT_ASSIGN_OR_RETURN(PoolMapping staging, PoolMapping::Map(o.total, huge));
  std::mt19937_64 rng(3);
  for (size_t i = 0; i + 8 <= staging.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(staging.data() + i, &w, 8);
  }
  if (!o.json) {
    fmt::print("kvtier bench host-scatter: {:.0f} MiB staging -> random slots of a {:.2f} GiB pool, median of {} runs, "
               "{} hardware threads, NT path {}\n",
               double(o.total) / double(1 << 20), double(o.pool) / double(1ull << 30), o.repeats,
               std::thread::hardware_concurrency(), HostCopyPathName(nt.path()));
    fmt::print("{:>9} {:>7} {:>13} {:>13} {:>9}\n", "block", "threads", "memcpy GB/s", "NT GB/s", "NT/memcpy");
  }
  for (uint64_t block : o.block_sizes) {
    if (block == 0 || block > o.total) return Status::InvalidArgument(fmt::format("--block-sizes {} out of (0, --total]", block));
    HostTierOptions ho;
    ho.slot_bytes = block;
    ho.slot_count = static_cast<uint32_t>(o.pool / ((block + 4095) / 4096 * 4096));
    ho.pinning = PinningPolicy::kAllowUnpinned;  // a CPU measurement: pinning changes nothing here
    ho.huge_pages = huge;
    ho.logger = StderrLogger::Default();
    KVT_ASSIGN_OR_RETURN(auto pool, HostTier::Create(ho));
    const uint64_t blocks = o.total / block;
    if (blocks > ho.slot_count) return Status::InvalidArgument("--pool holds fewer slots than --total needs");
    std::vector<uint32_t> slots(ho.slot_count);
    std::iota(slots.begin(), slots.end(), 0u);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<Piece> pieces;
    constexpr uint64_t kPiece = 256 << 10;  // as GpuMover's CPU-assisted scatter
    for (uint64_t b = 0; b < blocks; ++b) {
      std::byte* dst = std::get<MemoryAddress>(pool->Locate(SlotId{slots[b]})).ptr;
      for (uint64_t off = 0; off < block; off += kPiece) {
        pieces.push_back({staging.data() + b * block + off, dst + off, std::min(kPiece, block - off)});
      }
    }
    const uint64_t bytes = blocks * block;
    for (uint32_t t : o.threads) {
      tbb::task_arena arena(static_cast<int>(t));
      (void)Scatter(arena, pieces, plain);  // warm-up: faults, thread start
      (void)Scatter(arena, pieces, nt);
      std::vector<double> a, b;
      for (uint32_t r = 0; r < o.repeats; ++r) {  // interleaved, so drift hits both alike
        a.push_back(double(bytes) / Scatter(arena, pieces, plain) / 1e9);
        b.push_back(double(bytes) / Scatter(arena, pieces, nt) / 1e9);
      }
      const double m = Median(a), s = Median(b);
      if (o.json) {
        for (const auto& [method, gbps] : {std::pair<std::string, double>{"memcpy", m},
                                           std::pair<std::string, double>{std::string(HostCopyPathName(nt.path())), s}}) {
          nlohmann::json j{{"bench", "host-scatter"}, {"block_size", block}, {"threads", t}, {"total", bytes},
                           {"pool", o.pool}, {"huge_pages", HugePagesName(pool->info().huge_pages)},
                           {"huge_page_bytes", pool->info().huge_page_bytes}, {"method", method},
                           {"gbps", gbps}};
          fmt::print("{}\n", j.dump());
        }
      } else {
        fmt::print("{:>9} {:>7} {:>13.2f} {:>13.2f} {:>8.2f}x\n", block, t, m, s, m > 0 ? s / m : 0.0);
      }
    }
    if (!o.json) {
      fmt::print("  (pool: {} pages, {:.0f} MiB of {:.0f} MiB in huge pages)\n", HugePagesName(pool->info().huge_pages),
                 double(pool->info().huge_page_bytes) / double(1 << 20), double(pool->bytes()) / double(1 << 20));
    }
  }
  return Status();
}

}  // namespace

void AddBenchHostScatterCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<HostScatterOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "host-scatter", "CPU-assisted D2H's scatter: staging -> random DRAM slots, memcpy vs non-temporal stores");
  cmd->add_option("--block-sizes", o->block_sizes, "block sizes in bytes (default 16384 65536)");
  cmd->add_option("--threads", o->threads, "thread counts (default 1 2 4 8)");
  cmd->add_option("--total", o->total, "staging bytes scattered per run (default 256 MiB)");
  cmd->add_option("--pool", o->pool, "DRAM pool bytes, at least 1 GiB (default 1 GiB)");
  cmd->add_option("--repeats", o->repeats, "timed runs per method; the median is reported");
  cmd->add_option("--path", o->path, "streaming path: auto, avx2 or avx512");
  cmd->add_option("--huge-pages", o->huge_pages, "pool and staging pages: off, transparent (on) or hugetlb");
  cmd->add_flag("--json", o->json, "one JSON line per method and configuration");
  cmd->callback([o, exit_code] {
    if (Status s = RunHostScatter(*o); !s.ok()) {
      fmt::print(stderr, "kvtier bench host-scatter: {}\n", s.ToString());
      *exit_code = s.code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
  });
}

}  // namespace kvtier::cli
