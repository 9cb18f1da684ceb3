// `kvtier bench nvme`'s baseline: fio run on the same slab file (bench_nvme.h).
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <iterator>
#include <vector>

#include "bench_nvme.h"

extern char** environ;

namespace kvtier::cli::bench_nvme {

// Runs fio on the slab's payloads: offsets payload_offset(0) + k * stride, slot_bytes each.
Result<Measurement> RunFio(const BenchNvmeOptions& o, const std::string& slab, const nvme::SlabGeometry& g, bool write,
                           const std::string& out_json) {
  std::vector<std::string> args = {
      o.fio,
      "--name=kvtier-baseline",
      "--filename=" + slab,
      "--ioengine=io_uring",
      "--fixedbufs",
      "--direct=1",
      fmt::format("--rw={}", write ? "randwrite" : "randread"),
      fmt::format("--bs={}", o.block_size),
      fmt::format("--ba={}", g.stride()),
      fmt::format("--offset={}", g.payload_offset(0)),
      fmt::format("--size={}", uint64_t{g.slot_count - 1} * g.stride() + g.slot_bytes),  // to the last payload's end
      fmt::format("--iodepth={}", o.qd),
      "--norandommap",
      "--randrepeat=0",
      "--time_based",
      fmt::format("--runtime={}ms", static_cast<uint64_t>(o.seconds * 1000)),
      "--lat_percentiles=1",
      "--output-format=json",
      "--output=" + out_json,
  };
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (const int rc = posix_spawnp(&pid, o.fio.c_str(), nullptr, nullptr, argv.data(), environ); rc != 0) {
    return Status::FromErrno(rc, fmt::format("starting {}", o.fio));
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) return Status::FromErrno(errno, "waiting for fio");
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return Status::Internal(fmt::format("{} failed (wait status {}); see {}", o.fio, wstatus, out_json));
  }
  std::ifstream in(out_json);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // fio may print notes before the JSON document.
  const size_t brace = text.find('{');
  if (brace == std::string::npos) return Status::DataLoss(fmt::format("{}: no JSON in fio's output", out_json));
  auto j = nlohmann::json::parse(text.begin() + static_cast<ptrdiff_t>(brace), text.end(), nullptr, false);
  if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) {
    return Status::DataLoss(fmt::format("{}: fio's JSON output has no jobs", out_json));
  }
  const auto& job = j["jobs"][0];
  if (job.value("error", 0) != 0) return Status::IoError(fmt::format("fio job error {}", job.value("error", 0)));
  const auto& side = job[write ? "write" : "read"];
  Measurement m{"fio", write ? "write" : "read"};
  m.gbps = side.value("bw_bytes", 0.0) / 1e9;
  m.iops = side.value("iops", 0.0);
  const auto& pct = side["lat_ns"]["percentile"];
  m.p50_us = pct.value("50.000000", 0.0) / 1000.0;
  m.p99_us = pct.value("99.000000", 0.0) / 1000.0;
  return m;
}

}  // namespace kvtier::cli::bench_nvme
