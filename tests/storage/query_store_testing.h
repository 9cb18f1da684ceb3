// Helpers for the query store tests: a temporary directory, deterministic embeddings and
// entries, and small-store options.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "query_store/query_store.h"

namespace kvtier::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvtier-qs-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A unit vector drawn from seed `seed` (independent seeds give nearly orthogonal vectors
// in high dimension).
inline std::vector<float> RandomUnit(uint32_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 17);
  std::normal_distribution<float> g;
  std::vector<float> v(dim);
  double s = 0;
  for (float& x : v) {
    x = g(rng);
    s += double(x) * x;
  }
  for (float& x : v) x = static_cast<float>(x / std::sqrt(s));
  return v;
}

// `base` plus noise of norm about `noise`, renormalised: similarity ~ 1/sqrt(1+noise^2).
inline std::vector<float> Near(const std::vector<float>& base, float noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, noise / std::sqrt(float(base.size())));
  std::vector<float> v = base;
  double s = 0;
  for (float& x : v) {
    x += g(rng);
    s += double(x) * x;
  }
  for (float& x : v) x = static_cast<float>(x / std::sqrt(s));
  return v;
}

inline QueryEntry MakeEntry(uint64_t i, uint32_t dim) {
  QueryEntry e;
  e.id = "q" + std::to_string(i);
  e.query = "question " + std::to_string(i);
  e.response = "answer " + std::to_string(i) + std::string(i % 50, '.');
  e.embedding = RandomUnit(dim, i);
  e.source = "chunk-" + std::to_string(i / 10);
  return e;
}

inline QueryStoreOptions SmallOptions(const std::filesystem::path& dir, uint32_t dim = 32) {
  QueryStoreOptions o;
  o.dir = dir;
  o.dim = dim;
  o.write_buffer_bytes = 1 << 20;
  o.block_cache_bytes = 4 << 20;
  o.index_threads = 2;
  return o;
}

}  // namespace kvtier::testing
