// `kvtier stress nvme` (the SIGKILL crash loop, crash_stress.h) and `kvtier fsck` (reads
// every indexed block's payload and header record of an NVMe tier directory and checks both
// against the index; --drop unindexes bad ones).
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include "commands.h"
#include "crash_stress.h"
#include "file.h"
#include "nvme_tier.h"
#include "slot_format.h"

namespace kvtier::cli {
namespace {

struct StressNvmeOptions {
  std::string dir;
  uint32_t cycles = 100;
  std::string mode = "cache";
  uint64_t block_size = 16384;
  uint32_t slots = 256;
  uint64_t seed = 0;  // 0 = random
  bool verbose = false;
};

int RunStressNvme(const StressNvmeOptions& c) {
  NvmeStressOptions o;
  o.dir = c.dir;
  o.cycles = c.cycles;
  o.mode = c.mode == "durable" ? NvmeMode::kDurable : NvmeMode::kCache;
  o.block_bytes = c.block_size;
  o.slots = c.slots;
  o.seed = c.seed != 0 ? c.seed : std::random_device{}();
  if (c.verbose) o.on_cycle = [](uint32_t, const std::string& line) { fmt::print("{}\n", line); };
  fmt::print("stress nvme: {} cycles, {} mode, {} slots of {} B in {}, seed {}\n", o.cycles, c.mode, o.slots,
             o.block_bytes, o.dir, o.seed);
  std::fflush(stdout);
  auto r = RunNvmeCrashStress(o);
  if (!r.ok()) {
    fmt::print(stderr, "kvtier stress nvme: {}\n", r.status().ToString());
    return 2;
  }
  fmt::print("cycles {}, acknowledged writes {}, recovered {}, served {} (verified), misses {}, wrong {}, lost {}\n",
             r->cycles, r->acked, r->recovered, r->served, r->misses, r->wrong, r->lost);
  for (const auto& v : r->violations) fmt::print("VIOLATION: {}\n", v);
  fmt::print("{}\n", r->ok() ? "PASS: 0 wrong blocks, 0 lost acknowledged blocks" : "FAIL");
  return r->ok() ? 0 : 1;
}

struct FsckOptions {
  std::string dir;
  bool drop = false;
};

// The slab's own geometry, from its file header.
Result<nvme::SlabGeometry> ReadSlabGeometry(const std::string& dir) {
  const std::string slab = dir + "/slab.kvt";
  if (!std::filesystem::exists(slab)) return Status::NotFound(fmt::format("{}: no NVMe tier here (no slab.kvt)", dir));
  KVT_ASSIGN_OR_RETURN(OpenedFile f, OpenForBlockIo(slab, DirectIo::kOff, nullptr));
  std::vector<std::byte> sector(nvme::kSectorBytes);
  if (::pread(f.fd.get(), sector.data(), sector.size(), 0) != static_cast<ssize_t>(sector.size())) {
    return Status::DataLoss(fmt::format("{}: shorter than its file header", slab));
  }
  auto g = nvme::DecodeSlabHeader(sector);
  if (!g.ok()) return std::move(g).status().Annotate(slab);
  return g;
}

int RunFsck(const FsckOptions& c) {
  auto g = ReadSlabGeometry(c.dir);
  if (!g.ok()) {
    fmt::print(stderr, "kvtier fsck: {}\n", g.status().ToString());
    return 2;
  }
  // Durable: the index deletes of --drop are synced before fsck reports them.
  auto tier = NvmeTier::Open({.dir = c.dir, .slot_bytes = g->slot_bytes, .slot_count = g->slot_count,
                              .mode = NvmeMode::kDurable, .direct_io = DirectIo::kPreferred, .logger = nullptr});
  if (!tier.ok()) {
    fmt::print(stderr, "kvtier fsck: {}\n", tier.status().ToString());
    return 2;
  }
  auto report = (*tier)->Fsck(c.drop);
  if (!report.ok()) {
    fmt::print(stderr, "kvtier fsck: {}\n", report.status().ToString());
    return 2;
  }
  const NvmeTierStats st = (*tier)->stats();
  fmt::print("{}: format v{}, {} slots of {} B, header records of {} B, {} indexed blocks ({} index entries dropped at "
             "open)\n",
             c.dir, nvme::kFormatVersion, g->slot_count, g->slot_bytes, g->record_bytes, st.recovered_blocks,
             st.dropped_at_open);
  for (const auto& p : report->problems) fmt::print("bad: {}\n", p);
  fmt::print("checked {}, bad {} (payloads {}, header records {}), dropped {}\n", report->checked, report->bad,
             report->bad_payloads, report->bad_records, report->dropped);
  if (report->bad == 0) return 0;
  if (!c.drop) fmt::print("run with --drop to unindex the bad blocks (their reads are misses either way)\n");
  return 1;
}

}  // namespace

void AddStressNvmeCommand(CLI::App& stress, int* exit_code) {
  auto o = std::make_shared<StressNvmeOptions>();
  CLI::App* cmd = stress.add_subcommand("nvme", "SIGKILL a child writing keyed blocks to the NVMe tier; verify each reopen");
  cmd->add_option("--dir", o->dir, "tier directory (created; the slab carries over between cycles)")->required();
  cmd->add_option("--cycles", o->cycles, "kill/reopen cycles")->check(CLI::Range(1u, 1000000u));
  cmd->add_option("--mode", o->mode, "cache | durable")->check(CLI::IsMember({"cache", "durable"}));
  cmd->add_option("--block-size", o->block_size, "block bytes (a multiple of 4096)");
  cmd->add_option("--slots", o->slots, "NVMe slots");
  cmd->add_option("--seed", o->seed, "0 = random");
  cmd->add_flag("--verbose", o->verbose, "one line per cycle");
  cmd->callback([o, exit_code] { *exit_code = RunStressNvme(*o); });
}

void AddFsckCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<FsckOptions>();
  CLI::App* cmd = app.add_subcommand("fsck", "read and verify every indexed block of an NVMe tier directory");
  cmd->add_option("--dir", o->dir, "tier directory (holds slab.kvt and index/)")->required();
  cmd->add_flag("--drop", o->drop, "unindex the bad blocks");
  cmd->callback([o, exit_code] { *exit_code = RunFsck(*o); });
}

}  // namespace kvtier::cli
