// Test helpers for the NVMe tier: a temp directory, a DRAM pool + NVMe tier + both movers,
// self-verifying payloads, and synchronous write/read of keyed blocks through the movers.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "host_tier.h"
#include "kvtier/logger.h"
#include "nvme_mover.h"
#include "nvme_tier.h"

namespace kvtier::testing {

class QuietNvmeLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
  static QuietNvmeLogger* Get() {
    static QuietNvmeLogger l;
    return &l;
  }
};

// A fresh directory under the temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> n{0};
    path_ = std::filesystem::temp_directory_path() /
            ("kvtier_nvme_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + "_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline BlockKey KeyOf(uint64_t id) {
  BlockKey k;
  std::mt19937_64 rng(id * 0x9E3779B97F4A7C15ull + 1);
  for (size_t i = 0; i < 32; i += 8) {
    const uint64_t w = rng();
    std::memcpy(k.chain.bytes.data() + i, &w, 8);
  }
  k.layer = LayerId{static_cast<uint32_t>(id % 61)};
  return k;
}

// Bytes that depend only on (id, version): a served block can be checked on its own.
inline void FillPayload(std::span<std::byte> out, uint64_t id, uint64_t version) {
  std::mt19937_64 rng(id * 1000003ull + version);
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(out.data() + i, &w, 8);
  }
}

inline std::unique_ptr<HostTier> MakeDram(uint64_t slot_bytes, uint32_t slots) {
  HostTierOptions o;
  o.slot_bytes = slot_bytes;
  o.slot_count = slots;
  o.pinning = PinningPolicy::kAllowUnpinned;
  o.touch_threads = 1;
  o.logger = QuietNvmeLogger::Get();
  auto t = HostTier::Create(std::move(o));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

struct NvmeRig {
  std::unique_ptr<HostTier> dram;
  std::unique_ptr<NvmeTier> nvme;
  std::unique_ptr<NvmeMover> down;  // DRAM -> NVMe
  std::unique_ptr<NvmeMover> up;    // NVMe -> DRAM
  uint64_t block_bytes = 0;

  static Result<NvmeRig> Open(const std::string& dir, uint64_t block_bytes, uint32_t dram_slots, uint32_t nvme_slots,
                              NvmeMode mode = NvmeMode::kCache, NvmeMoverOptions mo = {}) {
    NvmeRig r;
    r.block_bytes = block_bytes;
    r.dram = MakeDram(block_bytes, dram_slots);
    if (!r.dram) return Status::Internal("dram");
    KVT_ASSIGN_OR_RETURN(r.nvme, NvmeTier::Open({.dir = dir, .slot_bytes = block_bytes, .slot_count = nvme_slots,
                                                 .mode = mode,
                                                 .direct_io = DirectIo::kPreferred,
                                                 .logger = QuietNvmeLogger::Get()}));
    KVT_ASSIGN_OR_RETURN(r.down, NvmeMover::Create(r.dram.get(), r.nvme.get(), NvmeDirection::kDramToNvme, mo));
    KVT_ASSIGN_OR_RETURN(r.up, NvmeMover::Create(r.dram.get(), r.nvme.get(), NvmeDirection::kNvmeToDram, mo));
    return r;
  }
  std::byte* DramSlot(SlotId s) const { return std::get<MemoryAddress>(dram->Locate(s)).ptr; }

  // Writes blocks ids[i] (payload version `version`) to new NVMe slots bound to their keys.
  Result<std::vector<SlotId>> Write(std::span<const uint64_t> ids, uint64_t version = 0) {
    KVT_ASSIGN_OR_RETURN(std::vector<SlotId> src, dram->Reserve(static_cast<uint32_t>(ids.size())));
    auto dst = nvme->Reserve(static_cast<uint32_t>(ids.size()));
    if (!dst.ok()) {
      dram->Release(src, Fence());
      return dst.status();
    }
    MoveBatch b;
    for (size_t i = 0; i < ids.size(); ++i) {
      FillPayload({DramSlot(src[i]), block_bytes}, ids[i], version);
      nvme->Bind((*dst)[i], KeyOf(ids[i]));
      b.segments.push_back({src[i], (*dst)[i], 0, 0, block_bytes});
    }
    Status s = down->Submit(std::move(b)).Wait();
    dram->Release(src, Fence());
    if (!s.ok()) {
      nvme->Release(*dst, Fence());
      return s;
    }
    return dst;
  }

  // Reads NVMe `slot` into a DRAM slot; on success checks it against (id, version).
  Status ReadAndCheck(SlotId slot, uint64_t id, uint64_t version, bool* matches) {
    KVT_ASSIGN_OR_RETURN(std::vector<SlotId> d, dram->Reserve(1));
    std::memset(DramSlot(d[0]), 0, block_bytes);
    MoveBatch b;
    b.segments.push_back({slot, d[0], 0, 0, block_bytes});
    Status s = up->Submit(std::move(b)).Wait();
    if (s.ok()) {
      std::vector<std::byte> want(block_bytes);
      FillPayload(want, id, version);
      *matches = std::memcmp(want.data(), DramSlot(d[0]), block_bytes) == 0;
    }
    dram->Release(d, Fence());
    return s;
  }
};

}  // namespace kvtier::testing
