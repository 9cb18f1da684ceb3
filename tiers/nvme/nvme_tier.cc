#include "nvme_tier.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <mutex>

#include "xxh3_dispatch.h"

namespace kvtier {

using nvme::IndexRecord;
using nvme::kSectorBytes;

Status NvmeTierOptions::Validate() const {
  if (dir.empty()) return Status::InvalidArgument("nvme tier: no directory");
  if (slot_bytes == 0 || slot_bytes > (1ull << 30)) {
    return Status::InvalidArgument(fmt::format("nvme tier: slot of {} B", slot_bytes));
  }
  if (slot_count == 0) return Status::InvalidArgument("nvme tier: 0 slots");
  return Status();
}

namespace {
Status PreadFull(int fd, std::byte* dst, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, dst + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, fmt::format("pread at {}", offset + done));
    if (r == 0) return Status::IoError(fmt::format("end of slab at {}", offset + done));
    done += static_cast<size_t>(r);
  }
  return Status();
}
Status PwriteFull(int fd, const std::byte* src, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pwrite(fd, src + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, fmt::format("pwrite at {}", offset + done));
    done += static_cast<size_t>(r);
  }
  return Status();
}

bool AllZero(std::span<const std::byte> s) {
  return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}
}  // namespace

Result<std::unique_ptr<NvmeTier>> NvmeTier::Open(NvmeTierOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  if (options.logger == nullptr) options.logger = StderrLogger::Default();
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return Status::FromErrno(ec.value(), fmt::format("creating {}", options.dir));
  const uint64_t slot_bytes = (options.slot_bytes + kSectorBytes - 1) / kSectorBytes * kSectorBytes;
  const std::string slab = options.dir + "/slab.kvt";
  const bool existed = std::filesystem::exists(slab);
  KVT_ASSIGN_OR_RETURN(OpenedFile file, OpenForBlockIo(slab, options.direct_io, options.logger));
  KVT_ASSIGN_OR_RETURN(AlignedBuffer sector, AlignedBuffer::Allocate(kSectorBytes));
  const auto sector_span = std::span(sector.data(), kSectorBytes);
  bool fresh = !existed || std::filesystem::file_size(slab) < kSectorBytes;
  const nvme::SlabGeometry geometry{slot_bytes, options.slot_count};
  if (!fresh) {
    KVT_RETURN_IF_ERROR(PreadFull(file.fd.get(), sector.data(), kSectorBytes, 0));
    // An all-zero file header: a slab whose creation never finished (the header is written last).
    fresh = AllZero(sector_span);
  }
  if (!fresh) {
    auto g = nvme::DecodeSlabHeader(sector_span);
    if (!g.ok()) return std::move(g).status().Annotate(slab);
    if (*g != geometry) {
      return Status::InvalidArgument(fmt::format("{} holds {} slots of {} B; asked for {} of {} B", slab, g->slot_count,
                                                 g->slot_bytes, options.slot_count, slot_bytes));
    }
  }
  if (file.direct) {
    // Records and payloads sit at 4 KiB multiples and are 4 KiB multiples long.
    KVT_ASSIGN_OR_RETURN(uint32_t align, DirectIoOffsetAlignment(file.fd.get()));
    if (align > kSectorBytes || (align != 0 && kSectorBytes % align != 0)) {
      return Status::FailedPrecondition(
          fmt::format("{}: direct I/O here needs {} B alignment; slots are laid out in {} B units", slab, align,
                      kSectorBytes));
    }
  }
  // A new slab gets written (zeroed) extents where the kernel and device offer it cheaply, so
  // its first writes are plain overwrites; else (and for an existing slab) plain fallocate.
  bool written_extents = false;
  if (fresh) {
    KVT_ASSIGN_OR_RETURN(written_extents, PreallocateWrittenZeroes(file.fd.get(), geometry.file_bytes()));
    options.logger->Log(LogLevel::kInfo, "nvme tier: new slab {}",
                        written_extents ? "preallocated with written extents (FALLOC_FL_WRITE_ZEROES)"
                                        : "preallocated with unwritten extents (FALLOC_FL_WRITE_ZEROES not offered "
                                          "here): the first write into each slot also converts its extent");
  }
  if (!written_extents) KVT_RETURN_IF_ERROR(Preallocate(file.fd.get(), geometry.file_bytes()));  // ENOSPC -> kNoSpace
  if (fresh) {
    nvme::EncodeSlabHeader(geometry, sector_span);
    KVT_RETURN_IF_ERROR(PwriteFull(file.fd.get(), sector.data(), kSectorBytes, 0));
    KVT_RETURN_IF_ERROR(SyncData(file.fd.get()));
  }
  KVT_ASSIGN_OR_RETURN(auto index, nvme::NvmeIndex::Open(options.dir + "/index"));
  auto tier = std::unique_ptr<NvmeTier>(new NvmeTier(std::move(options), std::move(file), geometry, std::move(index)));
  tier->stats_.written_extents = written_extents;
  KVT_RETURN_IF_ERROR(tier->Recover());
  return tier;
}

NvmeTier::NvmeTier(NvmeTierOptions options, OpenedFile file, nvme::SlabGeometry geometry,
                   std::unique_ptr<nvme::NvmeIndex> index)
    : options_(std::move(options)),
      file_(std::move(file)),
      geometry_(geometry),
      index_(std::move(index)),
      slots_(geometry.slot_count),
      state_(geometry.slot_count) {
  caps_.kind = TierKind::kNvme;
  caps_.slot_bytes = geometry_.slot_bytes;
  caps_.slot_count = geometry_.slot_count;
  caps_.alignment = static_cast<uint32_t>(kSectorBytes);
  caps_.device_addressable = false;
  caps_.persistent = true;
  stats_.direct = file_.direct;
  stats_.checksum_path = nvme::Xxh3PathName(nvme::ActiveXxh3Path());
  static std::once_flag logged;  // the path is chosen once per process: said once
  std::call_once(logged, [&] {
    options_.logger->Log(LogLevel::kInfo, "nvme tier: slot checksums use XXH3 {} (chosen at run time)", stats_.checksum_path);
  });
}

NvmeTier::~NvmeTier() {
  // Best effort: the counter only speeds up the next open (its base is also the clock).
  (void)index_->PutCounter(next_generation_.load(std::memory_order_relaxed), nvme::IndexSync::kSync);
}

Status NvmeTier::Recover() {
  uint64_t bad = 0;
  KVT_ASSIGN_OR_RETURN(std::vector<IndexRecord> records, index_->LoadAll(&bad));
  KVT_ASSIGN_OR_RETURN(uint64_t counter, index_->GetCounter());
  // Generations only grow, also across a lost index: the base is at least the wall clock in
  // ns, so a block written before (with a smaller generation) can never verify again.
  const auto now = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  uint64_t base = std::max(counter, now);
  std::vector<IndexRecord> keep;
  std::vector<BlockKey> drop;
  std::vector<int64_t> owner(geometry_.slot_count, -1);  // record index per slot
  for (const IndexRecord& r : records) {
    base = std::max(base, r.generation + 1);
    if (r.slot.value() >= geometry_.slot_count || r.payload_bytes > geometry_.slot_bytes || r.payload_bytes == 0) {
      drop.push_back(r.key);
      continue;
    }
    int64_t& o = owner[r.slot.value()];
    if (o >= 0) {  // two keys claim one slot: only the newer write can be on disk
      const bool newer = r.generation > keep[static_cast<size_t>(o)].generation;
      drop.push_back(newer ? keep[static_cast<size_t>(o)].key : r.key);
      if (newer) keep[static_cast<size_t>(o)] = r;
      continue;
    }
    o = static_cast<int64_t>(keep.size());
    keep.push_back(r);
  }
  next_generation_.store(base + 1, std::memory_order_relaxed);
  KVT_RETURN_IF_ERROR(index_->PutCounter(base + 1, nvme::IndexSync::kSync));
  if (!drop.empty()) KVT_RETURN_IF_ERROR(index_->Delete(drop, nvme::IndexSync::kSync));
  // Adopt the indexed slots: reserve every slot, give back the others.
  if (!keep.empty()) {
    KVT_ASSIGN_OR_RETURN(std::vector<SlotId> all, slots_.Reserve(geometry_.slot_count, "nvme"));
    std::vector<SlotId> unused;
    for (SlotId s : all) {
      if (owner[s.value()] < 0) unused.push_back(s);
    }
    slots_.Release(unused, Fence());
  }
  std::lock_guard lock(mu_);
  for (const IndexRecord& r : keep) {
    SlotState& st = state_[r.slot.value()];
    st.published = r.key;
    st.generation = r.generation;
    st.payload_bytes = r.payload_bytes;
    st.checksum = r.checksum;
    st.written = true;
    published_[r.key] = r.slot;
  }
  recovered_ = std::move(keep);
  stats_.recovered_blocks = recovered_.size();
  stats_.dropped_at_open = drop.size() + bad;
  return Status();
}

void NvmeTier::Release(std::span<const SlotId> slots, Fence last_use) {
  std::vector<BlockKey> unindex;
  {
    std::lock_guard lock(mu_);
    for (SlotId s : slots) {
      KVT_CHECK_MSG(s.value() < state_.size(), fmt::format("nvme slot {} out of range", s.value()));
      SlotState& st = state_[s.value()];
      if (st.published) {
        auto it = published_.find(*st.published);
        if (it != published_.end() && it->second == s) {
          published_.erase(it);
          unindex.push_back(*st.published);
        }
      }
      st = SlotState{};
    }
    stats_.unpublished += unindex.size();
  }
  if (!unindex.empty()) {
    // Cache mode may lose this delete in a crash: the entry then names a slot whose next
    // write carries a newer generation, so the old key can never verify (a miss).
    if (Status s = index_->Delete(unindex, sync()); !s.ok()) {
      options_.logger->Log(LogLevel::kWarning, "nvme index: deleting {} entries failed: {}", unindex.size(), s.ToString());
      std::lock_guard lock(mu_);
      ++stats_.index_errors;
    }
  }
  slots_.Release(slots, std::move(last_use));
}

Location NvmeTier::Locate(SlotId slot) const {
  KVT_CHECK(slot.value() < geometry_.slot_count);
  return FileExtent{file_.fd.get(), geometry_.payload_offset(slot.value())};
}

std::vector<std::pair<BlockKey, SlotId>> NvmeTier::TakeRecovered() {
  std::lock_guard lock(mu_);
  std::vector<std::pair<BlockKey, SlotId>> out;
  out.reserve(recovered_.size());
  for (const IndexRecord& r : recovered_) out.emplace_back(r.key, r.slot);
  recovered_.clear();
  return out;
}

void NvmeTier::Bind(SlotId slot, const BlockKey& key) {
  std::lock_guard lock(mu_);
  KVT_CHECK(slot.value() < state_.size());
  state_[slot.value()].bound = key;
}

Result<SlotId> NvmeTier::Find(const BlockKey& key) const {
  std::lock_guard lock(mu_);
  auto it = published_.find(key);
  if (it == published_.end()) return Status::NotFound(fmt::format("block {} is not on nvme", key.ToString()));
  return it->second;
}

std::optional<BlockKey> NvmeTier::BoundKey(SlotId slot) const {
  std::lock_guard lock(mu_);
  return state_.at(slot.value()).bound;
}

bool NvmeTier::Expect(SlotId slot, nvme::SlotExpectation* want, BlockKey* key) const {
  std::lock_guard lock(mu_);
  const SlotState& st = state_.at(slot.value());
  if (!st.written) return false;
  want->generation = st.generation;
  want->payload_bytes = st.payload_bytes;
  want->slot_offset = geometry_.payload_offset(slot.value());
  want->checksum = st.checksum;
  want->key = nullptr;
  if (st.published) {
    *key = *st.published;
    want->key = key;
  }
  return true;
}

Status NvmeTier::Publish(std::span<const SlotId> slots, std::span<const nvme::SlotHeader> headers) {
  KVT_CHECK(slots.size() == headers.size());
  std::vector<IndexRecord> records;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < slots.size(); ++i) {
      const SlotState& st = state_.at(slots[i].value());
      if (st.bound) records.push_back({*st.bound, slots[i], headers[i].generation, headers[i].checksum, headers[i].payload_bytes});
    }
  }
  if (!records.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    Status s = index_->Put(records, sync());
    const auto ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    {
      std::lock_guard lock(mu_);
      ++stats_.index_puts;
      stats_.index_put_ns += ns;
    }
    if (!s.ok()) {
      std::lock_guard lock(mu_);
      ++stats_.index_errors;
      for (SlotId slot : slots) state_[slot.value()].written = false;
      return s;
    }
  }
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < slots.size(); ++i) {
    SlotState& st = state_[slots[i].value()];
    st.written = true;
    st.generation = headers[i].generation;
    st.payload_bytes = headers[i].payload_bytes;
    st.checksum = headers[i].checksum;
    if (st.bound) {
      if (st.published && !(*st.published == *st.bound)) published_.erase(*st.published);
      auto [it, inserted] = published_.try_emplace(*st.bound, slots[i]);
      if (!inserted && it->second != slots[i]) {
        // The key moved: the old slot's copy is superseded (the index now names this slot).
        state_[it->second.value()].published.reset();
        it->second = slots[i];
      }
      st.published = st.bound;
      st.bound.reset();
    }
  }
  stats_.published += records.size();
  return Status();
}

void NvmeTier::ReportDataLoss(SlotId slot) {
  std::optional<BlockKey> key;
  {
    std::lock_guard lock(mu_);
    SlotState& st = state_.at(slot.value());
    ++stats_.data_loss;
    st.written = false;
    if (st.published) {
      auto it = published_.find(*st.published);
      if (it != published_.end() && it->second == slot) {
        published_.erase(it);
        key = st.published;
      }
      st.published.reset();
    }
  }
  if (key) (void)index_->Delete({&*key, 1}, sync());  // best effort: a stale entry never verifies
}

Result<FsckReport> NvmeTier::Fsck(bool drop) {
  FsckReport report;
  std::vector<std::pair<SlotId, BlockKey>> indexed;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, slot] : published_) indexed.emplace_back(slot, key);
  }
  std::sort(indexed.begin(), indexed.end());
  // One pread per slot: its record and payload are adjacent.
  KVT_ASSIGN_OR_RETURN(AlignedBuffer buf, AlignedBuffer::Allocate(geometry_.stride()));
  const std::span<const std::byte> record_bytes(buf.data(), nvme::kRecordBytes);
  const std::span<const std::byte> payload_bytes(buf.data() + nvme::kRecordBytes, geometry_.slot_bytes);
  for (const auto& [slot, key] : indexed) {
    nvme::SlotExpectation want;
    BlockKey expected_key;
    if (!Expect(slot, &want, &expected_key)) continue;
    ++report.checked;
    KVT_RETURN_IF_ERROR(PreadFull(fd(), buf.data(), geometry_.stride(), geometry_.record_offset(slot.value())));
    const Status payload = nvme::VerifyPayload(payload_bytes, want);
    Status record;
    if (auto r = nvme::DecodeSlotRecord(record_bytes); !r.ok()) {
      record = r.status();
    } else {
      record = nvme::CheckRecord(*r, want);
    }
    if (payload.ok() && record.ok()) continue;
    ++report.bad;
    std::string what;
    if (!payload.ok()) {
      ++report.bad_payloads;
      what = fmt::format("payload: {}", payload.message());
    }
    if (!record.ok()) {
      ++report.bad_records;
      what += fmt::format("{}header record: {}", what.empty() ? "" : "; ", record.message());
    }
    report.problems.push_back(fmt::format("slot {} ({}): {}", slot.value(), key.ToString(), what));
    if (drop) {
      ReportDataLoss(slot);
      ++report.dropped;
    } else {
      std::lock_guard lock(mu_);
      ++stats_.data_loss;
    }
  }
  return report;
}

NvmeTierStats NvmeTier::stats() const {
  NvmeTierStats st;
  {
    std::lock_guard lock(mu_);
    st = stats_;
  }
  st.index_reopens = index_->reopens();
  st.index_writable = index_->writable();
  return st;
}

}  // namespace kvtier
