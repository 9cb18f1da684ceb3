// Working-set estimation and working-set-aware admission (SparseServe §3.3, Algorithm 1).
//
// Decode: a request's working set is the HBM it needs per step, estimated as the union of
// the slices selected over its last `window_steps` decode steps, per (layer, KV head):
//     WS(r) = slice_bytes * sum over (layer, head) of | U_{last w steps} Sel(r, layer, head) |
// Prefill: exact. A layer-segmented prefill holds one layer of the prompt's KV; a chunked
// prefill holds every layer of every chunk so far.
//
// Admission: AdmitBatch takes the waiting requests in arrival order (FCFS) and admits them
// while the working sets of the running requests plus those admitted fit in the HBM given;
// the first that does not fit and every one after it are deferred (they stay queued and are
// offered again next step, never rejected). FCFS is strict: a later, smaller request does
// not overtake (no starvation of large ones).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvtier/geometry.h"
#include "kvtier/request_id.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

struct WorkingSetOptions {
  KvGeometry geometry{};
  // Decode steps whose selections form the working set (SparseServe's w; its overlap data
  // saturates at 12: +10.7% from 1 to 12 steps, +0.3% from 12 to 16).
  uint32_t window_steps = 12;
  Status Validate() const;  // geometry valid, 1 <= window_steps <= 4096
};

// Externally synchronized (the scheduler's thread owns it).
class WorkingSetEstimator {
 public:
  static Result<std::unique_ptr<WorkingSetEstimator>> Create(const WorkingSetOptions& options);

  // The selection of `request`'s current step for `layer`: `blocks_per_head` block indices
  // per KV head, row h at [h * blocks_per_head, ...) (the selector's layout). A slice
  // recorded twice in a step counts once. kInvalidArgument for a malformed selection.
  Status Record(RequestId request, LayerId layer, std::span<const uint32_t> blocks, uint32_t blocks_per_head);
  // Closes `request`'s current step; its steps older than the window roll off. A request's
  // window counts its own decode steps, so a deferred request keeps its estimate.
  void EndStep(RequestId request);
  // Forgets the request (finished or aborted).
  void Remove(RequestId request);

  // Distinct (layer, head, block) slices selected in the window (including the open step).
  uint64_t UnionSlices(RequestId request) const;
  // UnionSlices * slice_bytes; 0 for an unknown request.
  Bytes WorkingSet(RequestId request) const;
  // Closed steps in the window (at most window_steps).
  uint32_t StepsInWindow(RequestId request) const;
  const WorkingSetOptions& options() const { return options_; }

 private:
  explicit WorkingSetEstimator(const WorkingSetOptions& options) : options_(options) {}
  struct Seen {
    uint32_t steps = 0;        // steps in the window (and the open one) that selected it
    uint64_t last_step = ~0ull;  // the request's step that last counted it
  };
  struct PerRequest {
    uint64_t step = 0;                             // the open step's number
    std::vector<uint64_t> open;                    // slices first seen in the open step
    std::deque<std::vector<uint64_t>> closed;      // newest at the back
    std::unordered_map<uint64_t, Seen> seen;       // the union
  };
  WorkingSetOptions options_;
  std::unordered_map<RequestId, PerRequest> requests_;
};

// HBM held by a layer-segmented prefill: one layer of the prompt's KV (whole blocks).
Bytes LayerSegmentedPrefillBytes(const KvGeometry& geometry, uint64_t prompt_tokens);
// HBM held by a chunked prefill once `tokens_done` tokens have been prefilled: every layer.
Bytes ChunkedPrefillBytes(const KvGeometry& geometry, uint64_t tokens_done);

struct AdmissionCandidate {
  RequestId request{};
  Bytes working_set{};
};

struct AdmissionDecision {
  std::vector<RequestId> admitted;  // in arrival order
  std::vector<RequestId> deferred;  // in arrival order
  Bytes admitted_bytes{};           // sum of the admitted working sets
  // The first candidate alone exceeds the HBM, nothing else runs: admitted anyway (it
  // thrashes, but a queue that can never drain is worse). Counted, for the scheduler's log.
  bool oversized = false;
};

// FCFS while running_bytes + admitted working sets + the next one <= hbm_bytes (see above).
AdmissionDecision AdmitBatch(std::span<const AdmissionCandidate> candidates, Bytes hbm_bytes,
                             Bytes running_bytes = Bytes{0});

}  // namespace kvtier
