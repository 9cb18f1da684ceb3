// NvmeTier: the NVMe tier. One preallocated slab file (slot_format.h: fixed slots, each a
// 4 KiB header record followed by the block's payload) opened O_DIRECT under a
// DirectIo policy, plus its RocksDB key index (nvme_index.h), both in a directory the user
// names. A tier owns capacity and addresses; NvmeMover moves the bytes.
//
// Blocks and keys. A caller that wants a block to survive a restart names its key: in the
// MoveBatch (`keys`, as the TierManager does) or with Bind before the mover writes it; the mover
// then writes the slot's header record (key, generation, checksum) and the payload as one
// request and, once it (and, in durable mode, its fdatasync) has completed, publishes
// key -> (slot, generation, checksum) in the index. A read verifies the payload against
// what the index says (no header read). Unbound writes are verified the same way (with the
// all-zero key) but not indexed: they live until the process ends. Release of a published
// slot deletes its index entry.
//
// Restart. Open loads the index: every indexed block's slot stays reserved (adopted) and is
// handed out by TakeRecovered(); nothing is read at open, each block is verified when it is
// read. A missing or empty index opens an empty tier: the slab's old blocks are dropped
// (their generations are below the new base, so they can never verify), not rebuilt from
// the header records. A slab of format version 1 or 2 is refused (kFailedPrecondition).
//
// Modes. kCache: index writes are not synced (a block whose entry is lost is a miss; a
// doubtful block fails verification: a miss). kDurable: a write is acknowledged only after
// fdatasync of the slab and a synced index write, so it survives kill -9 and power loss.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "file.h"
#include "kvtier/block_key.h"
#include "kvtier/logger.h"
#include "kvtier/tier.h"
#include "nvme_index.h"
#include "slot_format.h"
#include "slot_pool.h"

namespace kvtier {

enum class NvmeMode : uint8_t { kCache, kDurable };

struct NvmeTierOptions {
  std::string dir;            // created if missing; holds slab.kvt and index/
  uint64_t slot_bytes = 0;    // block bytes; rounded up to 4096
  uint32_t slot_count = 0;
  NvmeMode mode = NvmeMode::kCache;
  DirectIo direct_io = DirectIo::kPreferred;
  Logger* logger = nullptr;   // null = StderrLogger::Default()

  Status Validate() const;
};

struct NvmeTierStats {
  uint64_t recovered_blocks = 0;     // indexed blocks adopted at open
  uint64_t dropped_at_open = 0;      // malformed or conflicting index entries dropped
  uint64_t published = 0;            // blocks indexed after a completed write
  uint64_t data_loss = 0;            // blocks that failed verification (read or fsck)
  uint64_t unpublished = 0;          // index entries deleted on release
  uint64_t index_errors = 0;         // index writes that failed (the block is then not published)
  uint64_t index_puts = 0;           // index Put calls made by Publish (one WriteBatch each)
  uint64_t index_put_ns = 0;         // time spent in them (on the writing mover's I/O thread)
  uint64_t index_reopens = 0;        // index reopens that ended a failed-write state (nvme_index.h)
  bool index_writable = true;        // false while index writes are refused after a failed one
  bool direct = false;               // the slab is open with O_DIRECT
  bool written_extents = false;      // this open made the slab with written extents (PreallocateWrittenZeroes)
  std::string_view checksum_path;    // XXH3 vector path of the slot checksums ("avx512", "avx2", "sse2", ...)
};

struct FsckReport {
  uint64_t checked = 0;
  uint64_t bad = 0;            // blocks with a bad payload or a bad header record
  uint64_t bad_payloads = 0;   // payload does not verify against the index (a read would miss)
  uint64_t bad_records = 0;    // header record damaged or disagreeing with the index
  uint64_t dropped = 0;
  std::vector<std::string> problems;  // one line per bad block
};

class NvmeTier final : public Tier {
 public:
  static Result<std::unique_ptr<NvmeTier>> Open(NvmeTierOptions options);
  ~NvmeTier() override;

  std::string_view name() const override { return "nvme-slab"; }
  const TierCaps& caps() const override { return caps_; }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override { return slots_.Reserve(count, "nvme"); }
  void Release(std::span<const SlotId> slots, Fence last_use) override;
  Location Locate(SlotId slot) const override;  // FileExtent of the payload
  TierUsage usage() const override { return slots_.usage(); }

  // --- keys and restart -------------------------------------------------------------------
  // The blocks indexed at open (key, slot), once; their slots are reserved and now the
  // caller's (TierManager::Create adopts them).
  std::vector<std::pair<BlockKey, SlotId>> TakeRecovered() override;
  // The next write of `slot` (reserved) is published under `key`.
  void Bind(SlotId slot, const BlockKey& key);
  // The slot holding published `key`, or kNotFound.
  Result<SlotId> Find(const BlockKey& key) const;

  // --- for NvmeMover ------------------------------------------------------------------------
  int fd() const { return file_.fd.get(); }
  const nvme::SlabGeometry& geometry() const { return geometry_; }
  NvmeMode mode() const { return options_.mode; }
  uint64_t NextGeneration() { return next_generation_.fetch_add(1, std::memory_order_relaxed); }
  std::optional<BlockKey> BoundKey(SlotId slot) const;
  // What a read of `slot` must find; false when the slot holds no written block.
  bool Expect(SlotId slot, nvme::SlotExpectation* want, BlockKey* key) const;
  // Records completed writes (headers as written); indexes the bound ones in one batch.
  // On an index error nothing is published and the Status says why.
  Status Publish(std::span<const SlotId> slots, std::span<const nvme::SlotHeader> headers);
  // A block of `slot` failed verification: counted, forgotten and unindexed.
  void ReportDataLoss(SlotId slot);

  // Reads every indexed block's payload and header record (synchronous preads) and checks
  // both against the index; with `drop`, deletes the index entries of bad ones (a bad
  // record alone counts: fsck --drop leaves only blocks whose slab and index agree).
  Result<FsckReport> Fsck(bool drop);
  NvmeTierStats stats() const;

 private:
  struct SlotState {
    std::optional<BlockKey> bound;
    std::optional<BlockKey> published;
    uint64_t generation = 0;
    uint64_t payload_bytes = 0;
    uint64_t checksum = 0;
    bool written = false;
  };
  struct KeyHash {
    size_t operator()(const BlockKey& k) const noexcept { return k.hash64(); }
  };
  NvmeTier(NvmeTierOptions options, OpenedFile file, nvme::SlabGeometry geometry, std::unique_ptr<nvme::NvmeIndex> index);
  Status Recover();
  nvme::IndexSync sync() const { return options_.mode == NvmeMode::kDurable ? nvme::IndexSync::kSync : nvme::IndexSync::kNone; }

  NvmeTierOptions options_;
  OpenedFile file_;
  nvme::SlabGeometry geometry_;
  std::unique_ptr<nvme::NvmeIndex> index_;
  TierCaps caps_;
  SlotPool slots_;
  std::atomic<uint64_t> next_generation_{1};

  mutable std::mutex mu_;  // leaf lock: guards the fields below; never held across I/O waits
  std::vector<SlotState> state_;
  std::unordered_map<BlockKey, SlotId, KeyHash> published_;
  std::vector<nvme::IndexRecord> recovered_;
  NvmeTierStats stats_;
};

}  // namespace kvtier
