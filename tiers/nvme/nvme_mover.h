// NvmeMover: DRAM <-> NVMe over io_uring, one mover per direction. Payloads go straight
// between the DRAM pool's slots and the slab (O_DIRECT): no bounce copy. Slot headers go
// through a small header area owned by the mover (one 4 KiB sector per in-flight segment).
// A slot's header sector and its payload are adjacent on disk, so by default a block is one
// vectored request (NvmeSlotIo::kVectored: READV/WRITEV of [header sector, DRAM payload]);
// NvmeSlotIo::kFixedPair moves it as two fixed-buffer requests instead (the pool and the
// header area are registered with the ring either way). The bytes on disk are the same.
//
// Segments are whole blocks (offsets 0): a slot's checksum covers its whole payload.
//   DRAM -> NVMe: header (key from MoveBatch::keys or NvmeTier::Bind, a new generation, the checksum of
//                 the DRAM bytes) and payload are written (all of both: a short write is
//                 resubmitted for the rest); in durable mode the slab is
//                 fdatasync'ed (one fdatasync covers every batch whose writes completed
//                 before it was issued); then the tier publishes the blocks: all batches
//                 completed in one reap pass in one index WriteBatch. A failed write
//                 publishes nothing and fails the batch; a failed index write fails every
//                 batch of that WriteBatch.
//   NVMe -> DRAM: header and payload are read, then verified (magic, version, offset,
//                 generation, length, key, checksum; the key is MoveBatch::keys[i] when
//                 given, else the one the slot was published under). Any failure fails the batch with
//                 kDataLoss (or the I/O error) and the block is dropped from the tier: it is
//                 never reported loaded.
// One I/O thread per mover submits and reaps; a batch starts once its wait_for fences have
// signaled (the thread never blocks on a fence). Fences signal on the I/O thread.
//
// Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "host_tier.h"
#include "kvtier/mover.h"
#include "nvme_tier.h"
#include "uring_queue.h"

namespace kvtier {

enum class NvmeDirection : uint8_t { kDramToNvme, kNvmeToDram };

// How one block (slot header sector + payload, adjacent in the slab) goes to or from disk.
enum class NvmeSlotIo : uint8_t {
  kVectored,   // one IORING_OP_READV / WRITEV: the header sector, then the DRAM slot's payload
  kFixedPair,  // two requests on registered buffers (READ_FIXED / WRITE_FIXED): header, payload
};

struct NvmeMoverOptions {
  uint32_t queue_depth = 64;  // segments (blocks) in flight
  NvmeSlotIo slot_io = NvmeSlotIo::kVectored;
  CompletionFault fault;      // tests only: rewrites completions (EIO, short transfers)
  // Benchmarks only: index each batch on its own as it completes (the pre-2026-11-27
  // behaviour) instead of all batches completed in one reap pass in one WriteBatch.
  bool publish_per_batch = false;
};

class NvmeMover final : public Mover {
 public:
  // Borrows both tiers: they must outlive the mover.
  static Result<std::unique_ptr<NvmeMover>> Create(HostTier* dram, NvmeTier* nvme, NvmeDirection direction,
                                                   NvmeMoverOptions options = {});
  ~NvmeMover() override;  // waits for every submitted batch

  std::string_view name() const override { return name_; }
  TierKind source() const override;
  TierKind destination() const override;
  Fence Submit(MoveBatch batch) override;
  MoverStats stats() const override;

  struct Job;

 private:
  struct Io;
  NvmeMover(HostTier* dram, NvmeTier* nvme, NvmeDirection direction, NvmeMoverOptions options);
  void IoLoop();
  void Finish(const std::shared_ptr<Job>& job);

  HostTier* dram_;
  NvmeTier* nvme_;
  NvmeDirection direction_;
  NvmeMoverOptions options_;
  std::string name_;
  std::unique_ptr<Io> io_;  // the ring and in-flight state: touched by the I/O thread only

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  size_t outstanding_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kvtier
