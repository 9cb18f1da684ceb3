// QueryStore::Ingest: validate, deduplicate, one atomic write batch, then index.
#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "query_store/query_store_impl.h"
#include "query_store/vector_math.h"

namespace kvtier {

using namespace query_store;  // NOLINT(google-build-using-namespace)

namespace {

// What the sequential pass decides for one entry.
struct Decision {
  IngestOutcome outcome = IngestOutcome::kInserted;
  uint64_t label = 0;                    // kInserted / kReplaced: the new label
  std::optional<uint64_t> old_label;     // kReplaced: the label it retires
  std::optional<uint64_t> dup_label;     // kDuplicate of a stored entry
  std::optional<size_t> dup_in_batch;    // kDuplicate of an earlier entry of this batch
  float similarity = 0;
};

}  // namespace

Result<std::vector<IngestResult>> QueryStore::Ingest(std::span<const QueryEntry> entries) {
  Impl& s = *impl_;
  if (s.closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  const size_t n = entries.size();
  const uint32_t dim = s.dim;
  std::vector<float> units(n * size_t(dim));
  std::vector<float> norms(n);
  std::unordered_map<std::string_view, size_t> last;  // id -> its last index (the later one wins)
  for (size_t i = 0; i < n; ++i) {
    if (Status v = ValidateEntry(entries[i], dim); !v.ok()) {
      return std::move(v).Annotate(fmt::format("entry {} ('{}')", i, entries[i].id));
    }
    std::span<float> u(units.data() + i * dim, dim);
    std::copy(entries[i].embedding.begin(), entries[i].embedding.end(), u.begin());
    KVT_ASSIGN_OR_RETURN(norms[i], Normalize(u));
    last[entries[i].id] = i;
  }

  std::lock_guard lock(s.write_mu);
  const float thr = s.options.dedup_threshold;
  const bool dedup = thr <= 1.0f;
  // One graph search per entry serves both deduplication and the insert: the insert's own
  // neighbour search (candidate list ef_construction, or dedup_ef_search if larger), made
  // now on the index as stored, reused by Add below as the new points' candidate lists.
  const bool exact = s.index->live() <= s.options.exact_search_max_entries;
  const InsertPlan plan =
      s.index->PlanInserts(units, std::max(s.options.hnsw_ef_construction, s.options.dedup_ef_search),
                           exact ? AnnIndex::Mode::kExact : AnnIndex::Mode::kApproximate);

  std::vector<Decision> d(n);
  std::vector<size_t> accepted;  // indices into entries, in label order
  std::unordered_set<uint64_t> retiring;
  uint64_t dups = 0;
  for (size_t i = 0; i < n; ++i) {
    if (last[entries[i].id] != i) {  // superseded by a later entry with the same id
      d[i].outcome = IngestOutcome::kDuplicate;
      d[i].dup_in_batch = last[entries[i].id];
      d[i].similarity = 0;
      continue;
    }
    KVT_ASSIGN_OR_RETURN(std::optional<uint64_t> existing, s.GetLabel(entries[i].id));
    std::span<const float> u(units.data() + i * dim, dim);
    if (dedup) {
      for (const InsertPlan::Candidate& nb : plan.rows[i]) {
        if (nb.similarity < thr) break;
        if ((existing && nb.label == *existing) || retiring.contains(nb.label)) continue;
        d[i].dup_label = nb.label;
        d[i].similarity = nb.similarity;
        break;
      }
      if (!d[i].dup_label) {
        for (size_t j : accepted) {
          const float sim = Dot(u, std::span<const float>(units.data() + j * dim, dim));
          if (sim >= thr) {
            d[i].dup_in_batch = j;
            d[i].similarity = sim;
            break;
          }
        }
      }
      if (d[i].dup_label || d[i].dup_in_batch) {
        d[i].outcome = IngestOutcome::kDuplicate;
        ++dups;
        continue;
      }
    }
    d[i].label = s.next_label + accepted.size();
    if (existing) {
      d[i].outcome = IngestOutcome::kReplaced;
      d[i].old_label = existing;
      retiring.insert(*existing);
    }
    accepted.push_back(i);
  }

  rocksdb::WriteBatch batch;
  const int64_t now = NowUnixMs();
  uint64_t inserted = 0, replaced = 0;
  std::vector<uint64_t> labels;
  std::vector<float> add_vectors;
  labels.reserve(accepted.size());
  add_vectors.reserve(accepted.size() * dim);
  for (size_t i : accepted) {
    const QueryEntry& e = entries[i];
    const std::string key = LabelKey(d[i].label);
    EntryRecord rec{e.id, e.query, e.response, e.source, e.prefix.tokens, e.prefix.chain, now};
    std::span<const float> u(units.data() + i * dim, dim);
    (void)batch.Put(s.cf(kEntries), key, EncodeEntry(d[i].label, rec));
    (void)batch.Put(s.cf(kVectors), key, EncodeVector(d[i].label, norms[i], u));
    (void)batch.Put(s.cf(kIds), e.id, EncodeIdValue(e.id, d[i].label));
    if (d[i].old_label) {
      const std::string old_key = LabelKey(*d[i].old_label);
      (void)batch.Delete(s.cf(kEntries), old_key);
      (void)batch.Delete(s.cf(kVectors), old_key);
      (void)batch.Delete(s.cf(kHits), old_key);
      (void)batch.Put(s.cf(kErased), old_key, "");
      ++replaced;
    } else {
      ++inserted;
    }
    labels.push_back(d[i].label);
    add_vectors.insert(add_vectors.end(), u.begin(), u.end());
  }
  if (!accepted.empty() || dups > 0) {
    const uint64_t saved[4] = {s.next_label, s.epoch, s.live, s.duplicates_total};
    s.next_label += accepted.size();
    s.epoch += 1;
    s.live += inserted;
    s.duplicates_total += dups;
    s.PutMeta(batch);
    if (Status w = s.Write(batch, s.options.durability); !w.ok()) {
      s.next_label = saved[0];
      s.epoch = saved[1];
      s.live = saved[2];
      s.duplicates_total = saved[3];
      return std::move(w).Annotate(fmt::format("ingesting {} entries", n));
    }
  }
  // Durable; now searchable. Removing after adding keeps a replaced id findable throughout.
  if (Status a = s.index->Add(labels, add_vectors, &plan, accepted); !a.ok()) {
    return std::move(a).Annotate("indexing (the entries are stored; reopening rebuilds the index)");
  }
  for (size_t i : accepted) {
    if (!d[i].old_label) continue;
    KVT_RETURN_IF_ERROR(s.index->Remove(*d[i].old_label));
    std::lock_guard hl(s.hits_mu);
    s.hits.erase(*d[i].old_label);
  }
  s.changed_since_save += accepted.size();
  s.n_inserted.fetch_add(inserted, std::memory_order_relaxed);
  s.n_replaced.fetch_add(replaced, std::memory_order_relaxed);
  s.n_duplicates.fetch_add(dups, std::memory_order_relaxed);

  std::vector<IngestResult> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i].outcome = d[i].outcome;
    out[i].similarity = d[i].similarity;
    if (d[i].dup_in_batch) {
      out[i].duplicate_of = entries[*d[i].dup_in_batch].id;
    } else if (d[i].dup_label) {
      KVT_ASSIGN_OR_RETURN(EntryRecord rec, s.GetEntry(*d[i].dup_label));
      out[i].duplicate_of = std::move(rec.id);
    }
  }
  if (s.options.index_save_every > 0 && s.changed_since_save >= s.options.index_save_every) {
    if (Status sv = s.SaveIndexLocked(); !sv.ok()) {
      s.log->Log(LogLevel::kWarning, "query store: periodic index save failed (kept the previous one): {}", sv.ToString());
    }
  }
  return out;
}

}  // namespace kvtier
