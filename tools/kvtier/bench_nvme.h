// `kvtier bench nvme`: what its parts share (bench_nvme.cc runs the measurements; bench_nvme_fio.cc
// the fio baseline; bench_nvme_restore.cc the pipelined restore). Internal to the CLI.
#pragma once

#include <cstdint>
#include <string>

#include "kvtier/logger.h"
#include "kvtier/status.h"
#include "slot_format.h"

namespace kvtier::cli::bench_nvme {

struct BenchNvmeOptions {
  std::string dir;
  uint64_t block_size = 65536;
  uint32_t qd = 32;
  double seconds = 5;
  uint64_t file_bytes = 1ull << 30;  // slab payload bytes
  uint32_t runs = 1;
  uint32_t restore_blocks = 2048;
  uint32_t restore_chunk = 64;
  std::string fio = "fio";
  bool no_fio = false;
  bool no_restore = false;
  bool keep = false;
  bool json = false;
  bool no_keys = false;
  bool no_prefill = false;           // skip writing every slot once before the first measurement
  bool publish_per_batch = false;  // index each block on its own (the old mover behaviour)
  uint32_t reap_batch = 0;           // completions per reap pass (0: the mover's default)
};

struct Measurement {
  std::string engine;
  std::string op;
  double gbps = 0;
  double iops = 0;
  double p50_us = 0;
  double p99_us = 0;
};

struct RestoreResult {
  double stage1_gbps = 0;  // NVMe -> DRAM alone
  double stage2_gbps = 0;  // DRAM -> HBM alone
  double pipelined_gbps = 0;
  double ratio = 0;        // pipelined / slower stage
};

// fio on the slab's payloads, the same block size, queue depth and random pattern as kvtier's
// measurement (O_DIRECT, io_uring with fixed buffers); `out_json` receives fio's report.
Result<Measurement> RunFio(const BenchNvmeOptions& o, const std::string& slab, const nvme::SlabGeometry& g, bool write,
                           const std::string& out_json);

// The pipelined restore: `o.restore_blocks` blocks written once through a TierManager to NVMe,
// then, on freshly reopened runtimes, NVMe -> DRAM alone, DRAM -> HBM (emulated) alone and the
// pipelined NVMe -> DRAM -> HBM in chunks of `o.restore_chunk`; `populate` writes the blocks first.
Result<RestoreResult> RunRestore(const BenchNvmeOptions& o, const std::string& dir, Logger* log, bool populate);

}  // namespace kvtier::cli::bench_nvme
