// LruPolicy: least recently used first; among equals, a block with a clean lower copy first
// (kvtier/eviction_policy.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "kvtier/eviction_policy.h"

namespace kvtier {
namespace {

// A candidate whose identity is `id` (in the chain's first byte and the layer).
EvictionCandidate Candidate(uint32_t id, uint64_t last_access, bool has_lower_copy, uint32_t access_count = 0) {
  EvictionCandidate c;
  c.key.chain.bytes[0] = static_cast<uint8_t>(id);
  c.key.layer = LayerId{id};
  c.last_access = Tick{last_access};
  c.access_count = access_count;
  c.has_lower_copy = has_lower_copy;
  return c;
}

std::vector<uint32_t> Ids(const std::vector<EvictionCandidate>& cs) {
  std::vector<uint32_t> ids;
  for (const EvictionCandidate& c : cs) ids.push_back(c.key.layer.value());
  return ids;
}

// The policy's order: older first, then has_lower_copy first. Ties beyond that are unordered.
auto Rank(const EvictionCandidate& c) { return std::make_tuple(c.last_access, !c.has_lower_copy); }

TEST(LruPolicyTest, NameIsLru) {
  EXPECT_EQ(LruPolicy().name(), "lru");
  EXPECT_EQ(MakeLruPolicy()->name(), "lru");
}

TEST(LruPolicyTest, OldestLastAccessComesFirst) {
  std::vector<EvictionCandidate> cs = {Candidate(1, 300, false), Candidate(2, 100, false), Candidate(3, 200, false),
                                       Candidate(4, 50, false)};
  LruPolicy().ChooseVictims(cs, 2);
  EXPECT_EQ(cs[0].key.layer.value(), 4u);
  EXPECT_EQ(cs[1].key.layer.value(), 2u);
}

TEST(LruPolicyTest, AccessCountDoesNotOverrideRecency) {
  std::vector<EvictionCandidate> cs = {Candidate(1, 100, false, /*access_count=*/1000), Candidate(2, 200, false, 0)};
  LruPolicy().ChooseVictims(cs, 1);
  EXPECT_EQ(cs[0].key.layer.value(), 1u);
}

TEST(LruPolicyTest, TiesPreferTheBlockWithALowerCopy) {
  for (bool clean_first : {false, true}) {
    std::vector<EvictionCandidate> cs = {Candidate(1, 100, !clean_first), Candidate(2, 100, clean_first),
                                         Candidate(3, 500, true)};
    LruPolicy().ChooseVictims(cs, 1);
    EXPECT_TRUE(cs[0].has_lower_copy);
    EXPECT_EQ(cs[0].last_access, Tick{100});
  }
}

TEST(LruPolicyTest, ALowerCopyDoesNotBeatAnOlderBlock) {
  std::vector<EvictionCandidate> cs = {Candidate(1, 200, true), Candidate(2, 100, false)};
  LruPolicy().ChooseVictims(cs, 1);
  EXPECT_EQ(cs[0].key.layer.value(), 2u);
}

TEST(LruPolicyTest, CountAtLeastSizeSortsEverything) {
  for (size_t extra : {size_t{0}, size_t{1}, size_t{1000}}) {
    std::vector<EvictionCandidate> cs = {Candidate(1, 30, false), Candidate(2, 10, false), Candidate(3, 20, true),
                                         Candidate(4, 20, false), Candidate(5, 5, false)};
    LruPolicy().ChooseVictims(cs, cs.size() + extra);
    EXPECT_EQ(Ids(cs), (std::vector<uint32_t>{5, 2, 3, 4, 1})) << "count = size + " << extra;
  }
}

TEST(LruPolicyTest, CountZeroLeavesACandidatePermutationAndDoesNotCrash) {
  std::vector<EvictionCandidate> cs = {Candidate(1, 30, false), Candidate(2, 10, true)};
  LruPolicy().ChooseVictims(cs, 0);
  std::vector<uint32_t> ids = Ids(cs);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<uint32_t>{1, 2}));

  std::vector<EvictionCandidate> none;
  LruPolicy().ChooseVictims(none, 0);
  LruPolicy().ChooseVictims(none, 5);
  EXPECT_TRUE(none.empty());
}

TEST(LruPolicyTest, RandomizedPrefixIsTheBestVictimsInOrder) {
  std::mt19937 rng(7);
  LruPolicy policy;
  for (int iter = 0; iter < 500; ++iter) {
    const size_t n = std::uniform_int_distribution<size_t>(0, 40)(rng);
    std::vector<EvictionCandidate> cs;
    for (size_t i = 0; i < n; ++i) {
      // A narrow time range so that ties (and the has_lower_copy tiebreak) are frequent.
      cs.push_back(Candidate(static_cast<uint32_t>(i), std::uniform_int_distribution<uint64_t>(1, 8)(rng),
                             rng() % 2 == 0, static_cast<uint32_t>(rng() % 100)));
    }
    const size_t count = std::uniform_int_distribution<size_t>(0, n + 2)(rng);
    const std::vector<EvictionCandidate> original = cs;
    policy.ChooseVictims(cs, count);

    // A permutation of the input.
    std::vector<uint32_t> before = Ids(original), after = Ids(cs);
    std::sort(before.begin(), before.end());
    std::sort(after.begin(), after.end());
    ASSERT_EQ(before, after) << "iteration " << iter;

    // The first min(count, n) are in rank order, and none of the rest ranks better.
    const size_t k = std::min(count, n);
    for (size_t i = 1; i < k; ++i) ASSERT_LE(Rank(cs[i - 1]), Rank(cs[i])) << "iteration " << iter;
    for (size_t i = k; i < n && k > 0; ++i) ASSERT_LE(Rank(cs[k - 1]), Rank(cs[i])) << "iteration " << iter;
  }
}

}  // namespace
}  // namespace kvtier
