// Mover: copies bytes between the slots of two tiers (HBM<->DRAM over CUDA or the emulated
// tier's TBB copier; DRAM<->NVMe over io_uring). One mover per direction.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/stats.h"
#include "kvtier/types.h"

namespace kvtier {

// Copies `bytes` from (source slot, source_offset) to (destination slot, dest_offset).
// A whole block is {src, dst, 0, 0, block_bytes}; a slice uses the slice's offset.
struct CopySegment {
  SlotId src;
  SlotId dst;
  uint64_t src_offset = 0;
  uint64_t dst_offset = 0;
  uint64_t bytes = 0;
};

struct MoveBatch {
  std::vector<CopySegment> segments{};
  // Every fence here signals before any byte moves: the producers of the source bytes and
  // the last users of the destination slots. A failed fence fails the batch, copying nothing.
  std::vector<Fence> wait_for{};
  // Optional: empty, or one key per segment (the block segment i copies). A mover into a
  // persistent tier records the blocks under these keys, so that they survive a restart
  // (TierManager fills it when the destination tier is persistent); other movers ignore it.
  // A non-empty list of another length fails the batch with kInvalidArgument.
  std::vector<BlockKey> keys{};
};

// Implementations are thread-safe.
class Mover {
 public:
  virtual ~Mover() = default;
  virtual std::string_view name() const = 0;
  virtual TierKind source() const = 0;
  virtual TierKind destination() const = 0;
  // Starts the copy and returns at once. The fence signals when every byte has landed, or
  // with the error; on error the destination bytes are undefined and must not be served.
  // Segments out of slot bounds fail the batch with kInvalidArgument before anything moves.
  [[nodiscard]] virtual Fence Submit(MoveBatch batch) = 0;
  virtual MoverStats stats() const = 0;
};

}  // namespace kvtier
