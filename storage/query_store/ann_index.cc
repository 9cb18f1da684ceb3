#include "query_store/ann_index.h"

// hnswlib's header defines non-inline functions (CPU probes), so this is the only file that
// includes it. Its own distance kernels are unused (kvtier's dispatched kernel is); what its
// SSE path brings that matters is the prefetching of the next candidates while searching.
// That path (hnswlib 0.6) reads one link past the end of a full neighbour list, up to 3
// bytes beyond the list's malloc'd size but inside the chunk, as a prefetch address only:
// harmless, yet AddressSanitizer rightly reports it, so sanitizer builds compile hnswlib
// without it.
#if defined(__SANITIZE_ADDRESS__)
#define NO_MANUAL_VECTORIZATION
#endif
#include <hnswlib/hnswlib.h>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <queue>
#include <shared_mutex>

#include "query_store/vector_math.h"

namespace kvtier::query_store {
namespace {

using Hnsw = hnswlib::HierarchicalNSW<float>;

// hnswlib passes the space's parameter to the distance function; `dim` comes first because
// hnswlib itself reads it as a size_t*. The graph stores IEEE halves (see vector_math.h).
struct SpaceParam {
  size_t dim;
  DotHalfFn dot;
};

float CosineDistance(const void* a, const void* b, const void* param) {
  const auto* p = static_cast<const SpaceParam*>(param);
  return 1.0f - p->dot(static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b), p->dim);
}

class CosineSpace final : public hnswlib::SpaceInterface<float> {
 public:
  explicit CosineSpace(size_t dim) : param_{dim, BestDotHalf()} {}
  size_t get_data_size() override { return param_.dim * sizeof(uint16_t); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return CosineDistance; }
  void* get_dist_func_param() override { return &param_; }
  const SpaceParam& param() const { return param_; }

 private:
  SpaceParam param_;
};

// Inserting this many points per exclusive section keeps a concurrent search's wait short.
constexpr size_t kInsertChunk = 16;

// Moves hnswlib's level-0 block (vectors and links: nearly all of the index) into memory
// advised for transparent huge pages. Graph search is a chain of random accesses; with 4 KiB
// pages most of them also miss the TLB, which in a VM costs a two-level page walk. The
// block stays malloc-compatible (hnswlib frees and reallocs it), so only the advice is new.
void UseHugePages(Hnsw& h) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = h.max_elements_ * h.size_data_per_element_;
  if (bytes < 2 * kHuge) return;
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, rounded);
  if (p == nullptr) return;  // keep the block it has: slower, still correct
  ::madvise(p, rounded, MADV_HUGEPAGE);
  if (h.data_level0_memory_ != nullptr) {
    std::memcpy(p, h.data_level0_memory_, h.cur_element_count * h.size_data_per_element_);
    std::free(h.data_level0_memory_);
  }
  h.data_level0_memory_ = static_cast<char*>(p);
}

}  // namespace

struct AnnIndex::Graph {
  explicit Graph(size_t dim, uint32_t threads) : space(dim), arena(static_cast<int>(threads)) {}
  CosineSpace space;
  std::unique_ptr<Hnsw> hnsw;
  tbb::task_arena arena;
  mutable std::shared_mutex mu;
  uint64_t version = 0;  // changes (Add, Remove) so far; written under the exclusive lock

  // Similarity of a float32 query to a stored (half) vector: what every result reports.
  float Similarity(const float* q, hnswlib::tableint id) const {
    return mixed(q, reinterpret_cast<const uint16_t*>(hnsw->getDataByInternalId(id)), space.param().dim);
  }
  DotMixedFn mixed = BestDotMixed();
  bool LiveInternal(hnswlib::tableint id) const { return !hnsw->isMarkedDeleted(id); }
};

namespace {

using hnswlib::tableint;
using Cand = std::pair<float, tableint>;  // (similarity, internal id)

// Brings `bytes` bytes from `p` on into the cache: the vector a distance will read next.
inline void PrefetchBytes(const char* p, size_t bytes) {
  const auto first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63);
  const auto last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) & ~uintptr_t(63);
  for (uintptr_t a = first; a <= last; a += 64) __builtin_prefetch(reinterpret_cast<const char*>(a), 0, 3);
}

// How many candidates ahead the vector prefetch runs: enough misses in flight to cover the
// memory latency while the distances before them are computed (2 to 8 measured alike).
constexpr size_t kPrefetchAhead = 4;

// A graph walk for one float32 query. kLocked: other threads may be inserting (parallel
// Add), so link lists are copied under hnswlib's per-node locks; otherwise the caller's
// lock on the whole graph keeps them still.
template <bool kLocked>
class Walker {
 public:
  Walker(const AnnIndex::Graph& g, const float* q)
      : h_(*g.hnsw), q_(q), dim_(g.space.param().dim), bytes_(dim_ * sizeof(uint16_t)), dot_(g.mixed),
        links_(h_.maxM0_ + 1), todo_(h_.maxM0_ + 1) {}

  float Sim(tableint id) const {
    return dot_(q_, reinterpret_cast<const uint16_t*>(h_.getDataByInternalId(id)), dim_);
  }

  // The greedy descent from `ep` at `from_level` to the layer above `to_level`, as hnswlib
  // does before searching a layer: move to a better neighbour while there is one.
  tableint Descend(tableint ep, int from_level, int to_level) {
    tableint cur = ep;
    float best = Sim(cur);
    for (int level = from_level; level > to_level; --level) {
      for (bool changed = true; changed;) {
        changed = false;
        const size_t n = ReadLinks(cur, level);
        for (size_t j = 0; j < n; ++j) PrefetchBytes(h_.getDataByInternalId(links_[j]), bytes_);
        for (size_t j = 0; j < n; ++j) {
          const float s = Sim(links_[j]);
          if (s > best) {
            best = s;
            cur = links_[j];
            changed = true;
          }
        }
      }
    }
    return cur;
  }

  // Layer 0's best-first search from `ep` with candidate list `ef` (hnswlib's
  // searchBaseLayerST, and its insert-time search with has_deletions): `out` gets the `ef`
  // most similar live vectors reached, best first (ties by id).
  void SearchLayer0(tableint ep, size_t ef, bool has_deletions, std::vector<Cand>& out) {
    hnswlib::VisitedList* vl = h_.visited_list_pool_->getFreeVisitedList();
    hnswlib::vl_type* visited = vl->mass;
    const hnswlib::vl_type tag = vl->curV;
    auto worse_first = [](const Cand& a, const Cand& b) { return a.first > b.first; };  // min-heap
    auto best_first = [](const Cand& a, const Cand& b) { return a.first < b.first; };   // max-heap
    std::vector<Cand>& top = out;  // the ef best so far, the worst on top
    top.clear();
    frontier_.clear();
    const float s0 = Sim(ep);
    float bound = -std::numeric_limits<float>::infinity();
    if (!has_deletions || !h_.isMarkedDeleted(ep)) {
      top.emplace_back(s0, ep);
      bound = s0;
    }
    frontier_.emplace_back(s0, ep);
    visited[ep] = tag;
    while (!frontier_.empty()) {
      const Cand c = frontier_.front();
      if (c.first < bound && (top.size() == ef || !has_deletions)) break;
      std::pop_heap(frontier_.begin(), frontier_.end(), best_first);
      frontier_.pop_back();
      const size_t n = ReadLinks(c.second, 0);
      for (size_t j = 0; j < n; ++j) __builtin_prefetch(visited + links_[j], 1, 3);
      size_t m = 0;
      for (size_t j = 0; j < n; ++j) {
        const tableint id = links_[j];
        if (visited[id] == tag) continue;
        visited[id] = tag;
        todo_[m++] = id;
      }
      for (size_t j = 0; j < std::min(m, kPrefetchAhead); ++j) PrefetchBytes(h_.getDataByInternalId(todo_[j]), bytes_);
      for (size_t j = 0; j < m; ++j) {
        if (j + kPrefetchAhead < m) PrefetchBytes(h_.getDataByInternalId(todo_[j + kPrefetchAhead]), bytes_);
        const tableint id = todo_[j];
        const float s = Sim(id);
        if (top.size() < ef || s > bound) {
          frontier_.emplace_back(s, id);
          std::push_heap(frontier_.begin(), frontier_.end(), best_first);
          __builtin_prefetch(h_.get_linklist0(frontier_.front().second), 0, 3);
          if (!has_deletions || !h_.isMarkedDeleted(id)) {
            top.emplace_back(s, id);
            std::push_heap(top.begin(), top.end(), worse_first);
            if (top.size() > ef) {
              std::pop_heap(top.begin(), top.end(), worse_first);
              top.pop_back();
            }
          }
          if (!top.empty()) bound = top.front().first;
        }
      }
    }
    h_.visited_list_pool_->releaseVisitedList(vl);
    std::sort(top.begin(), top.end(), [](const Cand& a, const Cand& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
  }

  // The whole search: descent through the upper layers, then layer 0.
  void Search(size_t ef, bool has_deletions, std::vector<Cand>& out) {
    tableint ep;
    int max_level;
    if constexpr (kLocked) {
      std::lock_guard g(h_.global);  // a point above the top layer may be being inserted
      ep = h_.enterpoint_node_;
      max_level = h_.maxlevel_;
    } else {
      ep = h_.enterpoint_node_;
      max_level = h_.maxlevel_;
    }
    out.clear();
    if (static_cast<int>(ep) == -1) return;
    SearchLayer0(Descend(ep, max_level, 0), ef, has_deletions, out);
  }

 private:
  // Copies the links of `id` at `level` into links_; returns their number.
  size_t ReadLinks(tableint id, int level) {
    auto read = [&] {
      unsigned int* ll = level == 0 ? h_.get_linklist0(id) : h_.get_linklist(id, level);
      const size_t n = h_.getListCount(ll);
      std::memcpy(links_.data(), ll + 1, n * sizeof(tableint));
      return n;
    };
    if constexpr (kLocked) {
      std::lock_guard lock(h_.link_list_locks_[id]);
      return read();
    } else {
      return read();
    }
  }

  Hnsw& h_;
  const float* q_;
  size_t dim_, bytes_;
  DotMixedFn dot_;
  std::vector<tableint> links_, todo_;
  std::vector<Cand> frontier_;
};

// Inserts one point (float32 unit vector `q`, its halves `half`) at layer 0 only, with
// `cands` (similarity, id; best first, at most ef_construction) as its candidate
// neighbours: hnswlib's addPoint for a point drawn at level 0 with the search done by the
// caller. The caller holds the graph exclusively; with parallel inserts hnswlib's per-node
// locks guard the links.
tableint InsertLevel0(Hnsw& h, uint64_t label, const uint16_t* half, std::span<const Cand> cands) {
  tableint c;
  {
    std::lock_guard g(h.cur_element_count_guard_);
    if (h.cur_element_count >= h.max_elements_) throw std::runtime_error("the ANN index is full");
    c = static_cast<tableint>(h.cur_element_count);
    h.label_lookup_[label] = c;
    ++h.cur_element_count;
  }
  std::lock_guard lock_el(h.link_list_locks_[c]);
  h.element_levels_[c] = 0;
  std::memset(h.data_level0_memory_ + c * h.size_data_per_element_ + h.offsetLevel0_, 0, h.size_data_per_element_);
  std::memcpy(h.getExternalLabeLp(c), &label, sizeof(label));
  std::memcpy(h.getDataByInternalId(c), half, h.data_size_);
  std::priority_queue<std::pair<float, tableint>, std::vector<std::pair<float, tableint>>, Hnsw::CompareByFirst> top;
  for (const Cand& x : cands) top.emplace(1.0f - x.first, x.second);
  // As hnswlib: a deleted entry point stays a candidate, so the graph stays connected.
  const tableint ep = h.enterpoint_node_;
  if (h.isMarkedDeleted(ep)) {
    top.emplace(h.fstdistfunc_(half, h.getDataByInternalId(ep), h.dist_func_param_), ep);
    if (top.size() > h.ef_construction_) top.pop();
  }
  h.mutuallyConnectNewElement(half, c, top, 0, false);
  return c;
}

}  // namespace

AnnIndex::AnnIndex(const AnnParams& params, std::unique_ptr<Graph> graph) : params_(params), graph_(std::move(graph)) {}
AnnIndex::~AnnIndex() = default;

Result<std::unique_ptr<AnnIndex>> AnnIndex::Create(const AnnParams& params, size_t capacity) {
  auto g = std::make_unique<Graph>(params.dim, params.threads);
  try {
    g->hnsw = std::make_unique<Hnsw>(&g->space, std::max<size_t>(capacity, 1024), params.m, params.ef_construction,
                                     /*random_seed=*/100);
  } catch (const std::exception& e) {
    return Status::Exhausted(fmt::format("creating the ANN index: {}", e.what()));
  }
  g->hnsw->setEf(params.ef_search);
  UseHugePages(*g->hnsw);
  return std::unique_ptr<AnnIndex>(new AnnIndex(params, std::move(g)));
}

Result<std::unique_ptr<AnnIndex>> AnnIndex::Load(const AnnParams& params, const std::filesystem::path& file,
                                                 size_t headroom) {
  auto g = std::make_unique<Graph>(params.dim, params.threads);
  // The loading constructor of hnswlib 0.6 leaves num_deleted_ uninitialised; construct
  // empty, set what the destructor and loadIndex rely on, then load.
  g->hnsw = std::make_unique<Hnsw>(&g->space);
  Hnsw& h = *g->hnsw;
  h.num_deleted_ = 0;
  h.cur_element_count = 0;
  h.data_level0_memory_ = nullptr;
  h.linkLists_ = nullptr;
  h.visited_list_pool_ = nullptr;
  try {
    h.loadIndex(file.string(), &g->space, 0);
  } catch (const std::exception& e) {
    return Status::DataLoss(fmt::format("loading {}: {}", file.string(), e.what()));
  }
  const size_t vector_bytes = params.dim * sizeof(uint16_t);
  const size_t expected_element = h.size_links_level0_ + vector_bytes + sizeof(hnswlib::labeltype);
  if (h.size_data_per_element_ != expected_element || h.label_offset_ != h.size_links_level0_ + vector_bytes) {
    return Status::DataLoss(fmt::format("{} was written for another dimension", file.string()));
  }
  try {
    if (h.max_elements_ < h.cur_element_count + headroom) h.resizeIndex(h.cur_element_count + headroom);
  } catch (const std::exception& e) {
    return Status::Exhausted(fmt::format("sizing the ANN index: {}", e.what()));
  }
  h.setEf(params.ef_search);
  UseHugePages(h);
  return std::unique_ptr<AnnIndex>(new AnnIndex(params, std::move(g)));
}

Status AnnIndex::Save(const std::filesystem::path& file) const {
  std::shared_lock lock(graph_->mu);
  const Hnsw& h = *graph_->hnsw;
  // The size hnswlib 0.6's saveIndex writes: a header of 10 size_t, one int, one tableint
  // and one double; the level-0 block; per element a u32 length and its upper links.
  uint64_t expected = 10 * sizeof(size_t) + sizeof(int) + sizeof(hnswlib::tableint) + sizeof(double) +
                      uint64_t(h.cur_element_count) * h.size_data_per_element_;
  for (size_t i = 0; i < h.cur_element_count; ++i) {
    expected += sizeof(uint32_t);
    if (h.element_levels_[i] > 0) expected += uint64_t(h.size_links_per_element_) * uint64_t(h.element_levels_[i]);
  }
  try {
    graph_->hnsw->saveIndex(file.string());
  } catch (const std::exception& e) {
    return Status::IoError(fmt::format("writing {}: {}", file.string(), e.what()));
  }
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("opening {}", file.string()));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int sync_rc = ::fsync(fd);
  const int sync_errno = errno;
  ::close(fd);
  if (!stat_ok || uint64_t(st.st_size) != expected) {
    // std::ofstream swallows write errors: a short file is how ENOSPC shows up here.
    return Status::NoSpace(fmt::format("{} is {} B where {} B were written (disk full?)", file.string(),
                                       stat_ok ? uint64_t(st.st_size) : 0, expected));
  }
  if (sync_rc != 0) return Status::FromErrno(sync_errno, fmt::format("fsync {}", file.string()));
  return Status::Ok();
}

Status AnnIndex::Add(std::span<const uint64_t> labels, std::span<const float> vectors, const InsertPlan* plan,
                     std::span<const size_t> plan_rows) {
  const size_t dim = params_.dim;
  if (vectors.size() != labels.size() * dim) {
    return Status::InvalidArgument(fmt::format("{} floats for {} labels of dimension {}", vectors.size(), labels.size(), dim));
  }
  if (plan != nullptr && plan_rows.size() != labels.size()) {
    return Status::InvalidArgument(fmt::format("{} plan rows for {} labels", plan_rows.size(), labels.size()));
  }
  const bool parallel = params_.threads > 1;
  const size_t ef = params_.ef_construction;
  // The plan holds while the graph is as it was: this call's inserts are the only change
  // from here on, and they are merged in exactly below.
  bool use_plan = false;
  {
    std::shared_lock lock(graph_->mu);
    use_plan = plan != nullptr && !parallel && plan->version == graph_->version;
  }
  const size_t window = use_plan ? std::min(labels.size(), kPlanWindow) : 0;
  // Similarities among the first `window` vectors (the earlier ones of the call are
  // candidates the plan cannot know about).
  std::vector<float> mate_sim;
  if (window > 1) {
    mate_sim.resize(window * window);
    const DotFn dot = BestDot();
    for (size_t i = 0; i < window; ++i) {
      for (size_t j = 0; j < i; ++j) mate_sim[i * window + j] = dot(&vectors[i * dim], &vectors[j * dim], dim);
    }
  }
  std::vector<tableint> nodes(labels.size());
  std::vector<int> levels;
  std::vector<Cand> cands;
  for (size_t begin = 0; begin < labels.size(); begin += kInsertChunk) {
    const size_t end = std::min(labels.size(), begin + kInsertChunk);
    std::unique_lock lock(graph_->mu);
    Hnsw& h = *graph_->hnsw;
    for (size_t i = begin; i < end; ++i) {
      if (h.label_lookup_.contains(labels[i])) {
        return Status::AlreadyExists(fmt::format("label {} is already in the ANN index", labels[i]));
      }
    }
    try {
      if (h.cur_element_count + (end - begin) > h.max_elements_) {
        h.resizeIndex(std::max(h.max_elements_ * 2, h.cur_element_count + (end - begin)));
        UseHugePages(h);
      }
    } catch (const std::exception& e) {
      return Status::Exhausted(fmt::format("growing the ANN index: {}", e.what()));
    }
    ++graph_->version;
    std::vector<uint16_t> halves((end - begin) * dim);
    ToHalf(vectors.subspan(begin * dim, (end - begin) * dim), halves.data());
    // Levels are drawn here, in label order, from hnswlib's generator (as addPoint would).
    levels.resize(end - begin);
    for (int& l : levels) l = h.getRandomLevel(h.mult_);
    try {
      if (parallel) {
        std::atomic<bool> failed{false};
        graph_->arena.execute([&] {
          tbb::parallel_for(tbb::blocked_range<size_t>(begin, end, 1), [&](const tbb::blocked_range<size_t>& r) {
            std::vector<Cand> mine;
            for (size_t i = r.begin(); i != r.end(); ++i) {
              const uint16_t* half = halves.data() + (i - begin) * dim;
              try {
                const int level = levels[i - begin];
                if (level == 0) {
                  Walker<true>(*graph_, &vectors[i * dim]).Search(ef, /*has_deletions=*/true, mine);
                }
                nodes[i] = level == 0 && !mine.empty() ? InsertLevel0(h, labels[i], half, mine)
                                                       : h.addPoint(half, labels[i], level);
              } catch (const std::exception&) {
                failed.store(true, std::memory_order_relaxed);  // read after the join below
              }
            }
          });
        });
        if (failed.load(std::memory_order_relaxed)) return Status::Internal("hnswlib failed to insert a point");
        continue;
      }
      for (size_t i = begin; i < end; ++i) {
        const uint16_t* half = halves.data() + (i - begin) * dim;
        const int level = levels[i - begin];
        if (level > 0 || static_cast<int>(h.enterpoint_node_) == -1) {
          nodes[i] = h.addPoint(half, labels[i], level);  // level 0 on an empty graph: addPoint draws again
          continue;
        }
        if (i < window) {
          cands.clear();
          for (const InsertPlan::Candidate& c : plan->rows[plan_rows[i]]) cands.emplace_back(c.similarity, c.node);
          for (size_t j = 0; j < i; ++j) cands.emplace_back(mate_sim[i * window + j], nodes[j]);
          const size_t keep = std::min(cands.size(), ef);
          std::partial_sort(cands.begin(), cands.begin() + static_cast<ptrdiff_t>(keep), cands.end(),
                            [](const Cand& a, const Cand& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
          cands.resize(keep);
        } else {
          Walker<false>(*graph_, &vectors[i * dim]).Search(ef, /*has_deletions=*/true, cands);
        }
        nodes[i] = cands.empty() ? h.addPoint(half, labels[i], level) : InsertLevel0(h, labels[i], half, cands);
      }
    } catch (const std::exception& e) {
      return Status::Internal(fmt::format("hnswlib failed to insert a point: {}", e.what()));
    }
  }
  return Status::Ok();
}

InsertPlan AnnIndex::PlanInserts(std::span<const float> vectors, uint32_t ef, Mode mode) const {
  const size_t dim = params_.dim;
  const size_t n = vectors.size() / dim;
  InsertPlan plan;
  plan.rows.resize(n);
  std::shared_lock lock(graph_->mu);
  plan.version = graph_->version;
  const Hnsw& h = *graph_->hnsw;
  if (h.cur_element_count == h.num_deleted_ || ef == 0) return plan;
  auto one = [&](size_t i, std::vector<Cand>& found) {
    const float* q = &vectors[i * dim];
    if (mode == Mode::kExact) {
      found.clear();
      for (tableint id = 0; id < h.cur_element_count; ++id) {
        if (graph_->LiveInternal(id)) found.emplace_back(graph_->Similarity(q, id), id);
      }
      const size_t keep = std::min<size_t>(found.size(), ef);
      std::partial_sort(found.begin(), found.begin() + static_cast<ptrdiff_t>(keep), found.end(),
                        [](const Cand& a, const Cand& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
      found.resize(keep);
    } else {
      Walker<false>(*graph_, q).Search(ef, h.num_deleted_ > 0, found);
    }
    auto& row = plan.rows[i];
    row.reserve(found.size());
    for (const Cand& c : found) row.push_back({c.first, c.second, h.getExternalLabel(c.second)});
  };
  if (params_.threads > 1 && n > 1) {
    graph_->arena.execute([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, n, 4), [&](const tbb::blocked_range<size_t>& r) {
        std::vector<Cand> found;
        for (size_t i = r.begin(); i != r.end(); ++i) one(i, found);
      });
    });
  } else {
    std::vector<Cand> found;
    for (size_t i = 0; i < n; ++i) one(i, found);
  }
  return plan;
}

Status AnnIndex::Remove(uint64_t label) {
  std::unique_lock lock(graph_->mu);
  Hnsw& h = *graph_->hnsw;
  auto it = h.label_lookup_.find(label);
  if (it == h.label_lookup_.end() || h.isMarkedDeleted(it->second)) {
    return Status::NotFound(fmt::format("label {} is not in the ANN index", label));
  }
  h.markDeletedInternal(it->second);
  ++graph_->version;
  return Status::Ok();
}

std::vector<Neighbor> AnnIndex::Search(std::span<const float> query, uint32_t k, uint32_t ef) const {
  std::vector<Neighbor> out;
  if (k == 0) return out;
  std::shared_lock lock(graph_->mu);
  const Hnsw& h = *graph_->hnsw;
  if (h.cur_element_count == h.num_deleted_) return out;
  const size_t ef_used = std::max<size_t>(ef ? ef : params_.ef_search, k);
  std::vector<Cand> found;
  Walker<false>(*graph_, query.data()).Search(ef_used, h.num_deleted_ > 0, found);
  // Ranked by the similarity to the float32 query (the same number ExactSearch reports),
  // ties by label.
  const size_t n = std::min<size_t>(k, found.size());
  out.reserve(found.size());
  for (const Cand& c : found) out.push_back(Neighbor{h.getExternalLabel(c.second), c.first});
  std::partial_sort(out.begin(), out.begin() + static_cast<ptrdiff_t>(n), out.end(), [](const Neighbor& a, const Neighbor& b) {
    return a.similarity != b.similarity ? a.similarity > b.similarity : a.label < b.label;
  });
  out.resize(n);
  return out;
}

std::vector<Neighbor> AnnIndex::ExactSearch(std::span<const float> query, uint32_t k) const {
  std::vector<Neighbor> all;
  if (k == 0) return all;
  std::shared_lock lock(graph_->mu);
  const Hnsw& h = *graph_->hnsw;
  all.reserve(h.cur_element_count - h.num_deleted_);
  for (hnswlib::tableint i = 0; i < h.cur_element_count; ++i) {
    if (!graph_->LiveInternal(i)) continue;
    all.push_back(Neighbor{h.getExternalLabel(i), graph_->Similarity(query.data(), i)});
  }
  const size_t n = std::min<size_t>(k, all.size());
  auto better = [](const Neighbor& a, const Neighbor& b) {
    return a.similarity != b.similarity ? a.similarity > b.similarity : a.label < b.label;
  };
  std::partial_sort(all.begin(), all.begin() + static_cast<ptrdiff_t>(n), all.end(), better);
  all.resize(n);
  return all;
}

std::vector<std::vector<Neighbor>> AnnIndex::SearchMany(std::span<const float> queries, uint32_t k, uint32_t ef,
                                                        Mode mode) const {
  const size_t n = queries.size() / params_.dim;
  std::vector<std::vector<Neighbor>> out(n);
  graph_->arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, n, 4), [&](const tbb::blocked_range<size_t>& r) {
      for (size_t i = r.begin(); i != r.end(); ++i) {
        std::span<const float> q = queries.subspan(i * params_.dim, params_.dim);
        out[i] = mode == Mode::kExact ? ExactSearch(q, k) : Search(q, k, ef);
      }
    });
  });
  return out;
}

bool AnnIndex::Contains(uint64_t label) const {
  std::shared_lock lock(graph_->mu);
  const Hnsw& h = *graph_->hnsw;
  auto it = h.label_lookup_.find(label);
  return it != h.label_lookup_.end() && graph_->LiveInternal(it->second);
}

size_t AnnIndex::live() const {
  std::shared_lock lock(graph_->mu);
  return graph_->hnsw->cur_element_count - graph_->hnsw->num_deleted_;
}

size_t AnnIndex::deleted() const {
  std::shared_lock lock(graph_->mu);
  return graph_->hnsw->num_deleted_;
}

std::vector<uint64_t> AnnIndex::LiveLabels() const {
  std::shared_lock lock(graph_->mu);
  std::vector<uint64_t> out;
  for (const auto& [label, id] : graph_->hnsw->label_lookup_) {
    if (graph_->LiveInternal(id)) out.push_back(label);
  }
  return out;
}

}  // namespace kvtier::query_store
