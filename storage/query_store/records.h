// On-disk encodings of the query store's RocksDB values (docs/query_store.md is the spec).
//
// Every value is `payload || XXH3-64(payload, seed = XXH3-64(column family name || key))`,
// little-endian. The seed binds a value to its column family and key, so a value that is
// valid but sits under the wrong key (a misplaced record) fails verification like a bit
// flip does. A value that fails is kDataLoss: it is never served.
//
// Labels (the store's internal entry numbers, assigned in ingest order and never reused)
// are keys in big-endian so that iteration order is label order.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/status.h"

namespace kvtier::query_store {

// Column family names (the `default` family holds the store's metadata).
inline constexpr std::string_view kCfMeta = "default";
inline constexpr std::string_view kCfEntries = "entries";  // label -> EntryRecord
inline constexpr std::string_view kCfIds = "ids";          // id -> label
inline constexpr std::string_view kCfVectors = "vectors";  // label -> unit embedding + norm
inline constexpr std::string_view kCfHits = "hits";        // label -> hit count, last hit
inline constexpr std::string_view kCfErased = "erased";    // label -> "" (erasures not yet in the saved index)

// Metadata keys (values are u32/u64 payloads, sealed like every value).
inline constexpr std::string_view kMetaFormatVersion = "format_version";
inline constexpr std::string_view kMetaDim = "dim";
inline constexpr std::string_view kMetaCreated = "created_unix_ms";
inline constexpr std::string_view kMetaNextLabel = "next_label";
inline constexpr std::string_view kMetaEpoch = "epoch";
inline constexpr std::string_view kMetaLive = "live";
inline constexpr std::string_view kMetaDuplicates = "duplicates_total";

inline constexpr uint32_t kFormatVersion = 1;

// Appends the checksum; `Unseal` verifies it and returns the payload (a view into `value`).
std::string Seal(std::string_view cf, std::string_view key, std::string payload);
Result<std::string_view> Unseal(std::string_view cf, std::string_view key, std::string_view value);

std::string LabelKey(uint64_t label);
Result<uint64_t> ParseLabelKey(std::string_view key);

// A sealed u64 (u32 values are stored as u64 too).
std::string EncodeU64(std::string_view cf, std::string_view key, uint64_t v);
Result<uint64_t> DecodeU64(std::string_view cf, std::string_view key, std::string_view value);

struct EntryRecord {
  std::string id;
  std::string query;
  std::string response;
  std::string source;
  std::vector<int32_t> prefix_tokens;
  std::optional<ChainHash> prefix_chain;
  int64_t created_unix_ms = 0;
};
std::string EncodeEntry(uint64_t label, const EntryRecord& e);
Result<EntryRecord> DecodeEntry(uint64_t label, std::string_view value);

// `unit` is the normalised embedding; `norm` the norm it had before.
std::string EncodeVector(uint64_t label, float norm, std::span<const float> unit);
// Writes `dim` floats to `out`. kDataLoss on a bad checksum or a dimension other than `dim`.
Status DecodeVector(uint64_t label, std::string_view value, uint32_t dim, float* out, float* norm);

std::string EncodeIdValue(std::string_view id, uint64_t label);
Result<uint64_t> DecodeIdValue(std::string_view id, std::string_view value);

struct HitRecord {
  uint64_t count = 0;
  int64_t last_hit_unix_ms = 0;
};
std::string EncodeHits(uint64_t label, const HitRecord& h);
Result<HitRecord> DecodeHits(uint64_t label, std::string_view value);

}  // namespace kvtier::query_store
