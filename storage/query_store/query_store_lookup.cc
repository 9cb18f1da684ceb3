// Lookups (synchronous and beside inference), hit counting, and residency hints.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "query_store/query_store_impl.h"
#include "query_store/vector_math.h"

namespace kvtier {

using namespace query_store;  // NOLINT(google-build-using-namespace)

struct LookupHandle::State {
  CancelSource own;
  CancelToken external;
  Fence fence;
  FenceSignal signal;
  std::mutex mu;
  std::optional<Result<LookupResult>> result;  // set once, before the fence signals
};

Result<LookupResult> QueryStore::Impl::DoLookup(std::span<const float> embedding, const LookupOptions& o,
                                                const CancelToken& a, const CancelToken& b) {
  KVT_RETURN_IF_ERROR(o.Validate());
  if (embedding.size() != dim) {
    return Status::InvalidArgument(fmt::format("lookup embedding has {} values, the store's dimension is {}", embedding.size(), dim));
  }
  std::vector<float> q(embedding.begin(), embedding.end());
  KVT_RETURN_IF_ERROR(Normalize(q).status());
  n_lookups.fetch_add(1, std::memory_order_relaxed);
  auto cancelled = [&] {
    if (!a.cancelled() && !b.cancelled()) return false;
    n_cancelled.fetch_add(1, std::memory_order_relaxed);
    return true;
  };
  if (cancelled()) return Status::Cancelled("lookup cancelled before the search");
  LookupResult out;
  out.exact = o.mode == SearchMode::kExact ||
              (o.mode == SearchMode::kAuto && index->live() <= options.exact_search_max_entries);
  const std::vector<Neighbor> near = out.exact ? index->ExactSearch(q, o.k) : index->Search(q, o.k, o.ef);
  if (out.exact) n_exact.fetch_add(1, std::memory_order_relaxed);
  std::optional<uint64_t> best;
  for (const Neighbor& nb : near) {
    if (nb.similarity < o.threshold) break;
    if (cancelled()) return Status::Cancelled("lookup cancelled before fetching the response");
    Result<EntryRecord> rec = GetEntry(nb.label);
    if (!rec.ok() && rec.status().code() == StatusCode::kNotFound) continue;  // erased meanwhile
    if (!rec.ok()) return rec.status();
    if (!best) best = nb.label;
    Match m;
    m.id = std::move(rec->id);
    m.similarity = nb.similarity;
    m.query = std::move(rec->query);
    m.response = std::move(rec->response);
    m.prefix.tokens = std::move(rec->prefix_tokens);
    m.prefix.chain = rec->prefix_chain;
    out.matches.push_back(std::move(m));
  }
  if (best) {
    n_hits.fetch_add(1, std::memory_order_relaxed);
    RecordHit(*best);
  } else {
    n_misses.fetch_add(1, std::memory_order_relaxed);
  }
  return out;
}

void QueryStore::Impl::RecordHit(uint64_t label) {
  bool flush = false;
  {
    std::lock_guard lock(hits_mu);
    HitState& h = hits[label];
    h.rec.count += 1;
    h.rec.last_hit_unix_ms = NowUnixMs();
    h.dirty = true;
    flush = ++unflushed_hits >= options.hit_flush_every;
  }
  // Writing needs write_mu (an erase must not race a flush that would resurrect its hit
  // record); a lookup never waits for an ingest batch for this, it flushes next time.
  if (flush) {
    std::unique_lock lock(write_mu, std::try_to_lock);
    if (lock.owns_lock()) {
      if (Status s = FlushHitsNow(); !s.ok()) log->Log(LogLevel::kWarning, "query store: writing hit counts: {}", s.ToString());
    }
  }
}

Status QueryStore::Impl::FlushHitsNow() {
  rocksdb::WriteBatch batch;
  std::vector<uint64_t> written;
  {
    std::lock_guard lock(hits_mu);
    for (auto& [label, h] : hits) {
      if (!h.dirty) continue;
      (void)batch.Put(cf(kHits), LabelKey(label), EncodeHits(label, h.rec));
      h.dirty = false;
      written.push_back(label);
    }
    unflushed_hits = 0;
  }
  if (written.empty()) return Status::Ok();
  Status s = Write(batch, Durability::kBuffered);  // statistics: a crash may lose the last few
  if (!s.ok()) {
    std::lock_guard lock(hits_mu);
    for (uint64_t label : written) {
      if (auto it = hits.find(label); it != hits.end()) it->second.dirty = true;
    }
  }
  return s;
}

Result<LookupResult> QueryStore::Lookup(std::span<const float> embedding, const LookupOptions& options) {
  if (impl_->closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  return impl_->DoLookup(embedding, options, CancelToken(), CancelToken());
}

LookupHandle QueryStore::LookupAsync(std::vector<float> embedding, LookupOptions options, CancelToken cancel) {
  auto state = std::make_shared<LookupHandle::State>();
  auto [fence, signal] = Fence::Make();
  state->fence = fence;
  state->signal = std::move(signal);
  state->external = std::move(cancel);
  auto finish = [](LookupHandle::State& st, Result<LookupResult> r) {
    const Status outcome = r.ok() ? Status::Ok() : r.status();
    {
      std::lock_guard lock(st.mu);
      st.result.emplace(std::move(r));
    }
    st.signal.Signal(outcome);
  };
  Impl* impl = impl_.get();
  auto task = [impl, state, finish, embedding = std::move(embedding), options]() mutable {
    if (impl->closed.load(std::memory_order_acquire)) {
      finish(*state, Status::Cancelled("the query store is closing"));
      return;
    }
    finish(*state, impl->DoLookup(embedding, options, state->own.token(), state->external));
  };
  if (impl->closed.load(std::memory_order_acquire) || !impl->pool->Submit(task)) {
    finish(*state, Status::FailedPrecondition("query store is closed"));
  }
  return LookupHandle(std::move(state));
}

LookupHandle& LookupHandle::operator=(LookupHandle&& other) noexcept {
  if (this != &other) {
    if (state_) {
      state_->own.Cancel();
      (void)state_->fence.Wait();
    }
    state_ = std::move(other.state_);
  }
  return *this;
}

LookupHandle::~LookupHandle() {
  if (state_) {
    state_->own.Cancel();
    (void)state_->fence.Wait();
  }
}

Fence LookupHandle::fence() const { return state_ ? state_->fence : Fence::Failed(Status::FailedPrecondition("empty handle")); }
bool LookupHandle::ready() const { return !state_ || state_->fence.ready(); }
void LookupHandle::Cancel() {
  if (state_) state_->own.Cancel();
}

Result<LookupResult> LookupHandle::Wait() {
  if (!state_) return Status::FailedPrecondition("empty lookup handle");
  (void)state_->fence.Wait();
  std::lock_guard lock(state_->mu);
  if (!state_->result) return Status::FailedPrecondition("the lookup result was already taken");
  Result<LookupResult> r = std::move(*state_->result);
  state_->result.reset();
  return r;
}

Result<std::vector<ResidencyHint>> QueryStore::ResidencyHints(const ResidencyHintOptions& o) {
  Impl& s = *impl_;
  if (s.closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  if (o.max_chains == 0) return Status::InvalidArgument("residency hints: max_chains = 0");
  if (!std::isfinite(o.base_weight) || o.base_weight < 0) {
    return Status::InvalidArgument(fmt::format("residency hints: base_weight = {}", o.base_weight));
  }
  std::unordered_map<uint64_t, uint64_t> counts;  // label -> hits
  {
    std::lock_guard lock(s.hits_mu);
    for (const auto& [label, h] : s.hits) counts[label] = h.rec.count;
  }
  std::unordered_map<ChainHash, double, ChainHashHasher> weight;
  auto add = [&](const EntryRecord& rec, uint64_t hits) {
    const double w = double(hits) + o.base_weight;
    if (w <= 0) return;
    if (o.deriver != nullptr && !rec.prefix_tokens.empty()) {
      for (const ChainHash& c : o.deriver->Chain(rec.prefix_tokens)) weight[c] += w;  // ancestors add up
    } else if (rec.prefix_chain) {
      weight[*rec.prefix_chain] += w;
    }
  };
  if (o.base_weight > 0) {  // every entry with a prefix counts: scan them all
    std::unique_ptr<rocksdb::Iterator> it(s.db->NewIterator(rocksdb::ReadOptions(), s.cf(kEntries)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
      KVT_ASSIGN_OR_RETURN(EntryRecord rec, DecodeEntry(label, it->value().ToStringView()));
      auto c = counts.find(label);
      add(rec, c == counts.end() ? 0 : c->second);
    }
    KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning entries"));
  } else {
    for (const auto& [label, hits] : counts) {
      Result<EntryRecord> rec = s.GetEntry(label);
      if (!rec.ok() && rec.status().code() == StatusCode::kNotFound) continue;
      if (!rec.ok()) return rec.status();
      add(*rec, hits);
    }
  }
  std::vector<ResidencyHint> out;
  out.reserve(weight.size());
  for (const auto& [chain, w] : weight) out.push_back(ResidencyHint{chain, w});
  auto heavier = [](const ResidencyHint& x, const ResidencyHint& y) {
    return x.weight != y.weight ? x.weight > y.weight : x.chain < y.chain;
  };
  const size_t keep = std::min<size_t>(o.max_chains, out.size());
  std::partial_sort(out.begin(), out.begin() + static_cast<ptrdiff_t>(keep), out.end(), heavier);
  out.resize(keep);
  return out;
}

}  // namespace kvtier
