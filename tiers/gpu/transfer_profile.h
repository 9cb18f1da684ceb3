// TransferProfile: what `kvtier probe` measured on this machine, per block size and path,
// and the choices the runtime makes from it. Stored as JSON (docs/formats.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "kvtier/status.h"

namespace kvtier {

enum class D2hMode : uint8_t { kKernel, kCpuAssisted, kAuto };
std::string_view D2hModeName(D2hMode mode);  // "kernel", "cpu", "auto"
Result<D2hMode> ParseD2hMode(std::string_view name);

struct PathRates {  // GB/s; 0 = not measured
  double h2d_gather = 0;
  double d2h_scatter = 0;
  double d2h_cpu_assisted = 0;
  double h2d_per_block = 0;
  double d2h_per_block = 0;
};

struct TransferProfile {
  std::string device_name;
  double h2d_contiguous = 0;  // GB/s, one large cudaMemcpyAsync
  double d2h_contiguous = 0;
  double host_memcpy = 0;     // GB/s, TBB threads memcpy host to host
  std::map<uint64_t, PathRates> by_block_size;

  bool empty() const { return by_block_size.empty(); }
  // The faster measured D2H path for the nearest measured block size (kKernel when none).
  D2hMode ChooseD2h(uint64_t block_bytes) const;

  std::string ToJson() const;
  static Result<TransferProfile> FromJson(std::string_view text);
  static Result<TransferProfile> Load(const std::string& path);
  Status Save(const std::string& path) const;  // write to a temp file, fsync, rename
};

}  // namespace kvtier
