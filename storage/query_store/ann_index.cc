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
#include <mutex>
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

  float Distance(const uint16_t* a, hnswlib::tableint id) const {
    return CosineDistance(a, hnsw->getDataByInternalId(id), &space.param());
  }
  // Similarity of a float32 query to a stored (half) vector: what every result reports.
  float Similarity(const float* q, hnswlib::tableint id) const {
    return mixed(q, reinterpret_cast<const uint16_t*>(hnsw->getDataByInternalId(id)), space.param().dim);
  }
  DotMixedFn mixed = BestDotMixed();
  bool LiveInternal(hnswlib::tableint id) const { return !hnsw->isMarkedDeleted(id); }
};

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

Status AnnIndex::Add(std::span<const uint64_t> labels, std::span<const float> vectors) {
  const size_t dim = params_.dim;
  if (vectors.size() != labels.size() * dim) {
    return Status::InvalidArgument(fmt::format("{} floats for {} labels of dimension {}", vectors.size(), labels.size(), dim));
  }
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
    std::vector<uint16_t> halves((end - begin) * dim);
    ToHalf(vectors.subspan(begin * dim, (end - begin) * dim), halves.data());
    std::atomic<bool> failed{false};
    graph_->arena.execute([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(begin, end, 1), [&](const tbb::blocked_range<size_t>& r) {
        for (size_t i = r.begin(); i != r.end(); ++i) {
          try {
            h.addPoint(halves.data() + (i - begin) * dim, labels[i]);
          } catch (const std::exception&) {
            failed.store(true, std::memory_order_relaxed);  // read after the join below
          }
        }
      });
    });
    if (failed.load(std::memory_order_relaxed)) return Status::Internal("hnswlib failed to insert a point");
  }
  return Status::Ok();
}

Status AnnIndex::Remove(uint64_t label) {
  std::unique_lock lock(graph_->mu);
  Hnsw& h = *graph_->hnsw;
  auto it = h.label_lookup_.find(label);
  if (it == h.label_lookup_.end() || h.isMarkedDeleted(it->second)) {
    return Status::NotFound(fmt::format("label {} is not in the ANN index", label));
  }
  h.markDeletedInternal(it->second);
  return Status::Ok();
}

std::vector<Neighbor> AnnIndex::Search(std::span<const float> query, uint32_t k, uint32_t ef) const {
  std::vector<Neighbor> out;
  if (k == 0) return out;
  std::vector<uint16_t> q(query.size());
  ToHalf(query, q.data());
  std::shared_lock lock(graph_->mu);
  const Hnsw& h = *graph_->hnsw;
  if (h.cur_element_count == h.num_deleted_) return out;
  const size_t ef_used = std::max<size_t>(ef ? ef : params_.ef_search, k);
  // Greedy descent through the upper layers (as hnswlib's searchKnn, with our own ef).
  hnswlib::tableint cur = h.enterpoint_node_;
  float cur_dist = graph_->Distance(q.data(), cur);
  for (int level = h.maxlevel_; level > 0; --level) {
    bool changed = true;
    while (changed) {
      changed = false;
      unsigned int* links = h.get_linklist(cur, level);
      const int n = h.getListCount(links);
      const auto* ids = reinterpret_cast<const hnswlib::tableint*>(links + 1);
      for (int i = 0; i < n; ++i) {
        const float d = graph_->Distance(q.data(), ids[i]);
        if (d < cur_dist) {
          cur_dist = d;
          cur = ids[i];
          changed = true;
        }
      }
    }
  }
  auto top = h.num_deleted_ ? h.searchBaseLayerST<true>(cur, q.data(), ef_used)
                            : h.searchBaseLayerST<false>(cur, q.data(), ef_used);
  // Rank the candidates by their similarity to the float32 query, as ExactSearch does, so
  // both searches report the same number for the same entry.
  out.reserve(top.size());
  for (; !top.empty(); top.pop()) {
    const hnswlib::tableint id = top.top().second;
    out.push_back(Neighbor{h.getExternalLabel(id), graph_->Similarity(query.data(), id)});
  }
  const size_t n = std::min<size_t>(k, out.size());
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
