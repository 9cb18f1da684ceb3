// `kvtier bench nvme`: random block reads and writes through the NVMe tier and its io_uring
// movers (O_DIRECT slab, the DRAM pool registered as fixed buffers, N blocks in flight),
// next to fio run in the same process's run on the same slab file with the same pattern
// (block size, random offsets at slot payload boundaries, queue depth, O_DIRECT, io_uring
// with fixed buffers). Then a pipelined restore of many blocks NVMe -> DRAM -> HBM (emulated
// HBM, memcpy mover) through TierManager::Onboard, against each hop measured alone.
//
// Each kvtier I/O is one single-block MoveBatch with its key (as the TierManager issues
// them): a write puts the slot's header record and the payload (one vectored request of
// 4 KiB + the block), then indexes the key (RocksDB, cache mode: WAL not synced); a read gets
// the payload (one fixed-buffer request, the same one fio makes) and verifies it against the
// index. fio moves the payload only (its writes are 4 KiB shorter than kvtier's). Latency is
// per block, from Submit to the fence's signal. Before the first measurement every slot is
// written once (unless --no-prefill), so kvtier and fio both write into written extents.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "bench_nvme.h"
#include "commands.h"
#include "host_tier.h"
#include "kvtier/logger.h"
#include "nvme_mover.h"
#include "nvme_tier.h"

namespace kvtier::cli {
namespace {

using namespace bench_nvme;  // NOLINT: this file's own internal header

using Clock = std::chrono::steady_clock;


class QuietLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view line) override {
    if (level >= LogLevel::kWarning) fmt::print(stderr, "{}\n", line);
  }
};


double Percentile(std::vector<uint64_t>& ns, double p) {
  if (ns.empty()) return 0;
  const size_t k = std::min(ns.size() - 1, static_cast<size_t>(p * double(ns.size() - 1) + 0.5));
  std::nth_element(ns.begin(), ns.begin() + static_cast<ptrdiff_t>(k), ns.end());
  return double(ns[k]) / 1000.0;
}

// Where the run's blocks spent their time between Submit and the fence (the mover's
// always-on stage timing), and how busy its I/O thread was.
void PrintBreakdown(const NvmeMoverBreakdown& b, double seconds) {
  std::string line = "      stages p50/p99/mean us:";
  for (size_t i = 0; i < NvmeMoverBreakdown::kStages; ++i) {
    const NvmeStageHistogram& h = b.stages[i];
    if (i == NvmeMoverBreakdown::kWaitFor && h.QuantileUs(0.99) < 0.01) continue;  // no wait_for fences
    line += fmt::format(" {} {:.1f}/{:.1f}/{:.1f} |", NvmeMoverBreakdown::StageName(i), h.QuantileUs(0.5), h.QuantileUs(0.99),
                        h.MeanUs());
  }
  line.pop_back();
  fmt::print("{}\n", line);
  const double busy = 100.0 * (1.0 - std::min(1.0, double(b.idle_ns) / (seconds * 1e9)));
  fmt::print("      io thread: {:.0f}% busy (not blocked on a CQE), {} loop passes, {:.1f} completions per reap pass "
             "(pass p50 {:.1f} us, mean {:.1f} us), io_uring_submit {:.1f} us each\n",
             busy, b.passes, b.passes == 0 ? 0.0 : double(b.reaped) / double(b.passes), b.reap_pass.QuantileUs(0.5),
             b.reap_pass.MeanUs(), b.submit_calls == 0 ? 0.0 : double(b.submit_ns) / double(b.submit_calls) / 1000.0);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// A key per slot shaped like a real chain hash: every 8-byte word is mixed from the slot
// (splitmix64), so prefix64() is uniformly spread as ChainHash promises. (A constant first
// word put every key in one bucket of the tier's hash tables: a linear scan of all 16k
// published keys per written block, which the bench then measured as "index cost".)
BlockKey SlotKey(uint32_t slot) {
  BlockKey k;
  uint64_t x = 0x6b76746965726e76ull ^ slot;
  for (size_t w = 0; w < 4; ++w) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(k.chain.bytes.data() + 8 * w, &z, 8);
  }
  k.layer = LayerId{0};
  return k;
}

// The slab, its DRAM pool (one slot per block in flight) and both movers.
struct Rig {
  std::unique_ptr<HostTier> dram;
  std::unique_ptr<NvmeTier> nvme;
  std::unique_ptr<NvmeMover> down, up;
  std::vector<SlotId> nvme_slots;  // all of them, reserved
  std::vector<SlotId> dram_slots;  // one per lane
  std::vector<bool> valid;         // slot holds a kvtier-written block (fio has not overwritten it)
};

Result<Rig> OpenRig(const BenchNvmeOptions& o, const std::string& dir, Logger* log) {
  Rig r;
  const auto count = static_cast<uint32_t>(o.file_bytes / o.block_size);
  auto nvme = NvmeTier::Open({.dir = dir, .slot_bytes = o.block_size, .slot_count = count,
                              .mode = NvmeMode::kCache,
                              .direct_io = DirectIo::kRequired, .logger = log});
  if (!nvme.ok()) {
    return Status(nvme.status().code(),
                  fmt::format("O_DIRECT slab in {}: {} (O_DIRECT is not available here?)", dir, nvme.status().message()));
  }
  r.nvme = std::move(nvme).value();
  HostTierOptions h;
  h.slot_bytes = o.block_size;
  h.slot_count = o.qd;
  h.pinning = PinningPolicy::kAllowUnpinned;
  h.touch_threads = 1;
  h.logger = log;
  KVT_ASSIGN_OR_RETURN(r.dram, HostTier::Create(std::move(h)));
  NvmeMoverOptions mo;
  mo.queue_depth = o.qd;
  mo.publish_per_batch = o.publish_per_batch;
  mo.reap_batch = o.reap_batch;
  KVT_ASSIGN_OR_RETURN(r.down, NvmeMover::Create(r.dram.get(), r.nvme.get(), NvmeDirection::kDramToNvme, mo));
  KVT_ASSIGN_OR_RETURN(r.up, NvmeMover::Create(r.dram.get(), r.nvme.get(), NvmeDirection::kNvmeToDram, mo));
  KVT_ASSIGN_OR_RETURN(r.nvme_slots, r.nvme->Reserve(count));
  KVT_ASSIGN_OR_RETURN(r.dram_slots, r.dram->Reserve(o.qd));
  std::mt19937_64 rng(1);
  for (SlotId s : r.dram_slots) {
    auto* p = std::get<MemoryAddress>(r.dram->Locate(s)).ptr;
    for (uint64_t i = 0; i + 8 <= o.block_size; i += 8) {
      const uint64_t w = rng();
      std::memcpy(p + i, &w, 8);
    }
  }
  r.valid.assign(count, false);
  return r;
}

// Closed loop: `qd` lanes, each submits one block, and on its fence the next one, until
// `seconds` have passed. Writes never have two blocks of one slot in flight.
Result<Measurement> RunKvtier(Rig& r, const BenchNvmeOptions& o, bool write, double seconds,
                              const std::vector<uint32_t>* sequence = nullptr) {
  const auto count = static_cast<uint32_t>(r.nvme_slots.size());
  std::mutex mu;
  std::condition_variable cv;
  uint32_t running = o.qd;
  Status first_error;
  std::vector<std::vector<uint64_t>> lat(o.qd);
  std::vector<uint64_t> bytes(o.qd, 0);
  std::vector<uint8_t> busy(count, 0);  // slot in flight (writes)
  std::atomic<size_t> next_seq{0};
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::function<void()>> issue(o.qd);
  for (uint32_t lane = 0; lane < o.qd; ++lane) {
    issue[lane] = [&, lane, rng = std::mt19937_64(0x1234 + lane + (write ? 1000 : 0))]() mutable {
      uint32_t slot = 0;
      if (sequence != nullptr) {
        const size_t i = next_seq.fetch_add(1);
        if (i >= sequence->size()) {
          std::lock_guard lock(mu);
          if (--running == 0) cv.notify_all();
          return;
        }
        slot = (*sequence)[i];
      } else if (Clock::now() >= deadline) {
        std::lock_guard lock(mu);
        if (--running == 0) cv.notify_all();
        return;
      } else {
        std::lock_guard lock(mu);
        do {
          slot = static_cast<uint32_t>(rng() % count);
        } while (write ? busy[slot] != 0 : !r.valid[slot]);
        if (write) busy[slot] = 1;
      }
      MoveBatch b;
      const SlotId nv = r.nvme_slots[slot], dr = r.dram_slots[lane];
      b.segments.push_back(write ? CopySegment{dr, nv, 0, 0, o.block_size} : CopySegment{nv, dr, 0, 0, o.block_size});
      if (!o.no_keys) b.keys.push_back(SlotKey(slot));
      const auto t0 = Clock::now();
      Fence f = (write ? r.down : r.up)->Submit(std::move(b));
      f.OnReady([&, lane, slot, t0](const Status& s) {
        const auto t1 = Clock::now();
        {
          std::lock_guard lock(mu);
          if (write) {
            busy[slot] = 0;
            r.valid[slot] = s.ok();
          }
          if (!s.ok()) {
            if (first_error.ok()) first_error = s;
            if (--running == 0) cv.notify_all();
            return;
          }
        }
        lat[lane].push_back(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
        bytes[lane] += o.block_size;
        issue[lane]();
      });
    };
  }
  for (uint32_t lane = 0; lane < o.qd; ++lane) issue[lane]();
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return running == 0; });
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (!first_error.ok()) return first_error;
  std::vector<uint64_t> all;
  uint64_t total = 0;
  for (uint32_t lane = 0; lane < o.qd; ++lane) {
    all.insert(all.end(), lat[lane].begin(), lat[lane].end());
    total += bytes[lane];
  }
  Measurement m{"kvtier", write ? "write" : "read"};
  m.gbps = double(total) / secs / 1e9;
  m.iops = double(all.size()) / secs;
  m.p50_us = Percentile(all, 0.50);
  m.p99_us = Percentile(all, 0.99);
  return m;
}

// Writes every slot fio has overwritten (or that was never written), so reads verify.
Status Refill(Rig& r, const BenchNvmeOptions& o) {
  std::vector<uint32_t> todo;
  for (uint32_t i = 0; i < r.valid.size(); ++i) {
    if (!r.valid[i]) todo.push_back(i);
  }
  if (todo.empty()) return Status();
  return RunKvtier(r, o, true, 0, &todo).status();
}

nlohmann::json ToJson(const Measurement& m, const BenchNvmeOptions& o) {
  return nlohmann::json{{"engine", m.engine}, {"op", m.op},         {"block_size", o.block_size}, {"qd", o.qd},
                        {"gbps", m.gbps},     {"iops", m.iops},     {"p50_us", m.p50_us},         {"p99_us", m.p99_us},
                        {"runs", o.runs}};
}

int RunBenchNvme(const BenchNvmeOptions& o) {
  if (o.block_size == 0 || o.block_size % 4096 != 0) {
    fmt::print(stderr, "kvtier bench nvme: --block-size {} is not a positive multiple of 4096\n", o.block_size);
    return 2;
  }
  if (o.file_bytes / o.block_size < uint64_t{o.qd} * 2) {
    fmt::print(stderr, "kvtier bench nvme: --file-bytes {} holds fewer than 2 x qd blocks\n", o.file_bytes);
    return 2;
  }
  QuietLogger log;
  const std::string root = o.dir + "/kvtier-bench-nvme";
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  std::filesystem::create_directories(root, ec);
  if (ec) {
    fmt::print(stderr, "kvtier bench nvme: creating {}: {}\n", root, ec.message());
    return 2;
  }
  auto cleanup = [&] {
    if (!o.keep) std::filesystem::remove_all(root, ec);
  };
  auto fail = [&](const Status& s) {
    fmt::print(stderr, "kvtier bench nvme: {}\n", s.ToString());
    cleanup();
    return 2;
  };
  bool have_fio = !o.no_fio;
  std::vector<std::string> ops = {"write", "read"};
  std::map<std::pair<std::string, std::string>, std::vector<Measurement>> results;  // (engine, op)
  std::vector<RestoreResult> restores;
  {
    auto rig = OpenRig(o, root + "/tier", &log);
    if (!rig.ok()) return fail(rig.status());
    const std::string slab = root + "/tier/slab.kvt";
    if (!o.json) {
      fmt::print("bench nvme: {} slots of {} B in {} (format v{}, a {} B header record before each payload, O_DIRECT{}, "
                 "XXH3 {}, {} extents at creation), qd {}, {} s per measurement, {} run(s)\n",
                 rig->nvme_slots.size(), o.block_size, slab, nvme::kFormatVersion, nvme::kRecordBytes,
                 rig->nvme->stats().direct ? "" : " OFF", rig->nvme->stats().checksum_path,
                 rig->nvme->stats().written_extents ? "written" : "unwritten", o.qd, o.seconds, o.runs);
    }
    if (!o.no_prefill) {
      // Every slot written once (not measured): the extents fallocate left unwritten are then
      // written ones for kvtier and fio alike (ext4 converts an unwritten extent at the end of
      // the first direct write into it, which the first measurement alone would pay).
      const auto t0 = Clock::now();
      if (Status s = Refill(*rig, o); !s.ok()) return fail(s);
      if (!o.json) {
        fmt::print("prefill: every slot written once in {:.1f} s\n",
                   std::chrono::duration<double>(Clock::now() - t0).count());
      }
    }
    for (uint32_t run = 0; run < o.runs; ++run) {
      for (const std::string& op : ops) {
        const bool write = op == "write";
        if (!write) {
          if (Status s = Refill(*rig, o); !s.ok()) return fail(s);
        }
        const NvmeTierStats before = rig->nvme->stats();
        NvmeMover& mover = write ? *rig->down : *rig->up;
        const NvmeMoverBreakdown stages_before = mover.breakdown();
        const auto t_run = Clock::now();
        auto k = RunKvtier(*rig, o, write, o.seconds);
        if (!k.ok()) return fail(k.status());
        const double run_s = std::chrono::duration<double>(Clock::now() - t_run).count();
        const NvmeTierStats after = rig->nvme->stats();
        const NvmeMoverBreakdown stages = mover.breakdown().Since(stages_before);
        results[{"kvtier", op}].push_back(*k);
        std::string line = fmt::format("run {} {:5} kvtier {:6.3f} GB/s {:8.0f} IOPS p50 {:7.1f} us p99 {:7.1f} us", run + 1,
                                       op, k->gbps, k->iops, k->p50_us, k->p99_us);
        if (have_fio) {
          auto f = RunFio(o, slab, rig->nvme->geometry(), write, root + "/fio.json");
          if (!f.ok()) {
            fmt::print(stderr, "kvtier bench nvme: fio baseline not measured: {}\n", f.status().ToString());
            have_fio = false;
          } else {
            results[{"fio", op}].push_back(*f);
            if (write) std::fill(rig->valid.begin(), rig->valid.end(), false);  // fio overwrote payloads
            line += fmt::format(" | fio {:6.3f} GB/s {:8.0f} IOPS p50 {:7.1f} us p99 {:7.1f} us | x{:.2f}", f->gbps,
                                f->iops, f->p50_us, f->p99_us, k->gbps / f->gbps);
          }
        }
        if (!o.json) fmt::print("{}\n", line);
        if (!o.json) PrintBreakdown(stages, run_s);
        if (!o.json && write) {
          const uint64_t puts = after.index_puts - before.index_puts;
          const double ms = double(after.index_put_ns - before.index_put_ns) / 1e6;
          fmt::print("      index: {} WriteBatches, {:.1f} ms in them ({:.1f}% of the run's {:.0f} ms), {:.1f} us each, {:.2f} blocks each\n",
                     puts, ms, 100.0 * ms / (o.seconds * 1000), o.seconds * 1000, puts == 0 ? 0.0 : ms * 1000 / double(puts),
                     puts == 0 ? 0.0 : double(after.published - before.published) / double(puts));
        }
        std::fflush(stdout);
      }
    }
  }
  std::filesystem::remove_all(root + "/tier", ec);
  if (!o.no_restore) {
    for (uint32_t run = 0; run < o.runs; ++run) {
      auto r = RunRestore(o, root + "/restore", &log, run == 0);
      if (!r.ok()) return fail(r.status());
      restores.push_back(*r);
      if (!o.json) {
        fmt::print("run {} restore of {} blocks: NVMe->DRAM alone {:.3f} GB/s, DRAM->HBM alone {:.3f} GB/s, pipelined "
                   "NVMe->DRAM->HBM {:.3f} GB/s (chunks of {}) = x{:.2f} the slower stage\n",
                   run + 1, o.restore_blocks, r->stage1_gbps, r->stage2_gbps, r->pipelined_gbps, o.restore_chunk, r->ratio);
      }
    }
  }
  // Medians over runs (per field).
  auto median_of = [&](const std::vector<Measurement>& v) {
    Measurement m = v.front();
    auto field = [&](double Measurement::*f) {
      std::vector<double> x;
      for (const auto& e : v) x.push_back(e.*f);
      return Median(x);
    };
    m.gbps = field(&Measurement::gbps);
    m.iops = field(&Measurement::iops);
    m.p50_us = field(&Measurement::p50_us);
    m.p99_us = field(&Measurement::p99_us);
    return m;
  };
  if (!o.json) fmt::print("median of {} run(s):\n", o.runs);
  for (const std::string& op : ops) {
    const Measurement k = median_of(results[{"kvtier", op}]);
    const bool fio = results.count({"fio", op}) != 0 && results[{"fio", op}].size() == o.runs;
    if (o.json) {
      fmt::print("{}\n", ToJson(k, o).dump());
      if (fio) {
        const Measurement f = median_of(results[{"fio", op}]);
        nlohmann::json j = ToJson(f, o);
        fmt::print("{}\n", j.dump());
        std::vector<double> ratios;
        for (uint32_t i = 0; i < o.runs; ++i) ratios.push_back(results[{"kvtier", op}][i].gbps / results[{"fio", op}][i].gbps);
        fmt::print("{}\n", nlohmann::json{{"engine", "kvtier/fio"}, {"op", op}, {"block_size", o.block_size}, {"qd", o.qd},
                                          {"ratio", Median(ratios)}, {"runs", o.runs}}
                               .dump());
      }
    } else {
      std::string line = fmt::format("{:5} kvtier {:6.3f} GB/s {:8.0f} IOPS p50 {:7.1f} us p99 {:7.1f} us", op, k.gbps,
                                     k.iops, k.p50_us, k.p99_us);
      if (fio) {
        const Measurement f = median_of(results[{"fio", op}]);
        std::vector<double> ratios;
        for (uint32_t i = 0; i < o.runs; ++i) ratios.push_back(results[{"kvtier", op}][i].gbps / results[{"fio", op}][i].gbps);
        line += fmt::format(" | fio {:6.3f} GB/s {:8.0f} IOPS p50 {:7.1f} us p99 {:7.1f} us | kvtier/fio x{:.2f} (target 0.90)",
                            f.gbps, f.iops, f.p50_us, f.p99_us, Median(ratios));
      }
      fmt::print("{}\n", line);
    }
  }
  if (!restores.empty()) {
    std::vector<double> s1, s2, p, ratio;
    for (const auto& r : restores) {
      s1.push_back(r.stage1_gbps);
      s2.push_back(r.stage2_gbps);
      p.push_back(r.pipelined_gbps);
      ratio.push_back(r.ratio);
    }
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"engine", "kvtier"}, {"op", "restore"}, {"block_size", o.block_size}, {"qd", o.qd},
                                        {"blocks", o.restore_blocks}, {"chunk", o.restore_chunk},
                                        {"nvme_to_dram_gbps", Median(s1)}, {"dram_to_hbm_gbps", Median(s2)},
                                        {"gbps", Median(p)}, {"ratio", Median(ratio)}, {"runs", o.runs}}
                             .dump());
    } else {
      fmt::print("restore {} blocks: NVMe->DRAM {:.3f} GB/s, DRAM->HBM {:.3f} GB/s, pipelined {:.3f} GB/s | pipelined/slower "
                 "x{:.2f} (target 0.85)\n",
                 o.restore_blocks, Median(s1), Median(s2), Median(p), Median(ratio));
    }
  }
  cleanup();
  return 0;
}

}  // namespace

void AddBenchNvmeCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<BenchNvmeOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "nvme", "random block reads/writes through the NVMe tier vs fio on the same slab; pipelined NVMe->DRAM->HBM restore");
  cmd->add_option("--dir", o->dir, "directory for the slab (a kvtier-bench-nvme/ folder is made there and removed)")
      ->required();
  cmd->add_option("--block-size", o->block_size, "block bytes (a multiple of 4096)");
  cmd->add_option("--qd", o->qd, "blocks in flight (kvtier) = fio iodepth")->check(CLI::Range(1u, 1024u));
  cmd->add_option("--seconds", o->seconds, "seconds per measurement")->check(CLI::Range(0.05, 3600.0));
  cmd->add_option("--file-bytes", o->file_bytes, "slab payload bytes (random offsets over all of it)");
  cmd->add_option("--runs", o->runs, "repetitions; medians are reported")->check(CLI::Range(1u, 100u));
  cmd->add_option("--restore-blocks", o->restore_blocks, "blocks in the restore measurement")->check(CLI::Range(1u, 1u << 20));
  cmd->add_option("--restore-chunk", o->restore_chunk, "blocks per Onboard call of the pipelined restore")
      ->check(CLI::Range(1u, 1u << 20));
  cmd->add_option("--fio", o->fio, "the fio binary");
  cmd->add_flag("--no-fio", o->no_fio, "skip the fio baseline");
  cmd->add_flag("--no-restore", o->no_restore, "skip the restore measurement");
  cmd->add_flag("--no-prefill", o->no_prefill,
                "skip writing every slot once before measuring: the first write measurement then also pays ext4's "
                "conversion of the extents fallocate left unwritten (fio, run after it, pays less of it)");
  cmd->add_flag("--keep", o->keep, "keep the slab files");
  cmd->add_flag("--json", o->json, "one JSON line per measurement (medians)");
  cmd->add_flag("--publish-per-batch", o->publish_per_batch,
                "index each written batch on its own as it completes (the old mover; for comparison)");
  cmd->add_option("--reap-batch", o->reap_batch,
                  "completions the mover's I/O thread handles before submitting again: 0 = its default (qd / 8), "
                  "4294967295 = every ready one (the old mover; for comparison)");
  cmd->add_flag("--no-keys", o->no_keys, "move unkeyed blocks (nothing indexed): the I/O path without the RocksDB index");
  cmd->callback([o, exit_code] { *exit_code = RunBenchNvme(*o); });
}

}  // namespace kvtier::cli
