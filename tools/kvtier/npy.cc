// The header is a Python dict literal; we parse only the three keys NumPy writes
// ('descr', 'fortran_order', 'shape') and refuse anything we do not understand rather than
// guessing.
#include "npy.h"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

namespace kvtier::cli {
namespace {

struct FileCloser {
  void operator()(FILE* f) const noexcept { std::fclose(f); }
};

// The value text after `'key':` in the header, up to the next top-level comma or brace.
bool FindValue(std::string_view header, std::string_view key, std::string_view* value) {
  const std::string quoted = fmt::format("'{}'", key);
  size_t at = header.find(quoted);
  if (at == std::string_view::npos) return false;
  at = header.find(':', at + quoted.size());
  if (at == std::string_view::npos) return false;
  size_t begin = at + 1;
  while (begin < header.size() && header[begin] == ' ') ++begin;
  size_t end = begin;
  int depth = 0;
  while (end < header.size()) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    ++end;
  }
  *value = header.substr(begin, end - begin);
  return true;
}

}  // namespace

Result<NpyArray> ReadNpyFloat32(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) return Status::FromErrno(errno, fmt::format("opening {}", path));
  std::vector<char> b;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f.get())) > 0;) b.insert(b.end(), buf, buf + n);
  if (std::ferror(f.get())) return Status::IoError(fmt::format("reading {}", path));
  auto bad = [&](const std::string& what) { return Status::InvalidArgument(fmt::format("{}: {}", path, what)); };
  if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) return bad("not an .npy file (no \\x93NUMPY magic)");
  const auto major = static_cast<uint8_t>(b[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    uint16_t n;
    std::memcpy(&n, b.data() + 8, 2);
    header_len = n;
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) return bad("truncated header");
    uint32_t n;
    std::memcpy(&n, b.data() + 8, 4);
    header_len = n;
    offset = 12;
  } else {
    return bad(fmt::format("unsupported .npy version {}.{}", major, static_cast<int>(b[7])));
  }
  if (offset + header_len > b.size()) return bad("truncated header");
  const std::string_view header(b.data() + offset, header_len);
  std::string_view descr, fortran, shape;
  if (!FindValue(header, "descr", &descr) || !FindValue(header, "fortran_order", &fortran) ||
      !FindValue(header, "shape", &shape)) {
    return bad("malformed header (needs 'descr', 'fortran_order' and 'shape')");
  }
  if (descr != "'<f4'") return bad(fmt::format("dtype {} is not float32 little-endian ('<f4'); convert with .astype('<f4')", descr));
  if (fortran != "False") return bad("Fortran order is not supported (save a C-contiguous array)");
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') return bad(fmt::format("malformed shape {}", shape));
  NpyArray a;
  std::string_view dims = shape.substr(1, shape.size() - 2);
  while (!dims.empty()) {
    while (!dims.empty() && (dims.front() == ' ' || dims.front() == ',')) dims.remove_prefix(1);
    if (dims.empty()) break;
    uint64_t v = 0;
    size_t k = 0;
    while (k < dims.size() && dims[k] >= '0' && dims[k] <= '9') {
      if (v > (uint64_t{1} << 40)) return bad(fmt::format("shape {} is too large", shape));
      v = v * 10 + static_cast<uint64_t>(dims[k] - '0');
      ++k;
    }
    if (k == 0) return bad(fmt::format("malformed shape {}", shape));
    a.shape.push_back(v);
    dims.remove_prefix(k);
  }
  uint64_t count = 1;
  for (uint64_t d : a.shape) {
    if (d != 0 && count > (uint64_t{1} << 40) / d) return bad(fmt::format("shape {} is too large", shape));
    count *= d;
  }
  const size_t data_bytes = b.size() - offset - header_len;
  if (data_bytes != count * 4) {
    return bad(fmt::format("{} data bytes, the shape {} needs {}", data_bytes, shape, count * 4));
  }
  a.data.resize(count);
  std::memcpy(a.data.data(), b.data() + offset + header_len, count * 4);
  for (size_t i = 0; i < a.data.size(); ++i) {
    if (!std::isfinite(a.data[i])) return bad(fmt::format("value {} is not finite", i));
  }
  return a;
}

Status WriteNpyFloat32(const std::string& path, const NpyArray& a) {
  std::string shape = "(";
  for (size_t i = 0; i < a.shape.size(); ++i) shape += fmt::format("{}{}", i ? ", " : "", a.shape[i]);
  shape += a.shape.size() == 1 ? ",)" : ")";
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}", shape);
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "wb"));
  if (!f) return Status::FromErrno(errno, fmt::format("creating {}", path));
  const auto len = static_cast<uint16_t>(header.size());
  const bool ok = std::fwrite("\x93NUMPY\x01\x00", 1, 8, f.get()) == 8 && std::fwrite(&len, 2, 1, f.get()) == 1 &&
                  std::fwrite(header.data(), 1, header.size(), f.get()) == header.size() &&
                  std::fwrite(a.data.data(), 4, a.data.size(), f.get()) == a.data.size() && std::fflush(f.get()) == 0;
  if (!ok) return Status::FromErrno(errno, fmt::format("writing {}", path));
  return Status::Ok();
}

}  // namespace kvtier::cli
