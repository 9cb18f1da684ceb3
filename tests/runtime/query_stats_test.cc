// QueryStats (live window moments, sinks skipped) and the offline statistics file: a round
// trip, and every malformed file rejected with a message naming the problem.
#include "kvtier/query_stats.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace kvtier {
namespace {

TEST(QueryStats, MomentsCoverTheMostRecentWindowAndSkipSinks) {
  auto qs = QueryStats::Create({.layers = 2, .q_heads = 1, .head_dim = 2, .window = 3, .sink_tokens = 4});
  ASSERT_TRUE(qs.ok());
  EXPECT_EQ(qs->Moments(LayerId(0)).status().code(), StatusCode::kFailedPrecondition);
  for (uint64_t pos = 0; pos < 4; ++pos) ASSERT_TRUE(qs->Observe(LayerId(0), pos, std::vector<float>{1000, 1000}).ok());
  EXPECT_EQ(qs->samples(LayerId(0)), 0u);  // sinks are never observed
  // Positions 4..8: values 1..5; the window of 3 holds 3, 4, 5.
  for (uint64_t pos = 4; pos < 9; ++pos) {
    const float v = static_cast<float>(pos - 3);
    ASSERT_TRUE(qs->Observe(LayerId(0), pos, std::vector<float>{v, -2 * v}).ok());
  }
  auto m = qs->Moments(LayerId(0));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->samples, 3u);
  EXPECT_FLOAT_EQ(m->mean[0], 4);
  EXPECT_FLOAT_EQ(m->mean[1], -8);
  EXPECT_FLOAT_EQ(m->cov[0], 2.0f / 3);   // var{3,4,5}
  EXPECT_FLOAT_EQ(m->cov[1], -4.0f / 3);  // cov(x, -2x)
  EXPECT_FLOAT_EQ(m->cov[2], -4.0f / 3);
  EXPECT_FLOAT_EQ(m->cov[3], 8.0f / 3);
  EXPECT_EQ(qs->samples(LayerId(1)), 0u);
}

TEST(QueryStats, RejectsBadInputWithoutChangingTheWindow) {
  auto qs = QueryStats::Create({.layers = 1, .q_heads = 2, .head_dim = 2, .sink_tokens = 0});
  ASSERT_TRUE(qs.ok());
  EXPECT_EQ(qs->Observe(LayerId(1), 0, std::vector<float>(4)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qs->Observe(LayerId(0), 0, std::vector<float>(3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qs->Observe(LayerId(0), 0, std::vector<float>{1, 2, NAN, 4}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qs->samples(LayerId(0)), 0u);
  EXPECT_EQ(QueryStats::Create({.layers = 1, .q_heads = 1, .head_dim = 3}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QueryStats::Create({.layers = 1, .q_heads = 1, .head_dim = 2, .window = 0}).status().code(),
            StatusCode::kInvalidArgument);
}

class QueryStatsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/kvtier_qstats_" + std::to_string(::getpid()) + ".bin";
    stats_ = {.layers = 2, .q_heads = 3, .head_dim = 4};
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    stats_.mean.resize(2 * 3 * 4);
    for (float& x : stats_.mean) x = nd(rng);
    stats_.cov.assign(2 * 3 * 16, 0.0f);
    for (size_t m = 0; m < 6; ++m)
      for (size_t i = 0; i < 4; ++i)
        for (size_t j = 0; j <= i; ++j) stats_.cov[m * 16 + i * 4 + j] = stats_.cov[m * 16 + j * 4 + i] = i == j ? 1.5f : 0.25f;
  }
  void TearDown() override { std::remove(path_.c_str()); }

  std::vector<char> Bytes() {
    std::ifstream f(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), {}};
  }
  void Put(const std::vector<char>& b) { std::ofstream(path_, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size())); }
  void ExpectRejected(const std::string& needle) {
    auto r = ReadQueryStatsFile(path_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(needle), std::string_view::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find(path_), std::string_view::npos);
  }

  std::string path_;
  OfflineQueryStats stats_;
};

TEST_F(QueryStatsFileTest, RoundTrips) {
  ASSERT_TRUE(WriteQueryStatsFile(path_, stats_).ok());
  auto r = ReadQueryStatsFile(path_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->mean, stats_.mean);
  EXPECT_EQ(r->cov, stats_.cov);
  auto layer = r->Layer(LayerId(1));
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->mean[0], stats_.mean[12]);
  EXPECT_EQ(r->Layer(LayerId(2)).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(QueryStatsFileTest, RejectsMalformedFilesNamingTheProblem) {
  ASSERT_TRUE(WriteQueryStatsFile(path_, stats_).ok());
  const std::vector<char> good = Bytes();
  auto with = [&](size_t off, const void* v, size_t n) {
    std::vector<char> b = good;
    std::memcpy(b.data() + off, v, n);
    Put(b);
  };
  Put(std::vector<char>(good.begin(), good.begin() + 20));
  ExpectRejected("shorter than header");
  with(0, "KVTQSTAX", 8);
  ExpectRejected("bad magic");
  const uint32_t v2 = 2, odd = 3;
  with(8, &v2, 4);
  ExpectRejected("unsupported version 2");
  with(20, &odd, 4);
  ExpectRejected("bad dimensions");
  const uint64_t payload = 12;
  with(24, &payload, 8);
  ExpectRejected("payload bytes 12");
  std::vector<char> longer = good;
  longer.push_back(0);
  Put(longer);
  ExpectRejected("bytes, expected");
  std::vector<char> flipped = good;
  flipped[40] ^= 1;
  Put(flipped);
  ExpectRejected("checksum mismatch");
}

TEST_F(QueryStatsFileTest, RejectsAsymmetricOrNegativeOrNonFiniteCovariance) {
  OfflineQueryStats s = stats_;
  s.cov[1] = 9;  // (0, 1) != (1, 0)
  ASSERT_TRUE(WriteQueryStatsFile(path_, s).ok());
  ExpectRejected("is not symmetric at (0, 1)");
  s = stats_;
  s.cov[5] = -1;  // diagonal (1, 1)
  ASSERT_TRUE(WriteQueryStatsFile(path_, s).ok());
  ExpectRejected("diagonal 1 = -1");
  s = stats_;
  s.mean[3] = INFINITY;
  ASSERT_TRUE(WriteQueryStatsFile(path_, s).ok());
  ExpectRejected("mean value 3 is not finite");
}

TEST_F(QueryStatsFileTest, MissingFileIsNotFoundAndWrongArraysAreRefused) {
  EXPECT_EQ(ReadQueryStatsFile(path_ + ".none").status().code(), StatusCode::kNotFound);
  OfflineQueryStats s = stats_;
  s.cov.pop_back();
  EXPECT_EQ(WriteQueryStatsFile(path_, s).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
