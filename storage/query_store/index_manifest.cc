#include "query_store/index_manifest.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <cerrno>
#include <charconv>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

namespace kvtier::query_store {
namespace {

constexpr std::string_view kMagic = "kvtier-qstore-index";
constexpr std::string_view kName = "INDEX";
constexpr std::string_view kTmpName = "INDEX.tmp";

Result<uint64_t> ParseU64(const std::map<std::string, std::string>& kv, const std::string& key) {
  auto it = kv.find(key);
  if (it == kv.end()) return Status::DataLoss(fmt::format("index manifest lacks '{}'", key));
  uint64_t v = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || end != s.data() + s.size()) {
    return Status::DataLoss(fmt::format("index manifest: bad value for '{}'", key));
  }
  return v;
}

Status WriteAll(int fd, std::string_view data, const std::filesystem::path& file) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, fmt::format("writing {}", file.string()));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

}  // namespace

Status FsyncDirectory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("opening directory {}", dir.string()));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno(err, fmt::format("fsync directory {}", dir.string()));
  return Status::Ok();
}

Result<FileDigest> DigestFile(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("opening {}", file.string()));
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  std::vector<char> buf(1 << 20);
  FileDigest d;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, fmt::format("reading {}", file.string()));
    }
    if (n == 0) break;
    XXH3_64bits_update(&state, buf.data(), static_cast<size_t>(n));
    d.bytes += static_cast<uint64_t>(n);
  }
  ::close(fd);
  d.xxh3 = XXH3_64bits_digest(&state);
  return d;
}

Status WriteManifest(const std::filesystem::path& dir, const IndexManifest& m) {
  std::string body = fmt::format(
      "{} v{:x}\ndim={:x}\nelement_bytes={:x}\nm={:x}\nef_construction={:x}\ndb_identity={}\nepoch={:x}\nnext_label={:x}\nlive={:x}\n"
      "payload={}\npayload_bytes={:x}\npayload_xxh3={:x}\n",
      kMagic, m.version, m.dim, m.element_bytes, m.m, m.ef_construction, m.db_identity, m.epoch, m.next_label, m.live, m.payload,
      m.payload_bytes, m.payload_xxh3);
  body += fmt::format("checksum={:x}\n", XXH3_64bits(body.data(), body.size()));
  const std::filesystem::path tmp = dir / kTmpName;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, fmt::format("creating {}", tmp.string()));
  Status s = WriteAll(fd, body, tmp);
  if (s.ok() && ::fsync(fd) != 0) s = Status::FromErrno(errno, fmt::format("fsync {}", tmp.string()));
  ::close(fd);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  const std::filesystem::path final_path = dir / kName;
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Status::FromErrno(err, fmt::format("renaming {} to {}", tmp.string(), final_path.string()));
  }
  return FsyncDirectory(dir);  // the rename is durable only once the directory is
}

Result<IndexManifest> ReadManifest(const std::filesystem::path& dir) {
  const std::filesystem::path file = dir / kName;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(file, ec)) return Status::NotFound(fmt::format("{} does not exist", file.string()));
    return Status::IoError(fmt::format("cannot read {}", file.string()));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t sum_at = text.rfind("checksum=");
  if (sum_at == std::string::npos || text.size() > 4096) return Status::DataLoss(fmt::format("{} is not a manifest", file.string()));
  std::map<std::string, std::string> kv;
  std::istringstream lines(text);
  std::string line, header;
  std::getline(lines, header);
  while (std::getline(lines, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) return Status::DataLoss(fmt::format("{}: bad line", file.string()));
    kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  KVT_ASSIGN_OR_RETURN(uint64_t sum, ParseU64(kv, "checksum"));
  if (sum != XXH3_64bits(text.data(), sum_at)) return Status::DataLoss(fmt::format("{}: checksum mismatch", file.string()));
  if (header != fmt::format("{} v{:x}", kMagic, kManifestVersion)) {
    return Status::DataLoss(fmt::format("{}: unsupported header '{}'", file.string(), header));
  }
  IndexManifest m;
  KVT_ASSIGN_OR_RETURN(uint64_t dim, ParseU64(kv, "dim"));
  KVT_ASSIGN_OR_RETURN(uint64_t element_bytes, ParseU64(kv, "element_bytes"));
  KVT_ASSIGN_OR_RETURN(uint64_t mm, ParseU64(kv, "m"));
  KVT_ASSIGN_OR_RETURN(uint64_t efc, ParseU64(kv, "ef_construction"));
  KVT_ASSIGN_OR_RETURN(m.epoch, ParseU64(kv, "epoch"));
  KVT_ASSIGN_OR_RETURN(m.next_label, ParseU64(kv, "next_label"));
  KVT_ASSIGN_OR_RETURN(m.live, ParseU64(kv, "live"));
  KVT_ASSIGN_OR_RETURN(m.payload_bytes, ParseU64(kv, "payload_bytes"));
  KVT_ASSIGN_OR_RETURN(m.payload_xxh3, ParseU64(kv, "payload_xxh3"));
  m.dim = static_cast<uint32_t>(dim);
  m.m = static_cast<uint32_t>(mm);
  m.element_bytes = static_cast<uint32_t>(element_bytes);
  m.ef_construction = static_cast<uint32_t>(efc);
  m.db_identity = kv["db_identity"];
  m.payload = kv["payload"];
  if (m.payload.empty() || m.payload.find('/') != std::string::npos) {
    return Status::DataLoss(fmt::format("{}: bad payload name", file.string()));
  }
  return m;
}

}  // namespace kvtier::query_store
