// MoverCounters: the statistics every mover keeps (bytes, batches, segments, errors, copy
// time, latency histogram), recorded once per batch and read as a MoverStats snapshot.
// Thread-safe; relaxed atomics (statistics only).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "kvtier/stats.h"
#include "kvtier/types.h"

namespace kvtier {

class MoverCounters {
 public:
  // A batch refused before anything moved (bad segments, a failed fence it waited for).
  void RecordRejected() { errors_.fetch_add(1, std::memory_order_relaxed); }
  // A batch that ran: `bytes` count only when it succeeded; `latency_ns` is submit to
  // completion, `busy_ns` the time spent moving bytes (GB/s = bytes / busy).
  void RecordBatch(uint64_t segments, uint64_t bytes, bool ok, uint64_t latency_ns, uint64_t busy_ns) {
    latency_.Record(latency_ns);
    busy_ns_.fetch_add(busy_ns, std::memory_order_relaxed);
    batches_.fetch_add(1, std::memory_order_relaxed);
    segments_.fetch_add(segments, std::memory_order_relaxed);
    if (ok) {
      bytes_.fetch_add(bytes, std::memory_order_relaxed);
    } else {
      errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // GPU movers: bytes of a successful batch that crossed PCIe as copy-engine runs.
  void RecordEngineBytes(uint64_t bytes) { engine_bytes_.fetch_add(bytes, std::memory_order_relaxed); }
  MoverStats Snapshot(std::string name, TierKind source, TierKind destination) const {
    MoverStats m;
    m.name = std::move(name);
    m.source = source;
    m.destination = destination;
    m.bytes = bytes_.load(std::memory_order_relaxed);
    m.batches = batches_.load(std::memory_order_relaxed);
    m.segments = segments_.load(std::memory_order_relaxed);
    m.errors = errors_.load(std::memory_order_relaxed);
    m.busy_ns = busy_ns_.load(std::memory_order_relaxed);
    m.engine_bytes = engine_bytes_.load(std::memory_order_relaxed);
    m.latency = latency_.Snapshot();
    return m;
  }

 private:
  std::atomic<uint64_t> bytes_{0}, batches_{0}, segments_{0}, errors_{0}, busy_ns_{0}, engine_bytes_{0};
  LatencyRecorder latency_;
};

}  // namespace kvtier
