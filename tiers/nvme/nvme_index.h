// NvmeIndex: the key -> (slot, generation, checksum, payload bytes) index of one slab, in
// RocksDB (WAL on). Puts of one mover batch go in one WriteBatch (group commit); `sync`
// chooses whether a write waits for the WAL to reach the drive (durable mode) or not
// (cache mode: a lost index entry is a miss). RocksDB headers stay in nvme_index.cc.
// The memtable is a vector (writes append; reads sort): the index is written at run time
// and read only at open, so LoadAll and GetCounter are meant for open, not for hot paths.
//
// A failed write (kNoSpace, kIoError: e.g. the WAL hit a full disk) puts the index in an
// error state: from then on writes are refused with a Status of the same code that names
// the first error, without touching RocksDB (RocksDB 7.8 aborts on a write after a failed
// WAL write, and its Resume() reuses the failed WAL writer). A write in the error state
// first tries to reopen the DB handle, at most once per kReopenInterval: once space has
// returned the reopen succeeds (RocksDB replays its WAL) and writes work again. Reads of
// the open handle keep working; after a failed reopen (no handle) they are kUnavailable.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier::nvme {

struct IndexRecord {
  BlockKey key;
  SlotId slot;
  uint64_t generation = 0;
  uint64_t checksum = 0;
  uint64_t payload_bytes = 0;
};

enum class IndexSync : uint8_t { kNone, kSync };

// How often a write in the error state may retry by reopening the index.
inline constexpr std::chrono::milliseconds kReopenInterval{100};

class NvmeIndex {
 public:
  // Opens (creating) the index at `path`.
  static Result<std::unique_ptr<NvmeIndex>> Open(const std::string& path);
  ~NvmeIndex();

  Status Put(std::span<const IndexRecord> records, IndexSync sync);
  Status Delete(std::span<const BlockKey> keys, IndexSync sync);
  // Every record, in key order. Malformed values are skipped and counted in *bad.
  Result<std::vector<IndexRecord>> LoadAll(uint64_t* bad) const;
  // A persisted counter (the next generation).
  Result<uint64_t> GetCounter() const;
  Status PutCounter(uint64_t value, IndexSync sync);
  // False while writes are refused after a failed write (see above).
  bool writable() const;
  // Reopens that ended an error state.
  uint64_t reopens() const;

 private:
  struct Impl;
  explicit NvmeIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::nvme
