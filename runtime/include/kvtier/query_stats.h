// Query statistics for Expected Attention: per (layer, query head) the mean μ and the
// covariance Σ (population, 1/n) of pre-RoPE queries, either live — over a window of the
// most recent decode queries, skipping the sink positions — or from an offline statistics
// file (kvpress "expected_attention_with_stats": per-layer mean [L,H,d], covariance
// [L,H,d,d]) when the engine cannot hand kvtier its queries.
//
// Units: floats are fp32; a query is q_heads · head_dim floats, head-major.
// Threading: QueryStats is externally synchronized (one engine thread observes and reads);
// OfflineQueryStats is immutable after loading.
//
// The file format (docs/scoring.md, "Offline query statistics"): little-endian,
//   0  char[8]  magic "KVTQSTAT"
//   8  u32      version = 1
//  12  u32      layers    (>= 1)
//  16  u32      q_heads   (>= 1)
//  20  u32      head_dim  (even, 2 .. 1024)
//  24  u64      payload bytes = 4·L·H·d·(1 + d)
//  32  f32      mean [L][H][d], then covariance [L][H][d][d]
//  end u64      FNV-1a 64 of the payload bytes
// Covariances must be symmetric with a non-negative diagonal; every value finite.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

struct QueryMoments {
  uint32_t q_heads = 0, head_dim = 0;
  uint32_t samples = 0;      // queries the moments cover (0 for offline statistics)
  std::vector<float> mean{};  // [q_heads][head_dim]
  std::vector<float> cov{};   // [q_heads][head_dim][head_dim]
};

struct QueryStatsOptions {
  uint32_t layers = 0;
  uint32_t q_heads = 0;
  uint32_t head_dim = 0;
  uint32_t window = 128;      // the most recent queries kept per layer (ea_stats_buffer)
  uint32_t sink_tokens = 4;   // positions < sink_tokens are outliers, never observed

  Status Validate() const;  // non-zero dims, even head_dim <= 1024, window >= 1
};

class QueryStats {
 public:
  static Result<QueryStats> Create(QueryStatsOptions options);

  // Records the pre-RoPE query of the token at `position` in `layer`. A sink position is
  // skipped (OK). kInvalidArgument for a layer out of range, a wrong size or a non-finite
  // value (the window is unchanged then).
  Status Observe(LayerId layer, uint64_t position, std::span<const float> query);
  // The moments of the queries in the window. kFailedPrecondition before any query of the
  // layer was observed; kInvalidArgument for a layer out of range.
  Result<QueryMoments> Moments(LayerId layer) const;
  uint32_t samples(LayerId layer) const;  // queries in the window now (0 for a bad layer)
  const QueryStatsOptions& options() const { return options_; }

 private:
  explicit QueryStats(QueryStatsOptions options);
  QueryStatsOptions options_;
  std::vector<std::vector<float>> ring_;  // per layer: [window][q_heads][head_dim]
  std::vector<uint64_t> seen_;            // per layer: queries observed in all
};

struct OfflineQueryStats {
  uint32_t layers = 0, q_heads = 0, head_dim = 0;
  std::vector<float> mean{};  // [layers][q_heads][head_dim]
  std::vector<float> cov{};   // [layers][q_heads][head_dim][head_dim]

  // The moments of one layer (kInvalidArgument for a layer out of range).
  Result<QueryMoments> Layer(LayerId layer) const;
};

// kNotFound / kPermissionDenied / kIoError for the file itself; kDataLoss naming the field
// for a malformed file (bad magic, unsupported version, bad dimension, size or checksum
// mismatch, non-finite value, asymmetric covariance, negative variance).
Result<OfflineQueryStats> ReadQueryStatsFile(const std::string& path);
// kInvalidArgument when the arrays do not match the dimensions; errno statuses on I/O.
Status WriteQueryStatsFile(const std::string& path, const OfflineQueryStats& stats);

}  // namespace kvtier
