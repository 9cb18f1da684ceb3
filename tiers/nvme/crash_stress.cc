#include "crash_stress.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <unordered_map>

#include "host_tier.h"
#include "nvme_mover.h"

namespace kvtier {

namespace {

class NullLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
};
NullLogger g_quiet;

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

BlockKey KeyOfId(uint64_t seed, uint64_t id) {
  BlockKey k;
  for (size_t i = 0; i < 4; ++i) {
    const uint64_t w = Mix(seed * 31 + id * 4 + i);
    std::memcpy(k.chain.bytes.data() + 8 * i, &w, 8);
  }
  k.layer = LayerId{static_cast<uint32_t>(id % 7)};
  return k;
}

// The bytes of block `id`: a function of the key alone.
void FillPayload(std::span<std::byte> out, uint64_t seed, uint64_t id) {
  uint64_t s = Mix(seed ^ (id * 0x2545F4914F6CDD1Dull));
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    s = Mix(s);
    std::memcpy(out.data() + i, &s, 8);
  }
}

// A pipe record: 'R' ready, 'A' acknowledged, 'D' may be deleted, 'E' child error.
struct Record {
  uint64_t op = 0;
  uint64_t id = 0;
};

void Send(int fd, char op, uint64_t id) {
  const Record r{static_cast<uint64_t>(op), id};
  ssize_t n;
  do {
    n = ::write(fd, &r, sizeof(r));  // < PIPE_BUF: atomic
  } while (n < 0 && errno == EINTR);
}

struct Rig {
  std::unique_ptr<HostTier> dram;
  std::unique_ptr<NvmeTier> nvme;
  std::unique_ptr<NvmeMover> mover;
};

Result<Rig> OpenRig(const NvmeStressOptions& o, uint32_t dram_slots, NvmeDirection direction) {
  Rig r;
  HostTierOptions host;
  host.slot_bytes = o.block_bytes;
  host.slot_count = dram_slots;
  host.pinning = PinningPolicy::kAllowUnpinned;
  host.touch_threads = 1;
  host.logger = &g_quiet;
  KVT_ASSIGN_OR_RETURN(r.dram, HostTier::Create(std::move(host)));
  KVT_ASSIGN_OR_RETURN(r.nvme, NvmeTier::Open({.dir = o.dir, .slot_bytes = o.block_bytes, .slot_count = o.slots,
                                               .mode = o.mode, .direct_io = o.direct_io, .logger = &g_quiet}));
  KVT_ASSIGN_OR_RETURN(r.mover, NvmeMover::Create(r.dram.get(), r.nvme.get(), direction));
  return r;
}

// The child: writes random blocks (new keys, and rewrites of held ones to new slots) until
// it is killed. Never returns.
[[noreturn]] void ChildMain(const NvmeStressOptions& o, int fd, uint64_t cycle) {
  auto run = [&]() -> Status {
    KVT_ASSIGN_OR_RETURN(Rig rig, OpenRig(o, o.batch, NvmeDirection::kDramToNvme));
    const uint64_t nkeys = uint64_t{o.slots} * 2;
    std::unordered_map<BlockKey, uint64_t> id_of;
    for (uint64_t id = 0; id < nkeys; ++id) id_of.emplace(KeyOfId(o.seed, id), id);
    std::unordered_map<uint64_t, SlotId> held;
    std::vector<uint64_t> held_ids;  // for random eviction; may hold stale ids
    for (const auto& [key, slot] : rig.nvme->TakeRecovered()) {
      auto it = id_of.find(key);
      if (it == id_of.end()) {
        rig.nvme->Release({&slot, 1}, Fence());
        continue;
      }
      held[it->second] = slot;
      held_ids.push_back(it->second);
    }
    Send(fd, 'R', 0);
    std::mt19937_64 rng(o.seed ^ Mix(cycle + 1));
    while (true) {
      std::vector<uint64_t> ids;
      while (ids.size() < o.batch) {
        const uint64_t id = rng() % nkeys;
        if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
      }
      const auto n = static_cast<uint32_t>(ids.size());
      while (rig.nvme->usage().free_slots < n && !held.empty()) {  // evict a random block
        const size_t pick = rng() % held_ids.size();
        const uint64_t victim = held_ids[pick];
        held_ids[pick] = held_ids.back();
        held_ids.pop_back();
        auto it = held.find(victim);
        if (it == held.end() || std::find(ids.begin(), ids.end(), victim) != ids.end()) continue;
        Send(fd, 'D', victim);  // before the fact: it may be gone from here on
        rig.nvme->Release({&it->second, 1}, Fence());
        held.erase(it);
      }
      KVT_ASSIGN_OR_RETURN(std::vector<SlotId> dst, rig.nvme->Reserve(n));
      KVT_ASSIGN_OR_RETURN(std::vector<SlotId> src, rig.dram->Reserve(n));
      MoveBatch b;
      for (uint32_t i = 0; i < n; ++i) {
        FillPayload({std::get<MemoryAddress>(rig.dram->Locate(src[i])).ptr, o.block_bytes}, o.seed, ids[i]);
        b.segments.push_back({src[i], dst[i], 0, 0, o.block_bytes});
        b.keys.push_back(KeyOfId(o.seed, ids[i]));
      }
      const Status s = rig.mover->Submit(std::move(b)).Wait();
      rig.dram->Release(src, Fence());
      if (!s.ok()) {
        rig.nvme->Release(dst, Fence());
        continue;
      }
      for (uint32_t i = 0; i < n; ++i) {
        auto [it, fresh] = held.try_emplace(ids[i], dst[i]);
        if (!fresh) {
          // A rewrite: the key now lives in the new slot; the old one holds a superseded
          // copy (its release deletes no index entry).
          rig.nvme->Release({&it->second, 1}, Fence());
          it->second = dst[i];
        } else {
          held_ids.push_back(ids[i]);
        }
        Send(fd, 'A', ids[i]);
      }
    }
  };
  const Status s = run();
  if (!s.ok()) fmt::print(stderr, "kvtier stress nvme (child): {}\n", s.ToString());  // the parent only gets the code
  Send(fd, 'E', static_cast<uint64_t>(s.code()));
  ::_exit(3);
}

// Reads records until `deadline` (or EOF when `to_eof`); false on EOF.
bool Drain(int fd, std::chrono::steady_clock::time_point deadline, bool to_eof, std::vector<Record>* out) {
  while (true) {
    int timeout = -1;
    if (!to_eof) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return true;
      timeout = static_cast<int>(left.count());
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, timeout);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return true;
    Record buf[256];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out->insert(out->end(), buf, buf + static_cast<size_t>(n) / sizeof(Record));
  }
}

}  // namespace

Status NvmeStressOptions::Validate() const {
  if (dir.empty()) return Status::InvalidArgument("stress: no directory");
  if (cycles == 0) return Status::InvalidArgument("stress: 0 cycles");
  if (batch == 0 || batch > slots) return Status::InvalidArgument(fmt::format("stress: batch {} of {} slots", batch, slots));
  if (block_bytes == 0 || block_bytes % 4096 != 0) {
    return Status::InvalidArgument(fmt::format("stress: block of {} B (a positive multiple of 4096)", block_bytes));
  }
  if (min_kill_ms > max_kill_ms) return Status::InvalidArgument("stress: min_kill_ms > max_kill_ms");
  return Status();
}

Result<NvmeStressReport> RunNvmeCrashStress(const NvmeStressOptions& o) {
  KVT_RETURN_IF_ERROR(o.Validate());
  NvmeStressReport report;
  const uint64_t nkeys = uint64_t{o.slots} * 2;
  std::vector<bool> acked(nkeys, false);
  std::unordered_map<BlockKey, uint64_t> id_of;
  for (uint64_t id = 0; id < nkeys; ++id) id_of.emplace(KeyOfId(o.seed, id), id);
  std::mt19937_64 rng(Mix(o.seed));
  std::vector<std::byte> want(o.block_bytes);
  auto violation = [&](std::string line) {
    if (report.violations.size() < 20) report.violations.push_back(std::move(line));
  };

  for (uint32_t cycle = 0; cycle < o.cycles; ++cycle) {
    int fds[2];
    if (::pipe(fds) != 0) return Status::FromErrno(errno, "pipe");
    const pid_t pid = ::fork();
    if (pid < 0) return Status::FromErrno(errno, "fork");
    if (pid == 0) {
      ::close(fds[0]);
      ChildMain(o, fds[1], cycle);
    }
    ::close(fds[1]);
    std::vector<Record> records;
    // Wait for the child to open the tier, then kill it at a random point of its writes.
    const auto now = std::chrono::steady_clock::now();
    bool ready = false;
    while (!ready && std::chrono::steady_clock::now() < now + std::chrono::seconds(30)) {
      if (!Drain(fds[0], std::chrono::steady_clock::now() + std::chrono::milliseconds(5), false, &records)) break;
      for (const Record& r : records) ready = ready || r.op == 'R';
    }
    const uint32_t delay = o.min_kill_ms + static_cast<uint32_t>(rng() % (o.max_kill_ms - o.min_kill_ms + 1));
    if (ready) (void)Drain(fds[0], std::chrono::steady_clock::now() + std::chrono::milliseconds(delay), false, &records);
    ::kill(pid, SIGKILL);
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    (void)Drain(fds[0], {}, true, &records);
    ::close(fds[0]);
    for (const Record& r : records) {
      if (r.op == 'E') {
        return Status::Internal(fmt::format("stress cycle {}: the child failed with {} (its message is on stderr)", cycle,
                                            StatusCodeName(static_cast<StatusCode>(r.id))));
      }
      if (r.op == 'A') {
        acked[r.id] = true;
        ++report.acked;
      }
      if (r.op == 'D') acked[r.id] = false;
    }
    if (!ready) return Status::DeadlineExceeded(fmt::format("stress cycle {}: the child did not open the tier", cycle));

    // Reopen and read every recovered block, one at a time (so a miss names its block).
    KVT_ASSIGN_OR_RETURN(Rig rig, OpenRig(o, 1, NvmeDirection::kNvmeToDram));
    const auto recovered = rig.nvme->TakeRecovered();
    report.recovered += recovered.size();
    std::vector<bool> served(nkeys, false);
    uint64_t cycle_served = 0, cycle_misses = 0;
    KVT_ASSIGN_OR_RETURN(std::vector<SlotId> d, rig.dram->Reserve(1));
    std::byte* buf = std::get<MemoryAddress>(rig.dram->Locate(d[0])).ptr;
    for (const auto& [key, slot] : recovered) {
      auto it = id_of.find(key);
      if (it == id_of.end()) {
        ++report.wrong;
        violation(fmt::format("cycle {}: recovered an unknown key {}", cycle, key.ToString()));
        continue;
      }
      std::memset(buf, 0, o.block_bytes);
      MoveBatch b;
      b.segments.push_back({slot, d[0], 0, 0, o.block_bytes});
      b.keys.push_back(key);
      const Status s = rig.mover->Submit(std::move(b)).Wait();
      if (!s.ok()) {
        ++report.misses;
        ++cycle_misses;
        continue;
      }
      FillPayload(want, o.seed, it->second);
      if (std::memcmp(want.data(), buf, o.block_bytes) != 0) {
        ++report.wrong;
        violation(fmt::format("cycle {}: block {} (slot {}) served with wrong bytes", cycle, it->second, slot.value()));
        continue;
      }
      ++report.served;
      ++cycle_served;
      served[it->second] = true;
    }
    rig.dram->Release(d, Fence());
    uint64_t cycle_lost = 0;
    for (uint64_t id = 0; id < nkeys; ++id) {
      if (o.mode == NvmeMode::kDurable && acked[id] && !served[id]) {
        ++report.lost;
        ++cycle_lost;
        violation(fmt::format("cycle {}: acknowledged block {} is not served after the kill", cycle, id));
      }
      acked[id] = served[id];  // what the next child adopts
    }
    ++report.cycles;
    if (o.on_cycle) {
      o.on_cycle(cycle, fmt::format("cycle {}: killed after {} ms, {} records, recovered {}, served {}, misses {}, lost {}",
                                    cycle, delay, records.size(), recovered.size(), cycle_served, cycle_misses, cycle_lost));
    }
  }
  return report;
}

}  // namespace kvtier
