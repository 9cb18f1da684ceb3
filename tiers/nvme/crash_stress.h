// NVMe crash stress: a child process writes blocks with self-verifying, key-derived payloads
// through an NvmeTier (keys in the MoveBatch, as the TierManager does) while the parent
// SIGKILLs it at a random point; the parent then reopens the tier and reads every block it
// recovered, checking each against the oracle. Used by `kvtier stress nvme` (long runs)
// and the test suite (a few cycles).
//
// The oracle. A block's bytes depend only on its key, so any served block can be checked
// on its own. The child reports through a pipe, before the fact, each key it may delete
// ("D") and, after the mover's fence, each key whose write completed ("A": in durable mode
// the write and its index entry are synced). After a kill:
//   - every served block must be byte-exact for its key (both modes): else "wrong";
//   - durable mode: every acknowledged key not reported deleted since must be served:
//     else "lost". Cache mode may lose blocks (a doubtful block is a miss).
// The slab carries over from cycle to cycle: the next child adopts what was recovered.
//
// Not thread-safe (forks): call it from a process whose other threads hold no locks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvtier/status.h"
#include "nvme_tier.h"

namespace kvtier {

struct NvmeStressOptions {
  std::string dir;                 // the tier's directory (created)
  uint32_t cycles = 100;
  NvmeMode mode = NvmeMode::kCache;
  uint64_t block_bytes = 16384;
  uint32_t slots = 256;            // NVMe slots; the child's keys come from 2x as many
  uint32_t batch = 8;              // blocks per mover batch
  uint32_t min_kill_ms = 5;        // the kill comes uniformly in [min, max] ms after the
  uint32_t max_kill_ms = 80;       // child has opened the tier
  uint64_t seed = 1;
  DirectIo direct_io = DirectIo::kPreferred;
  std::function<void(uint32_t cycle, const std::string& line)> on_cycle;  // progress, optional

  Status Validate() const;
};

struct NvmeStressReport {
  uint64_t cycles = 0;
  uint64_t acked = 0;        // writes acknowledged by the children
  uint64_t recovered = 0;    // blocks recovered at the reopens (summed over cycles)
  uint64_t served = 0;       // recovered blocks read back and verified by the tier
  uint64_t wrong = 0;        // served blocks whose bytes were not their key's: must be 0
  uint64_t misses = 0;       // recovered blocks the tier refused (failed verification)
  uint64_t lost = 0;         // durable mode: acknowledged blocks not served: must be 0
  std::vector<std::string> violations;  // the first few, one line each
  bool ok() const { return wrong == 0 && lost == 0; }
};

Result<NvmeStressReport> RunNvmeCrashStress(const NvmeStressOptions& options);

}  // namespace kvtier
