// Working-set estimator: per request a window of closed steps, each the slices first seen in
// that step, and a count per slice of the window's steps that selected it. The union is the
// set of slices with a non-zero count, so a step rolling off costs its own slices only.
#include "kvtier/working_set.h"

#include <fmt/format.h>

namespace kvtier {
namespace {

// (layer, head, block) packed into 64 bits: 20 + 12 + 32 bits (Validate bounds the first two).
uint64_t Pack(uint32_t layer, uint32_t head, uint32_t block) {
  return (uint64_t{layer} << 44) | (uint64_t{head} << 32) | block;
}

}  // namespace

Status WorkingSetOptions::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  if (geometry.layers >= (1u << 20) || geometry.kv_heads >= (1u << 12)) {
    return Status::InvalidArgument(fmt::format("working set: {} layers x {} kv heads exceed 2^20 x 2^12",
                                               geometry.layers, geometry.kv_heads));
  }
  if (window_steps < 1 || window_steps > 4096) {
    return Status::InvalidArgument(fmt::format("window_steps {} is outside [1, 4096]", window_steps));
  }
  return Status();
}

Result<std::unique_ptr<WorkingSetEstimator>> WorkingSetEstimator::Create(const WorkingSetOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate().Annotate("WorkingSetOptions"));
  return std::unique_ptr<WorkingSetEstimator>(new WorkingSetEstimator(options));
}

Status WorkingSetEstimator::Record(RequestId request, LayerId layer, std::span<const uint32_t> blocks,
                                   uint32_t blocks_per_head) {
  const KvGeometry& g = options_.geometry;
  if (layer.value() >= g.layers) {
    return Status::InvalidArgument(fmt::format("working set: layer {} of {}", layer.value(), g.layers));
  }
  if (blocks.size() != size_t{g.kv_heads} * blocks_per_head) {
    return Status::InvalidArgument(fmt::format("working set: {} indices, expected {} kv heads x {}", blocks.size(),
                                               g.kv_heads, blocks_per_head));
  }
  PerRequest& r = requests_[request];
  for (uint32_t h = 0; h < g.kv_heads; ++h) {
    for (uint32_t i = 0; i < blocks_per_head; ++i) {
      const uint64_t id = Pack(layer.value(), h, blocks[size_t{h} * blocks_per_head + i]);
      Seen& s = r.seen[id];
      if (s.last_step == r.step) continue;  // already counted in this step
      s.last_step = r.step;
      ++s.steps;
      r.open.push_back(id);
    }
  }
  return Status();
}

void WorkingSetEstimator::EndStep(RequestId request) {
  auto it = requests_.find(request);
  if (it == requests_.end()) return;
  PerRequest& r = it->second;
  r.closed.push_back(std::move(r.open));
  r.open.clear();
  ++r.step;
  while (r.closed.size() > options_.window_steps) {
    for (uint64_t id : r.closed.front()) {
      auto s = r.seen.find(id);
      if (--s->second.steps == 0) r.seen.erase(s);
    }
    r.closed.pop_front();
  }
}

void WorkingSetEstimator::Remove(RequestId request) { requests_.erase(request); }

uint64_t WorkingSetEstimator::UnionSlices(RequestId request) const {
  auto it = requests_.find(request);
  return it == requests_.end() ? 0 : it->second.seen.size();
}

Bytes WorkingSetEstimator::WorkingSet(RequestId request) const {
  return Bytes{UnionSlices(request) * options_.geometry.slice_bytes()};
}

uint32_t WorkingSetEstimator::StepsInWindow(RequestId request) const {
  auto it = requests_.find(request);
  return it == requests_.end() ? 0 : static_cast<uint32_t>(it->second.closed.size());
}

Bytes LayerSegmentedPrefillBytes(const KvGeometry& g, uint64_t prompt_tokens) {
  const uint64_t blocks = (prompt_tokens + g.block_tokens - 1) / g.block_tokens;
  return Bytes{blocks * g.block_bytes()};
}

Bytes ChunkedPrefillBytes(const KvGeometry& g, uint64_t tokens_done) {
  return Bytes{LayerSegmentedPrefillBytes(g, tokens_done).value() * g.layers};
}

AdmissionDecision AdmitBatch(std::span<const AdmissionCandidate> candidates, Bytes hbm_bytes, Bytes running_bytes) {
  AdmissionDecision d;
  uint64_t used = running_bytes.value();
  bool full = false;
  for (const AdmissionCandidate& c : candidates) {
    if (!full && used + c.working_set.value() <= hbm_bytes.value()) {
      used += c.working_set.value();
      d.admitted_bytes = Bytes{d.admitted_bytes.value() + c.working_set.value()};
      d.admitted.push_back(c.request);
    } else if (!full && d.admitted.empty() && running_bytes.value() == 0) {
      // Alone and too big: run it rather than never.
      used += c.working_set.value();
      d.admitted_bytes = c.working_set;
      d.admitted.push_back(c.request);
      d.oversized = true;
      full = true;
    } else {
      full = true;
      d.deferred.push_back(c.request);
    }
  }
  return d;
}

}  // namespace kvtier
