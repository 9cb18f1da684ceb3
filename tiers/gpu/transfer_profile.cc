#include "transfer_profile.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kvtier {

std::string_view D2hModeName(D2hMode mode) {
  switch (mode) {
    case D2hMode::kKernel: return "kernel";
    case D2hMode::kCpuAssisted: return "cpu";
    case D2hMode::kAuto: return "auto";
  }
  return "unknown";
}

Result<D2hMode> ParseD2hMode(std::string_view name) {
  for (D2hMode m : {D2hMode::kKernel, D2hMode::kCpuAssisted, D2hMode::kAuto}) {
    if (D2hModeName(m) == name) return m;
  }
  return Status::InvalidArgument(fmt::format("unknown D2H mode '{}' (expected kernel, cpu or auto)", name));
}

D2hMode TransferProfile::ChooseD2h(uint64_t block_bytes) const {
  if (by_block_size.empty()) return D2hMode::kKernel;
  auto best = by_block_size.begin();
  for (auto it = by_block_size.begin(); it != by_block_size.end(); ++it) {
    const double d = std::fabs(std::log2(double(it->first)) - std::log2(double(block_bytes)));
    if (d < std::fabs(std::log2(double(best->first)) - std::log2(double(block_bytes)))) best = it;
  }
  return best->second.d2h_cpu_assisted > best->second.d2h_scatter ? D2hMode::kCpuAssisted : D2hMode::kKernel;
}

std::string TransferProfile::ToJson() const {
  nlohmann::json j;
  j["format"] = "kvtier-transfer-profile/1";
  j["device"] = device_name;
  j["h2d_contiguous_gbps"] = h2d_contiguous;
  j["d2h_contiguous_gbps"] = d2h_contiguous;
  j["host_memcpy_gbps"] = host_memcpy;
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [bytes, r] : by_block_size) {
    rows.push_back({{"block_bytes", bytes},
                    {"h2d_gather_gbps", r.h2d_gather},
                    {"d2h_scatter_gbps", r.d2h_scatter},
                    {"d2h_cpu_assisted_gbps", r.d2h_cpu_assisted},
                    {"h2d_per_block_gbps", r.h2d_per_block},
                    {"d2h_per_block_gbps", r.d2h_per_block}});
  }
  j["block_sizes"] = rows;
  return j.dump(2);
}

Result<TransferProfile> TransferProfile::FromJson(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::InvalidArgument("transfer profile: not a JSON object");
  if (j.value("format", "") != "kvtier-transfer-profile/1") {
    return Status::InvalidArgument("transfer profile: missing or unknown \"format\" (want kvtier-transfer-profile/1)");
  }
  TransferProfile p;
  try {
    p.device_name = j.value("device", "");
    p.h2d_contiguous = j.value("h2d_contiguous_gbps", 0.0);
    p.d2h_contiguous = j.value("d2h_contiguous_gbps", 0.0);
    p.host_memcpy = j.value("host_memcpy_gbps", 0.0);
    for (const auto& row : j.at("block_sizes")) {
      const uint64_t bytes = row.at("block_bytes").get<uint64_t>();
      if (bytes == 0) return Status::InvalidArgument("transfer profile: a row has block_bytes 0");
      PathRates r;
      r.h2d_gather = row.value("h2d_gather_gbps", 0.0);
      r.d2h_scatter = row.value("d2h_scatter_gbps", 0.0);
      r.d2h_cpu_assisted = row.value("d2h_cpu_assisted_gbps", 0.0);
      r.h2d_per_block = row.value("h2d_per_block_gbps", 0.0);
      r.d2h_per_block = row.value("d2h_per_block_gbps", 0.0);
      p.by_block_size[bytes] = r;
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(fmt::format("transfer profile: {}", e.what()));
  }
  return p;
}

Result<TransferProfile> TransferProfile::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(fmt::format("transfer profile {} cannot be opened", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto p = FromJson(ss.str());
  if (!p.ok()) return std::move(p).status().Annotate(path);
  return p;
}

Status TransferProfile::Save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  const std::string text = ToJson() + "\n";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("creating {}", tmp));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, fmt::format("writing {}", tmp));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno(err, fmt::format("fsync of {}", tmp));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, fmt::format("renaming to {}", path));
  return Status();
}

}  // namespace kvtier
