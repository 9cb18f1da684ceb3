// Moments are computed from the window when asked (every refresh, i.e. every few hundred
// decode steps), not updated per query: Observe stays one copy on the decode path, and the
// result is exact for the window (no drift from incremental downdates).
#include "kvtier/query_stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

namespace kvtier {

Status QueryStatsOptions::Validate() const {
  if (layers == 0 || q_heads == 0 || head_dim == 0) {
    return Status::InvalidArgument(
        fmt::format("query stats: layers={} q_heads={} head_dim={} (all must be >= 1)", layers, q_heads, head_dim));
  }
  if (head_dim % 2 != 0 || head_dim > 1024) {
    return Status::InvalidArgument(fmt::format("query stats: head_dim={} (must be even and <= 1024)", head_dim));
  }
  if (window == 0) return Status::InvalidArgument("query stats: window = 0 (must be >= 1)");
  return Status::Ok();
}

Result<QueryStats> QueryStats::Create(QueryStatsOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return QueryStats(options);
}

QueryStats::QueryStats(QueryStatsOptions options)
    : options_(options),
      ring_(options.layers, std::vector<float>(size_t{options.window} * options.q_heads * options.head_dim)),
      seen_(options.layers, 0) {}

Status QueryStats::Observe(LayerId layer, uint64_t position, std::span<const float> query) {
  const size_t width = size_t{options_.q_heads} * options_.head_dim;
  if (layer.value() >= options_.layers) {
    return Status::InvalidArgument(fmt::format("query stats: layer {} of {}", layer.value(), options_.layers));
  }
  if (query.size() != width) {
    return Status::InvalidArgument(fmt::format("query stats: {} floats, expected q_heads*head_dim = {}", query.size(), width));
  }
  if (position < options_.sink_tokens) return Status::Ok();
  for (float x : query) {
    if (!std::isfinite(x)) return Status::InvalidArgument("query stats: a query value is not finite");
  }
  uint64_t& seen = seen_[layer.value()];
  std::copy(query.begin(), query.end(), ring_[layer.value()].begin() + static_cast<ptrdiff_t>((seen % options_.window) * width));
  ++seen;
  return Status::Ok();
}

uint32_t QueryStats::samples(LayerId layer) const {
  if (layer.value() >= options_.layers) return 0;
  return static_cast<uint32_t>(std::min<uint64_t>(seen_[layer.value()], options_.window));
}

Result<QueryMoments> QueryStats::Moments(LayerId layer) const {
  if (layer.value() >= options_.layers) {
    return Status::InvalidArgument(fmt::format("query stats: layer {} of {}", layer.value(), options_.layers));
  }
  const uint32_t n = samples(layer);
  if (n == 0) return Status::FailedPrecondition(fmt::format("query stats: no query observed in layer {}", layer.value()));
  const size_t h = options_.q_heads, d = options_.head_dim;
  const std::vector<float>& ring = ring_[layer.value()];
  QueryMoments m{options_.q_heads, options_.head_dim, n, std::vector<float>(h * d), std::vector<float>(h * d * d)};
  std::vector<double> mu(d), c(d * d), x(d);
  for (size_t head = 0; head < h; ++head) {
    std::fill(mu.begin(), mu.end(), 0.0);
    std::fill(c.begin(), c.end(), 0.0);
    for (uint32_t s = 0; s < n; ++s) {
      for (size_t i = 0; i < d; ++i) mu[i] += ring[(s * h + head) * d + i];
    }
    for (size_t i = 0; i < d; ++i) mu[i] /= n;
    for (uint32_t s = 0; s < n; ++s) {
      for (size_t i = 0; i < d; ++i) x[i] = ring[(s * h + head) * d + i] - mu[i];
      for (size_t i = 0; i < d; ++i) {
        for (size_t j = i; j < d; ++j) c[i * d + j] += x[i] * x[j];
      }
    }
    for (size_t i = 0; i < d; ++i) {
      m.mean[head * d + i] = static_cast<float>(mu[i]);
      for (size_t j = i; j < d; ++j) {
        const auto v = static_cast<float>(c[i * d + j] / n);
        m.cov[(head * d + i) * d + j] = v;
        m.cov[(head * d + j) * d + i] = v;
      }
    }
  }
  return m;
}

Result<QueryMoments> OfflineQueryStats::Layer(LayerId layer) const {
  if (layer.value() >= layers) return Status::InvalidArgument(fmt::format("offline query stats: layer {} of {}", layer.value(), layers));
  const size_t hd = size_t{q_heads} * head_dim, hdd = hd * head_dim;
  QueryMoments m{q_heads, head_dim, 0, {}, {}};
  m.mean.assign(mean.begin() + static_cast<ptrdiff_t>(layer.value() * hd), mean.begin() + static_cast<ptrdiff_t>((layer.value() + 1) * hd));
  m.cov.assign(cov.begin() + static_cast<ptrdiff_t>(layer.value() * hdd), cov.begin() + static_cast<ptrdiff_t>((layer.value() + 1) * hdd));
  return m;
}

namespace {

constexpr char kMagic[8] = {'K', 'V', 'T', 'Q', 'S', 'T', 'A', 'T'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32;

uint64_t Fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

struct FileCloser {
  void operator()(FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

template <class T>
T Load(const std::vector<char>& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

}  // namespace

Result<OfflineQueryStats> ReadQueryStatsFile(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) return Status::FromErrno(errno, fmt::format("opening query stats file {}", path));
  std::vector<char> b;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f.get())) > 0;) b.insert(b.end(), buf, buf + n);
  if (std::ferror(f.get())) return Status::IoError(fmt::format("reading query stats file {}", path));
  auto bad = [&](std::string what) { return Status::DataLoss(fmt::format("query stats file {}: {}", path, what)); };
  if (b.size() < kHeaderBytes + 8) return bad(fmt::format("{} bytes, shorter than header + checksum", b.size()));
  if (std::memcmp(b.data(), kMagic, 8) != 0) return bad("bad magic (expected \"KVTQSTAT\")");
  OfflineQueryStats s;
  const auto version = Load<uint32_t>(b, 8);
  if (version != kVersion) return bad(fmt::format("unsupported version {} (this build reads {})", version, kVersion));
  s.layers = Load<uint32_t>(b, 12);
  s.q_heads = Load<uint32_t>(b, 16);
  s.head_dim = Load<uint32_t>(b, 20);
  const auto payload = Load<uint64_t>(b, 24);
  if (s.layers == 0 || s.q_heads == 0 || s.head_dim == 0 || s.head_dim % 2 != 0 || s.head_dim > 1024 ||
      s.layers > 4096 || s.q_heads > 4096) {
    return bad(fmt::format("bad dimensions layers={} q_heads={} head_dim={}", s.layers, s.q_heads, s.head_dim));
  }
  const uint64_t hd = uint64_t{s.layers} * s.q_heads * s.head_dim;
  const uint64_t want = 4 * hd * (1 + uint64_t{s.head_dim});
  if (payload != want) return bad(fmt::format("payload bytes {} in the header, the dimensions need {}", payload, want));
  if (b.size() != kHeaderBytes + want + 8) {
    return bad(fmt::format("{} bytes, expected {} (header + payload + checksum)", b.size(), kHeaderBytes + want + 8));
  }
  if (Fnv1a(b.data() + kHeaderBytes, want) != Load<uint64_t>(b, kHeaderBytes + want)) return bad("checksum mismatch");
  s.mean.resize(hd);
  s.cov.resize(hd * s.head_dim);
  std::memcpy(s.mean.data(), b.data() + kHeaderBytes, 4 * hd);
  std::memcpy(s.cov.data(), b.data() + kHeaderBytes + 4 * hd, 4 * hd * s.head_dim);
  for (size_t i = 0; i < s.mean.size(); ++i) {
    if (!std::isfinite(s.mean[i])) return bad(fmt::format("mean value {} is not finite", i));
  }
  const size_t d = s.head_dim;
  for (size_t m = 0; m < size_t{s.layers} * s.q_heads; ++m) {
    const float* c = &s.cov[m * d * d];
    for (size_t i = 0; i < d; ++i) {
      if (!(c[i * d + i] >= 0)) return bad(fmt::format("covariance {} has diagonal {} = {} (must be >= 0)", m, i, c[i * d + i]));
      for (size_t j = 0; j < d; ++j) {
        const float x = c[i * d + j], y = c[j * d + i];
        if (!std::isfinite(x)) return bad(fmt::format("covariance {} entry ({}, {}) is not finite", m, i, j));
        if (std::abs(x - y) > 1e-4f * (1 + std::max(std::abs(x), std::abs(y)))) {
          return bad(fmt::format("covariance {} (layer {}, head {}) is not symmetric at ({}, {})", m, m / s.q_heads,
                                 m % s.q_heads, i, j));
        }
      }
    }
  }
  return s;
}

Status WriteQueryStatsFile(const std::string& path, const OfflineQueryStats& s) {
  const uint64_t hd = uint64_t{s.layers} * s.q_heads * s.head_dim;
  if (s.mean.size() != hd || s.cov.size() != hd * s.head_dim) {
    return Status::InvalidArgument(fmt::format("query stats: {} mean / {} cov floats for layers={} q_heads={} head_dim={}",
                                               s.mean.size(), s.cov.size(), s.layers, s.q_heads, s.head_dim));
  }
  std::vector<char> b(kHeaderBytes);
  std::memcpy(b.data(), kMagic, 8);
  const uint64_t payload = 4 * hd * (1 + uint64_t{s.head_dim});
  std::memcpy(b.data() + 8, &kVersion, 4);
  std::memcpy(b.data() + 12, &s.layers, 4);
  std::memcpy(b.data() + 16, &s.q_heads, 4);
  std::memcpy(b.data() + 20, &s.head_dim, 4);
  std::memcpy(b.data() + 24, &payload, 8);
  const auto* mean = reinterpret_cast<const char*>(s.mean.data());
  const auto* cov = reinterpret_cast<const char*>(s.cov.data());
  b.insert(b.end(), mean, mean + 4 * hd);
  b.insert(b.end(), cov, cov + 4 * hd * s.head_dim);
  const uint64_t sum = Fnv1a(b.data() + kHeaderBytes, payload);
  b.insert(b.end(), reinterpret_cast<const char*>(&sum), reinterpret_cast<const char*>(&sum) + 8);
  File f(std::fopen(path.c_str(), "wb"));
  if (!f) return Status::FromErrno(errno, fmt::format("creating query stats file {}", path));
  if (std::fwrite(b.data(), 1, b.size(), f.get()) != b.size() || std::fflush(f.get()) != 0) {
    return Status::FromErrno(errno, fmt::format("writing query stats file {}", path));
  }
  return Status::Ok();
}

}  // namespace kvtier
