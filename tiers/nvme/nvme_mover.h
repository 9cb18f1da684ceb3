// NvmeMover: DRAM <-> NVMe over io_uring, one mover per direction. Payloads go straight
// between the DRAM pool's slots and the slab's slots (O_DIRECT): no bounce copy. A read is
// one READ_FIXED of the payload into the DRAM slot (the pool is registered with the ring),
// nothing else. A write is one WRITEV of two pieces, the slot's header record (slot_format.h;
// from a small area owned by the mover, one record per in-flight segment) and then the DRAM
// slot's payload, which are adjacent on disk: one device request per block, as fio makes.
//
// Segments are whole blocks (offsets 0): a slot's checksum covers its whole payload.
//   DRAM -> NVMe: header record and payload (key from MoveBatch::keys or NvmeTier::Bind, a
//                 new generation, the checksum of the DRAM bytes) are written (all of them: a
//                 short write is resubmitted for the rest); in durable mode the slab is
//                 fdatasync'ed (one fdatasync covers every batch whose writes completed
//                 before it was issued); then the tier publishes the blocks: all batches
//                 completed in one reap pass in one index WriteBatch. A failed write
//                 publishes nothing and fails the batch; a failed index write fails every
//                 batch of that WriteBatch.
//   NVMe -> DRAM: the payload is read, then verified against the tier's expectation (the
//                 index's generation, length and checksum, the slot's offset, and the key:
//                 MoveBatch::keys[i] when given, else the one the slot was published under;
//                 no header read). Any failure fails the batch with
//                 kDataLoss (or the I/O error) and the block is dropped from the tier: it is
//                 never reported loaded.
// One I/O thread per mover submits and reaps; a batch starts once its wait_for fences have
// signaled (the thread never blocks on a fence). Fences signal on the I/O thread.
//
// Thread-safe.
#pragma once

#include <array>
#include <atomic>
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

struct NvmeMoverOptions {
  uint32_t queue_depth = 64;  // segments (blocks) in flight
  CompletionFault fault;      // tests only: rewrites completions (EIO, short transfers)
  // Benchmarks only: index each batch on its own as it completes (the pre-2026-11-27
  // behaviour) instead of all batches completed in one reap pass in one WriteBatch.
  bool publish_per_batch = false;
  // Completions the I/O thread handles per reap pass before it submits the blocks they let
  // start (fence callbacks queue new batches; freed segments take queued ones). 0: queue
  // depth / 8 (at least 1). Benchmarks only: UINT32_MAX handles every ready completion,
  // including those arriving during the pass (the pre-2026-11-27 behaviour: at qd 32 it
  // settled into submit-32 / reap-32 lockstep).
  uint32_t reap_batch = 0;
};

// Where a block's time goes between Submit and its fence (always on: a few steady_clock
// reads per block on the I/O thread, relaxed counters). Stages, per block (segment):
//   kWaitFor   Submit -> its wait_for fences signaled and the batch queued for the I/O thread
//   kQueueHop  queued -> the I/O thread took the batch
//   kSlotWait  taken -> its SQE prepared (waits for a free in-flight segment)
//   kToSubmit  SQE prepared -> io_uring_submit returned (the rest of the pass's preparation)
//   kDevice    submitted -> the (last) CQE reaped: the device plus however long the CQE
//              waited for the I/O thread (busy elsewhere in a reap pass)
//   kVerify    reaped -> verified (reads: expectation + checksum; writes: nothing)
//   kToSignal  verified -> the fence's Signal begins (other segments of the batch, the rest
//              of the reap pass, fdatasync, the index WriteBatch)
//   kCallbacks the fence's Signal: callbacks it runs on the I/O thread (per batch)
//   kTotal     Submit -> Signal begins (per batch)
struct NvmeStageHistogram {
  // Log-linear buckets over ns: 8 per power of two (12.5% resolution).
  static constexpr size_t kBuckets = 8 + 61 * 8;
  std::array<uint64_t, kBuckets> counts{};
  uint64_t sum_ns = 0;
  uint64_t total() const;
  double QuantileUs(double q) const;  // the bucket's midpoint; 0 when empty
  double MeanUs() const;
  static size_t BucketOf(uint64_t ns);
};

struct NvmeMoverBreakdown {
  enum Stage : size_t { kWaitFor, kQueueHop, kSlotWait, kToSubmit, kDevice, kVerify, kToSignal, kCallbacks, kTotal, kStages };
  static const char* StageName(size_t stage);
  std::array<NvmeStageHistogram, kStages> stages;
  // The I/O thread: loop passes, time blocked waiting for a CQE (idle), time in
  // io_uring_submit, CQEs handled per reap pass.
  uint64_t passes = 0;
  uint64_t idle_ns = 0;
  uint64_t submit_calls = 0;
  uint64_t submit_ns = 0;
  uint64_t reap_calls = 0;
  uint64_t reaped = 0;  // completions delivered by Reap (requests, not blocks)
  NvmeStageHistogram reap_pass;  // a Reap call's time apart from waiting (its CQEs' processing)
  // The difference of two snapshots (counters since `before`).
  NvmeMoverBreakdown Since(const NvmeMoverBreakdown& before) const;
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
  NvmeMoverBreakdown breakdown() const;  // any thread

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
