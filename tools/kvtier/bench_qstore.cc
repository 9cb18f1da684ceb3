// `kvtier bench qstore`: the precomputed query store at StorInfer scale (150,000 entries of
// dimension 384 by default) on synthetic clustered embeddings. Reports ingest entries/s,
// store bytes on disk per entry, recall@1 of the ANN lookup against exact search, warm
// lookup p50/p99 and the p99 of the first 1,000 lookups after reopening, next to the
// baseline measured in the same run: the exact search (a scan of every vector).
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "commands.h"
#include "query_store/query_store.h"

namespace kvtier::cli {
namespace {

struct BenchQstoreOptions {
  uint32_t entries = 150000;
  uint32_t dim = 384;
  uint32_t clusters = 0;  // 0 = entries / 100
  uint32_t queries = 2000;      // recall@1 and warm latency
  uint32_t exact_queries = 300; // the exact-search baseline's latency
  uint32_t batch = 256;
  uint32_t ef = 0;              // 0 = the store's default
  uint32_t ef_construction = 0; // 0 = the store's default
  uint32_t m = 0;               // 0 = the store's default
  uint32_t dedup_ef = 0;        // 0 = the store's default
  uint32_t index_threads = 0;   // 0 = the store's default
  std::vector<uint32_t> sweep_ef;  // extra search ef values to report recall and latency for
  double dup_fraction = 0.01;   // near-copies mixed into the input (deduplicated on ingest)
 std::string durability = "sync";
  std::string data = "low-rank";  // or "isotropic"
  std::string dir;              // empty = a fresh directory under /tmp, removed afterwards
  bool drop_caches = false;
  bool quick = false;
  bool json = false;
};

using Clock = std::chrono::steady_clock;

// Deterministic synthetic data: entry i belongs to cluster i % clusters. Two shapes:
//  - low-rank (default): centre + a point of a 16-dimensional subspace of the cluster's own
//    (spread 0.6) + a little isotropic noise (0.15). Text embeddings vary along few
//    directions within a topic, so neighbours have a spread of similarities.
//  - isotropic: centre + noise of norm 0.75 in all 384 dimensions: every member is about as
//    far from every other (similarity ~0.64), the worst case for a graph index.
class Generator {
 public:
  enum class Shape { kLowRank, kIsotropic };
  static constexpr uint32_t kRank = 16;

  Generator(uint32_t dim, uint32_t clusters, Shape shape)
      : dim_(dim), shape_(shape), centres_(size_t(clusters) * dim) {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> g;
    for (float& x : centres_) x = g(rng);
    for (uint32_t c = 0; c < clusters; ++c) Normalize(std::span(centres_).subspan(size_t(c) * dim, dim));
    if (shape_ == Shape::kLowRank) {
      bases_.resize(size_t(clusters) * kRank * dim);  // random directions, ~orthogonal in high dim
      for (float& x : bases_) x = g(rng) / std::sqrt(float(dim));
    }
  }
  uint32_t clusters() const { return static_cast<uint32_t>(centres_.size() / dim_); }
  std::string_view shape_name() const { return shape_ == Shape::kLowRank ? "low-rank" : "isotropic"; }

  // A member of cluster `c`, seeded by `seed`.
  std::vector<float> Point(uint32_t c, uint64_t seed) const {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
    std::vector<float> v(centres_.begin() + ptrdiff_t(size_t(c) * dim_), centres_.begin() + ptrdiff_t(size_t(c + 1) * dim_));
    if (shape_ == Shape::kIsotropic) {
      AddNoise(v, rng, 0.75f);
    } else {
      std::normal_distribution<float> z(0.0f, 0.6f / std::sqrt(float(kRank)));
      for (uint32_t r = 0; r < kRank; ++r) {
        const float w = z(rng);
        const float* b = bases_.data() + (size_t(c) * kRank + r) * dim_;
        for (uint32_t i = 0; i < dim_; ++i) v[i] += w * b[i];
      }
      AddNoise(v, rng, 0.15f);
    }
    Normalize(v);
    return v;
  }
  std::vector<float> Entry(uint64_t i) const { return Point(static_cast<uint32_t>(i % clusters()), i); }
  // Near the stored entry i: `noise` 0.25 gives a paraphrase (similarity about 0.97),
  // 0.05 a near-copy (about 0.999).
  std::vector<float> Paraphrase(uint64_t i, uint64_t salt, float noise = 0.25f) const {
    std::vector<float> v = Entry(i);
    std::mt19937_64 rng(salt);
    AddNoise(v, rng, noise);
    Normalize(v);
    return v;
  }

 private:
  void AddNoise(std::vector<float>& v, std::mt19937_64& rng, float norm) const {
    std::normal_distribution<float> g(0.0f, norm / std::sqrt(float(dim_)));
    for (float& x : v) x += g(rng);
  }
  static void Normalize(std::span<float> v) {
    double s = 0;
    for (float x : v) s += double(x) * x;
    const float inv = static_cast<float>(1.0 / std::sqrt(s));
    for (float& x : v) x *= inv;
  }
  uint32_t dim_;
  Shape shape_;
  std::vector<float> centres_;
  std::vector<float> bases_;  // per cluster, kRank directions of dim_ floats
};

std::string Text(std::mt19937_64& rng, size_t bytes) {
  static constexpr std::string_view kWords[] = {"the", "cache", "block", "token", "model", "answer", "query", "layer",
                                                "store", "memory", "prefix", "attention", "value", "key", "tier"};
  std::string s;
  while (s.size() < bytes) {
    s += kWords[rng() % std::size(kWords)];
    s += ' ';
  }
  return s;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * double(v.size())))];
}

// CPU seconds this process has used (all threads, RocksDB's background ones included).
double CpuSeconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) * 1e-6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

int Fail(std::string_view what, const Status& s) {
  fmt::print(stderr, "kvtier bench qstore: {}: {}\n", what, s.ToString());
  return 1;
}

int RunBenchQstore(BenchQstoreOptions o) {
  if (o.quick) {
    o.entries = std::min<uint32_t>(o.entries, 5000);
    o.queries = std::min<uint32_t>(o.queries, 300);
    o.exact_queries = std::min<uint32_t>(o.exact_queries, 100);
  }
  if (o.entries < 100 || o.dim == 0 || o.batch == 0 || o.queries == 0) {
    fmt::print(stderr, "kvtier bench qstore: need --entries >= 100, --dim, --batch and --queries >= 1\n");
    return 2;
  }
  if (o.durability != "sync" && o.durability != "buffered") {
    fmt::print(stderr, "kvtier bench qstore: --durability must be sync or buffered\n");
    return 2;
  }
  const bool temp_dir = o.dir.empty();
  const std::filesystem::path dir =
      temp_dir ? std::filesystem::temp_directory_path() / fmt::format("kvtier-bench-qstore-{}", ::getpid()) : std::filesystem::path(o.dir);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (o.data != "low-rank" && o.data != "isotropic") {
    fmt::print(stderr, "kvtier bench qstore: --data must be low-rank or isotropic\n");
    return 2;
  }
  const Generator gen(o.dim, o.clusters ? o.clusters : std::max<uint32_t>(1, o.entries / 100),
                      o.data == "low-rank" ? Generator::Shape::kLowRank : Generator::Shape::kIsotropic);

  QueryStoreOptions so;
  so.dir = dir;
  so.dim = o.dim;
  so.mode = OpenMode::kCreateNew;
  so.durability = o.durability == "sync" ? Durability::kSync : Durability::kBuffered;
  if (o.ef) so.hnsw_ef_search = o.ef;
  if (o.ef_construction) so.hnsw_ef_construction = o.ef_construction;
  if (o.m) so.hnsw_m = o.m;
  if (o.dedup_ef) so.dedup_ef_search = o.dedup_ef;
  if (o.index_threads) so.index_threads = o.index_threads;
  auto store = QueryStore::Open(so);
  if (!store.ok()) return Fail("open", store.status());

  // --- ingest ---
  std::mt19937_64 text_rng(7);
  const auto dup_every = o.dup_fraction > 0 ? static_cast<uint64_t>(std::max(2.0, 1.0 / o.dup_fraction)) : 0;
  uint64_t duplicates_fed = 0;
  Clock::duration ingest_time{};
  double ingest_cpu = 0;
  std::vector<QueryEntry> batch;
  for (uint64_t i = 0; i < o.entries;) {
    batch.clear();
    for (; i < o.entries && batch.size() < o.batch; ++i) {
      QueryEntry e;
      e.id = fmt::format("q{}", i);
      e.query = Text(text_rng, 80);
      e.response = Text(text_rng, 1024);
      e.source = fmt::format("chunk-{}", i / 16);
      if (dup_every && i > 0 && i % dup_every == 0) {
        e.embedding = gen.Paraphrase(i - 1, i, 0.05f);  // a near-copy of the previous entry:
        ++duplicates_fed;                               // similarity ~0.999, deduplicated
      } else {
        e.embedding = gen.Entry(i);
      }
      batch.push_back(std::move(e));
    }
    const auto t0 = Clock::now();
    const double c0 = CpuSeconds();
    auto r = (*store)->Ingest(batch);
    ingest_cpu += CpuSeconds() - c0;
    ingest_time += Clock::now() - t0;
    if (!r.ok()) return Fail("ingest", r.status());
  }
  const QueryStoreStats after_ingest = (*store)->Stats();
  const double ingest_s = std::chrono::duration<double>(ingest_time).count();
  const auto tc = Clock::now();
  if (Status s = (*store)->Close(); !s.ok()) return Fail("close", s);
  const double close_s = std::chrono::duration<double>(Clock::now() - tc).count();
  store = Result<std::unique_ptr<QueryStore>>(Status::Cancelled("closed"));
  const uint64_t disk_bytes = [&] {
    uint64_t t = 0;
    for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it); it.increment(ec)) {
      if (it->is_regular_file(ec)) t += it->file_size(ec);
    }
    return t;
  }();

  // Queries: even = paraphrase of a stored entry (should hit), odd = a fresh point of a
  // cluster (nearest neighbour at similarity ~0.6: a miss at the usual thresholds).
  std::vector<std::vector<float>> queries(o.queries);
  for (uint32_t q = 0; q < o.queries; ++q) {
    const uint64_t target = (uint64_t(q) * 7919) % o.entries;
    queries[q] = q % 2 == 0 ? gen.Paraphrase(target, 1000000 + q)
                            : gen.Point(static_cast<uint32_t>(target % gen.clusters()), 5000000 + q);
  }

  // --- reopen: the first lookups find a freshly opened RocksDB and a freshly loaded index ---
  bool dropped = false;
  if (o.drop_caches) {
    ::sync();
    std::ofstream drop("/proc/sys/vm/drop_caches");
    drop << "3\n";
    dropped = static_cast<bool>(drop);
  }
  so.mode = OpenMode::kOpenExisting;
  const auto to = Clock::now();
  store = QueryStore::Open(so);
  if (!store.ok()) return Fail("reopen", store.status());
  const double open_s = std::chrono::duration<double>(Clock::now() - to).count();
  const QueryStoreStats reopened = (*store)->Stats();
  LookupOptions lo;
  lo.threshold = 0.9f;
  lo.k = 1;
  std::vector<double> first_lat;
  const uint32_t first_n = std::min<uint32_t>(1000, o.queries);
  for (uint32_t q = 0; q < first_n; ++q) {
    const auto t0 = Clock::now();
    auto r = (*store)->Lookup(queries[q], lo);
    first_lat.push_back(Us(Clock::now() - t0));
    if (!r.ok()) return Fail("lookup", r.status());
  }

  // --- warm ANN lookups, recall@1 against exact, and the exact baseline's latency ---
  std::vector<double> warm_lat, exact_lat;
  uint32_t agree = 0, hits = 0;
  LookupOptions all = lo;
  all.threshold = -1.0f;  // recall compares the top-1 whatever its similarity
  LookupOptions exact = all;
  exact.mode = SearchMode::kExact;
  for (uint32_t q = 0; q < o.queries; ++q) {
    const auto t0 = Clock::now();
    auto r = (*store)->Lookup(queries[q], lo);
    warm_lat.push_back(Us(Clock::now() - t0));
    if (!r.ok()) return Fail("lookup", r.status());
    hits += r->hit() ? 1 : 0;
  }
  for (uint32_t q = 0; q < o.queries; ++q) {
    auto a = (*store)->Lookup(queries[q], all);
    const auto t0 = Clock::now();
    auto e = (*store)->Lookup(queries[q], exact);
    if (q < o.exact_queries) exact_lat.push_back(Us(Clock::now() - t0));
    if (!a.ok() || !e.ok()) return Fail("recall lookup", a.ok() ? e.status() : a.status());
    if (!a->matches.empty() && !e->matches.empty() &&
        (a->matches[0].id == e->matches[0].id || a->matches[0].similarity >= e->matches[0].similarity)) {
      ++agree;
    }
  }
  const double recall = double(agree) / o.queries;
  // The recall / latency trade-off at other search ef values (same queries, same store).
  nlohmann::json sweep = nlohmann::json::array();
  for (uint32_t ef : o.sweep_ef) {
    LookupOptions s_all = all;
    s_all.ef = ef;
    std::vector<double> lat;
    uint32_t s_agree = 0;
    for (uint32_t q = 0; q < o.queries; ++q) {
      const auto t0 = Clock::now();
      auto a = (*store)->Lookup(queries[q], s_all);
      lat.push_back(Us(Clock::now() - t0));
      auto e = (*store)->Lookup(queries[q], exact);
      if (!a.ok() || !e.ok()) return Fail("sweep lookup", a.ok() ? e.status() : a.status());
      if (!a->matches.empty() && !e->matches.empty() &&
          (a->matches[0].id == e->matches[0].id || a->matches[0].similarity >= e->matches[0].similarity)) {
        ++s_agree;
      }
    }
    sweep.push_back({{"ef", ef}, {"recall_at_1", double(s_agree) / o.queries}, {"p50_us", Percentile(lat, 0.5)},
                     {"p99_us", Percentile(lat, 0.99)}});
  }
  (void)(*store)->Close();
  if (temp_dir) std::filesystem::remove_all(dir, ec);

  const double rate = double(o.entries) / ingest_s;
  const double per_entry = double(disk_bytes) / double(after_ingest.entries);
  nlohmann::json j{{"bench", "qstore"},
                   {"entries_fed", o.entries},
                   {"entries_stored", after_ingest.entries},
                   {"duplicates_fed", duplicates_fed},
                   {"duplicates_skipped", after_ingest.duplicates},
                   {"dim", o.dim},
                   {"data", o.data},
                   {"durability", o.durability},
                   {"batch", o.batch},
                   {"index_threads", so.index_threads},
                   {"ingest_entries_per_s", rate},
                   {"ingest_cpu_us_per_entry", ingest_cpu * 1e6 / o.entries},
                   {"close_and_index_save_s", close_s},
                   {"disk_bytes", disk_bytes},
                   {"disk_bytes_per_entry", per_entry},
                   {"reopen_s", open_s},
                   {"index_origin_on_reopen", std::string(IndexOriginName(reopened.index_origin))},
                   {"page_cache_dropped", dropped},
                   {"first1000_p50_us", Percentile(first_lat, 0.5)},
                   {"first1000_p99_us", Percentile(first_lat, 0.99)},
                   {"warm_ann_p50_us", Percentile(warm_lat, 0.5)},
                   {"warm_ann_p99_us", Percentile(warm_lat, 0.99)},
                   {"exact_p50_us", Percentile(exact_lat, 0.5)},
                   {"exact_p99_us", Percentile(exact_lat, 0.99)},
                   {"recall_at_1", recall},
                   {"queries", o.queries},
                   {"hit_rate_at_0.9", double(hits) / o.queries},
                   {"ef_sweep", sweep}};
  if (o.json) {
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("kvtier bench qstore: {} entries (dim {}, {} {} clusters, {} near-copies fed), durability {}, batches of {}\n",
             o.entries, o.dim, gen.clusters(), gen.shape_name(), duplicates_fed, o.durability, o.batch);
  fmt::print("  ingest            {:>10.0f} entries/s  ({} stored, {} duplicates skipped; {:.0f} CPU-us/entry; close+index save {:.2f} s)\n",
             rate, after_ingest.entries, after_ingest.duplicates, ingest_cpu * 1e6 / o.entries, close_s);
  fmt::print("  on disk           {:>10.0f} B/entry    ({:.1f} MiB in all)\n", per_entry, double(disk_bytes) / (1 << 20));
  fmt::print("  reopen            {:>10.3f} s          (index {}{})\n", open_s, IndexOriginName(reopened.index_origin),
             dropped ? ", page cache dropped first" : "");
  fmt::print("  {:<24} {:>10} {:>10}\n", "lookup latency (us)", "p50", "p99");
  fmt::print("  {:<24} {:>10.0f} {:>10.0f}\n", "first 1000 after reopen", Percentile(first_lat, 0.5), Percentile(first_lat, 0.99));
  fmt::print("  {:<24} {:>10.0f} {:>10.0f}\n", "warm, ANN", Percentile(warm_lat, 0.5), Percentile(warm_lat, 0.99));
  fmt::print("  {:<24} {:>10.0f} {:>10.0f}   (baseline)\n", "warm, exact scan", Percentile(exact_lat, 0.5), Percentile(exact_lat, 0.99));
  fmt::print("  recall@1 (ANN vs exact) {:.4f} over {} queries; hit rate at 0.9: {:.3f}\n", recall, o.queries,
             double(hits) / o.queries);
  for (const auto& row : sweep) {
    fmt::print("  ef {:>4}: recall@1 {:.4f}, p50 {:.0f} us, p99 {:.0f} us\n", row["ef"].get<uint32_t>(),
               row["recall_at_1"].get<double>(), row["p50_us"].get<double>(), row["p99_us"].get<double>());
  }
  return 0;
}

}  // namespace

void AddBenchQstoreCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<BenchQstoreOptions>();
  CLI::App* cmd = bench.add_subcommand("qstore", "precomputed query store: ingest, recall@1, lookup p50/p99 vs exact search");
  cmd->add_option("--entries", o->entries, "entries to ingest (default 150000)");
  cmd->add_option("--dim", o->dim, "embedding dimension (default 384)");
  cmd->add_option("--clusters", o->clusters, "clusters of the synthetic embeddings (default entries/100)");
  cmd->add_option("--queries", o->queries, "queries for recall@1 and warm latency (default 2000)");
  cmd->add_option("--exact-queries", o->exact_queries, "queries timed for the exact-search baseline (default 300)");
  cmd->add_option("--batch", o->batch, "entries per Ingest call (default 256)");
  cmd->add_option("--ef", o->ef, "HNSW search candidate list (default: the store's)");
  cmd->add_option("--ef-construction", o->ef_construction, "HNSW insert candidate list (default: the store's)");
  cmd->add_option("--dedup-ef", o->dedup_ef, "HNSW candidate list of the dedup search (default: the store's)");
  cmd->add_option("--sweep-ef", o->sweep_ef, "also report recall@1 and latency at these search ef values");
  cmd->add_option("--index-threads", o->index_threads, "threads of the ANN inserts (default: the store's; 1 = sequential)");
  cmd->add_option("--m", o->m, "HNSW graph degree (default: the store's)");
  cmd->add_option("--dup-fraction", o->dup_fraction, "fraction of near-copies fed to ingest (default 0.01)");
  cmd->add_option("--durability", o->durability, "sync (default) or buffered");
  cmd->add_option("--data", o->data, "embedding shape: low-rank (default) or isotropic (the worst case)");
  cmd->add_option("--dir", o->dir, "store directory (default: a temporary one, removed afterwards)");
  cmd->add_flag("--drop-caches", o->drop_caches, "drop the page cache before reopening (needs root)");
  cmd->add_flag("--quick", o->quick, "a short run (used by the test suite)");
  cmd->add_flag("--json", o->json, "one JSON line");
  cmd->callback([o, exit_code] { *exit_code = RunBenchQstore(*o); });
}

}  // namespace kvtier::cli
