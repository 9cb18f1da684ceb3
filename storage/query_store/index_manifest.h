// The ANN index's manifest: a small text file `ann/INDEX` that names the current index
// payload (`ann/hnsw-<epoch>.bin`) and says which state of the store it reflects.
//
// Replacing the index is atomic: the payload is written and fsynced under a new name, the
// manifest is written to `INDEX.tmp`, fsynced, renamed over `INDEX`, and the directory is
// fsynced; only then is the old payload deleted. A crash at any step leaves either the old
// or the new manifest, each naming a complete payload. The manifest carries the payload's
// size and XXH3-64, and a checksum of its own lines, so a torn or altered file is detected
// (kDataLoss) and the index is rebuilt from RocksDB instead of being trusted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "kvtier/status.h"

namespace kvtier::query_store {

inline constexpr uint32_t kManifestVersion = 1;

struct IndexManifest {
  uint32_t version = kManifestVersion;
  uint32_t dim = 0;
  uint32_t m = 0;
  uint32_t ef_construction = 0;
  uint32_t element_bytes = 2;  // bytes per vector element in the payload (IEEE half)
  std::string db_identity;   // RocksDB's DB identity: a payload never moves to another store
  uint64_t epoch = 0;        // the store's mutation epoch the payload reflects
  uint64_t next_label = 0;   // every label below this had been assigned
  uint64_t live = 0;         // live vectors in the payload
  std::string payload;       // file name, in the manifest's directory
  uint64_t payload_bytes = 0;
  uint64_t payload_xxh3 = 0;
};

// kNotFound when `dir/INDEX` does not exist; kDataLoss when it does not parse or verify.
Result<IndexManifest> ReadManifest(const std::filesystem::path& dir);
// The atomic replace described above (the payload must already be written and fsynced).
Status WriteManifest(const std::filesystem::path& dir, const IndexManifest& manifest);

// XXH3-64 and size of a file's bytes.
struct FileDigest {
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};
Result<FileDigest> DigestFile(const std::filesystem::path& file);
Status FsyncDirectory(const std::filesystem::path& dir);

}  // namespace kvtier::query_store
