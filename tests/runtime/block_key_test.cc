// Block identity (kvtier/block_key.h). The chain hash is a security boundary: a block is
// served to whoever presents the same key, so every input that changes KV bytes, and the
// tenant, must change the key, and no two different inputs may encode alike.
#include "kvtier/block_key.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <span>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

namespace kvtier {

// Readable failure messages (found by ADL, so outside the unnamed namespace).
void PrintTo(const ChainHash& h, std::ostream* os) { *os << h.ToHex(); }
void PrintTo(const BlockKey& k, std::ostream* os) { *os << k.chain.ToHex() << "/L" << k.layer.value(); }

namespace {

NamespaceSpec BaseSpec() {
  NamespaceSpec ns;
  ns.model_fingerprint = "meta-llama/Llama-3-8B@8cde5ca";
  ns.tokenizer_id = "llama3";
  ns.geometry = KvGeometry::Llama3_8B();
  ns.kv_codec = "none";
  ns.rope.theta = 500000.0;
  ns.rope.scaling = "";
  ns.tp_rank = 0;
  ns.tp_size = 2;
  ns.pp_rank = 0;
  ns.pp_size = 2;
  ns.lora_id = "";
  ns.format_version = 1;
  return ns;
}

TenantSecret TenantA() { return TenantSecret::FromPassphrase("tenant-a"); }
TenantSecret TenantB() { return TenantSecret::FromPassphrase("tenant-b"); }

KeyDeriver Derive(const TenantSecret& tenant, const NamespaceSpec& ns) {
  Result<KeyDeriver> d = KeyDeriver::Create(tenant, ns);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return std::move(d).value();  // throws (and the test fails) if it did not validate
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int32_t> dist(0, 128255);  // a Llama-3 vocabulary
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = dist(rng);
  return tokens;
}

std::vector<int32_t> Iota(size_t n) {
  std::vector<int32_t> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(i);
  return tokens;
}

// True when no hash of `a` is a hash of `b`.
bool Disjoint(const std::vector<ChainHash>& a, const std::vector<ChainHash>& b) {
  const std::set<ChainHash> sb(b.begin(), b.end());
  for (const ChainHash& h : a) {
    if (sb.contains(h)) return false;
  }
  return true;
}

ChainHash FromHex(std::string_view hex) {
  ChainHash h;
  auto nibble = [](char c) { return static_cast<uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10); };
  for (size_t i = 0; i < h.bytes.size(); ++i) {
    h.bytes[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  }
  return h;
}

// ---------------------------------------------------------------------------------------
// Known answer: keyed BLAKE2b-256 over tag(u16 LE) | len(u64 LE) | bytes fields, computed
// independently (Python hashlib.blake2b(key=secret, digest_size=32)). Pins the documented
// encoding: a silent change would orphan every persisted block, or worse, make the code
// disagree with its own format documentation.

TEST(BlockKeyTest, MatchesIndependentlyComputedKeyedBlake2b) {
  const TenantSecret tenant = TenantA();
  EXPECT_EQ(ChainHash{tenant.bytes}.ToHex(), "b55ed4780946b78299f0533516a17916dbb94404c10e17f36071e2ff1fed9f60");

  NamespaceSpec ns = BaseSpec();
  ns.tp_size = 1;
  ns.pp_size = 1;
  const KeyDeriver d = Derive(tenant, ns);
  EXPECT_EQ(d.namespace_digest().ToHex(), "7bb984a3c92e1b3820ee13f68e6f2cdfa18c19088e5fea0e07f4ca192fe35080");

  std::vector<int32_t> tokens = Iota(32);
  tokens[5] = -7;  // negative ids hash as their two's-complement little-endian bytes
  tokens[20] = 128255;
  const std::vector<ChainHash> chain = d.Chain(tokens);
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain[0], FromHex("ceaca2d88ce67adb11fcaf2c66f618d7bb7dd86f37ea7f55c9211a55d9c652dc"));
  EXPECT_EQ(chain[1], FromHex("4a3ce7b606501759e1951a1fa44d7ef351098bf60b91d38819c0b6482c1a5f78"));
}

// ---------------------------------------------------------------------------------------
// Determinism (positive controls)

TEST(BlockKeyTest, SameTenantAndTokensGiveEqualKeysAcrossDerivers) {
  std::mt19937 rng(1);
  const KeyDeriver a = Derive(TenantA(), BaseSpec());
  const KeyDeriver b = Derive(TenantSecret::FromPassphrase("tenant-a"), BaseSpec());
  EXPECT_EQ(a.namespace_digest(), b.namespace_digest());
  for (int iter = 0; iter < 200; ++iter) {
    const std::vector<int32_t> tokens = RandomTokens(rng, 16 * (1 + iter % 5));
    const std::vector<ChainHash> ca = a.Chain(tokens);
    ASSERT_EQ(ca, b.Chain(tokens));
    ASSERT_EQ(a.Keys(ca), b.Keys(b.Chain(tokens)));
  }
}

TEST(BlockKeyTest, DeriverCopiesAgree) {
  const KeyDeriver a = Derive(TenantA(), BaseSpec());
  const KeyDeriver copy = a;  // NOLINT(performance-unnecessary-copy-initialization)
  const std::vector<int32_t> tokens = Iota(64);
  EXPECT_EQ(a.Chain(tokens), copy.Chain(tokens));
}

TEST(BlockKeyTest, AccessorsReflectTheGeometry) {
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  EXPECT_EQ(d.block_tokens(), 16u);
  EXPECT_EQ(d.layers(), 32u);
}

// ---------------------------------------------------------------------------------------
// Tenant isolation

TEST(BlockKeyTest, TwoTenantsWithIdenticalTokensNeverShareAKey) {
  std::mt19937 rng(2);
  const NamespaceSpec ns = BaseSpec();
  const KeyDeriver a = Derive(TenantA(), ns);
  const KeyDeriver b = Derive(TenantB(), ns);
  EXPECT_NE(a.namespace_digest(), b.namespace_digest());
  for (int iter = 0; iter < 300; ++iter) {
    const std::vector<int32_t> tokens = RandomTokens(rng, 16 * (1 + iter % 6));
    const std::vector<ChainHash> ca = a.Chain(tokens);
    const std::vector<ChainHash> cb = b.Chain(tokens);
    ASSERT_EQ(ca.size(), cb.size());
    ASSERT_TRUE(Disjoint(ca, cb)) << "iteration " << iter;
    const std::vector<BlockKey> ka = a.Keys(ca);
    const std::vector<BlockKey> kb = b.Keys(cb);
    const std::set<BlockKey> sb(kb.begin(), kb.end());
    for (const BlockKey& k : ka) ASSERT_FALSE(sb.contains(k)) << k.ToString();
  }
}

TEST(BlockKeyTest, RandomTenantsNeverShareAKey) {
  std::mt19937 rng(3);
  const std::vector<int32_t> tokens = RandomTokens(rng, 48);
  std::set<ChainHash> seen;
  for (int i = 0; i < 200; ++i) {
    const KeyDeriver d = Derive(TenantSecret::Random(), BaseSpec());
    for (const ChainHash& h : d.Chain(tokens)) ASSERT_TRUE(seen.insert(h).second);
  }
}

TEST(BlockKeyTest, FlippingAnySingleBitOfTheTenantSecretChangesEveryChain) {
  const std::vector<int32_t> tokens = Iota(48);
  const TenantSecret base = TenantA();
  const std::vector<ChainHash> base_chain = Derive(base, BaseSpec()).Chain(tokens);
  for (size_t byte = 0; byte < base.bytes.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      TenantSecret t = base;
      t.bytes[byte] = static_cast<uint8_t>(t.bytes[byte] ^ (1u << bit));
      const KeyDeriver d = Derive(t, BaseSpec());
      ASSERT_TRUE(Disjoint(d.Chain(tokens), base_chain)) << "byte " << byte << " bit " << bit;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Every namespace field is in the key

struct Mutation {
  std::string name;
  std::function<void(NamespaceSpec&)> apply;
};

std::vector<Mutation> SingleFieldMutations() {
  return {
      {"model_fingerprint", [](NamespaceSpec& n) { n.model_fingerprint = "meta-llama/Llama-3-8B@0000000"; }},
      {"model_fingerprint_suffix", [](NamespaceSpec& n) { n.model_fingerprint += " "; }},
      {"tokenizer_id", [](NamespaceSpec& n) { n.tokenizer_id = "llama3-chat"; }},
      {"tokenizer_id_empty", [](NamespaceSpec& n) { n.tokenizer_id.clear(); }},
      {"layers", [](NamespaceSpec& n) { n.geometry.layers = 31; }},
      {"kv_heads", [](NamespaceSpec& n) { n.geometry.kv_heads = 4; }},
      {"head_dim", [](NamespaceSpec& n) { n.geometry.head_dim = 64; }},
      {"block_tokens", [](NamespaceSpec& n) { n.geometry.block_tokens = 8; }},
      // Same element size as bf16: only the dtype field can tell them apart.
      {"dtype", [](NamespaceSpec& n) { n.geometry.dtype = DType::kF16; }},
      {"dtype_fp8", [](NamespaceSpec& n) { n.geometry.dtype = DType::kFp8E4M3; }},
      {"kv_codec", [](NamespaceSpec& n) { n.kv_codec = "fp8-per-token"; }},
      {"kv_codec_empty", [](NamespaceSpec& n) { n.kv_codec.clear(); }},
      {"rope_theta", [](NamespaceSpec& n) { n.rope.theta = 10000.0; }},
      {"rope_theta_one_ulp", [](NamespaceSpec& n) { n.rope.theta = std::nextafter(n.rope.theta, 1e9); }},
      {"rope_scaling", [](NamespaceSpec& n) { n.rope.scaling = "llama3:factor=8,low=1,high=4,orig=8192"; }},
      {"tp_rank", [](NamespaceSpec& n) { n.tp_rank = 1; }},
      {"tp_size", [](NamespaceSpec& n) { n.tp_size = 4; }},
      {"pp_rank", [](NamespaceSpec& n) { n.pp_rank = 1; }},
      {"pp_size", [](NamespaceSpec& n) { n.pp_size = 3; }},
      {"lora_id", [](NamespaceSpec& n) { n.lora_id = "adapter-7"; }},
      {"format_version", [](NamespaceSpec& n) { n.format_version = 2; }},
  };
}

TEST(BlockKeyTest, ChangingAnySingleNamespaceFieldChangesEveryChain) {
  std::mt19937 rng(4);
  const std::vector<int32_t> tokens = RandomTokens(rng, 16 * 6);
  const KeyDeriver base = Derive(TenantA(), BaseSpec());
  const std::vector<ChainHash> base_chain = base.Chain(tokens);
  ASSERT_EQ(base_chain.size(), 6u);
  for (const Mutation& m : SingleFieldMutations()) {
    SCOPED_TRACE(m.name);
    NamespaceSpec ns = BaseSpec();
    m.apply(ns);
    ASSERT_TRUE(ns.Validate().ok()) << ns.Validate().ToString();
    const KeyDeriver d = Derive(TenantA(), ns);
    EXPECT_NE(d.namespace_digest(), base.namespace_digest());
    const std::vector<ChainHash> chain = d.Chain(tokens);
    ASSERT_FALSE(chain.empty());
    EXPECT_TRUE(Disjoint(chain, base_chain));
  }
}

TEST(BlockKeyTest, EverySingleFieldMutationGivesADistinctNamespace) {
  std::set<ChainHash> digests = {Derive(TenantA(), BaseSpec()).namespace_digest()};
  for (const Mutation& m : SingleFieldMutations()) {
    NamespaceSpec ns = BaseSpec();
    m.apply(ns);
    EXPECT_TRUE(digests.insert(Derive(TenantA(), ns).namespace_digest()).second) << m.name;
  }
}

TEST(BlockKeyTest, RandomNamespacesHaveDistinctDigests) {
  // Random small perturbations of many fields at once: no two distinct specs collide.
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> small(0, 3);
  std::set<std::string> specs;
  std::set<ChainHash> digests;
  for (int iter = 0; iter < 400; ++iter) {
    NamespaceSpec ns = BaseSpec();
    ns.model_fingerprint = std::string(1 + small(rng), 'm');
    ns.tokenizer_id = std::string(small(rng), 't');
    ns.kv_codec = std::string(small(rng), 'm');
    ns.lora_id = std::string(small(rng), 't');
    ns.rope.scaling = std::string(small(rng), 'm');
    ns.tp_size = 1 + small(rng);
    ns.tp_rank = static_cast<uint32_t>(small(rng)) % ns.tp_size;
    ns.format_version = 1 + small(rng);
    const std::string repr = ns.model_fingerprint + "|" + ns.tokenizer_id + "|" + ns.kv_codec + "|" + ns.lora_id +
                             "|" + ns.rope.scaling + "|" + std::to_string(ns.tp_size) + "|" +
                             std::to_string(ns.tp_rank) + "|" + std::to_string(ns.format_version);
    const ChainHash digest = Derive(TenantA(), ns).namespace_digest();
    if (specs.insert(repr).second) {
      EXPECT_TRUE(digests.insert(digest).second) << "collision for " << repr;
    } else {
      EXPECT_TRUE(digests.contains(digest)) << "same spec, different digest: " << repr;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Field boundaries cannot be moved

ChainHash DigestOf(const std::function<void(NamespaceSpec&)>& edit) {
  NamespaceSpec ns = BaseSpec();
  edit(ns);
  return Derive(TenantA(), ns).namespace_digest();
}

TEST(BlockKeyTest, MovingBytesFromModelToTokenizerChangesTheDigest) {
  const ChainHash a = DigestOf([](NamespaceSpec& n) {
    n.model_fingerprint = "ab";
    n.tokenizer_id = "c";
  });
  const ChainHash b = DigestOf([](NamespaceSpec& n) {
    n.model_fingerprint = "a";
    n.tokenizer_id = "bc";
  });
  EXPECT_NE(a, b);
}

TEST(BlockKeyTest, SwappingLoraAndCodecChangesTheDigest) {
  const ChainHash a = DigestOf([](NamespaceSpec& n) {
    n.kv_codec = "none";
    n.lora_id = "fp8";
  });
  const ChainHash b = DigestOf([](NamespaceSpec& n) {
    n.kv_codec = "fp8";
    n.lora_id = "none";
  });
  EXPECT_NE(a, b);
  const ChainHash c = DigestOf([](NamespaceSpec& n) {
    n.kv_codec = "x";
    n.lora_id = "";
  });
  const ChainHash d = DigestOf([](NamespaceSpec& n) {
    n.kv_codec = "";
    n.lora_id = "x";
  });
  EXPECT_NE(c, d);
}

TEST(BlockKeyTest, EmptyAndNonEmptyStringsNeverCollide) {
  // The same bytes placed in different string fields, or split across neighbours.
  const ChainHash in_tokenizer = DigestOf([](NamespaceSpec& n) {
    n.tokenizer_id = "x";
    n.kv_codec = "";
  });
  const ChainHash in_codec = DigestOf([](NamespaceSpec& n) {
    n.tokenizer_id = "";
    n.kv_codec = "x";
  });
  const ChainHash in_scaling = DigestOf([](NamespaceSpec& n) {
    n.tokenizer_id = "";
    n.kv_codec = "";
    n.rope.scaling = "x";
  });
  const ChainHash none = DigestOf([](NamespaceSpec& n) {
    n.tokenizer_id = "";
    n.kv_codec = "";
  });
  const std::set<ChainHash> all = {in_tokenizer, in_codec, in_scaling, none};
  EXPECT_EQ(all.size(), 4u);
}

TEST(BlockKeyTest, TrailingNulByteIsPartOfTheField) {
  const ChainHash plain = DigestOf([](NamespaceSpec& n) { n.model_fingerprint = "m"; });
  const ChainHash with_nul = DigestOf([](NamespaceSpec& n) { n.model_fingerprint = std::string("m\0", 2); });
  const ChainHash nul_moved = DigestOf([](NamespaceSpec& n) {
    n.model_fingerprint = "m";
    n.tokenizer_id = std::string("\0", 1) + n.tokenizer_id;
  });
  EXPECT_NE(plain, with_nul);
  EXPECT_NE(with_nul, nul_moved);
  EXPECT_NE(plain, nul_moved);
}

TEST(BlockKeyTest, SwappingTpAndPpValuesChangesTheDigest) {
  const ChainHash a = DigestOf([](NamespaceSpec& n) {
    n.tp_rank = 1;
    n.pp_rank = 0;
  });
  const ChainHash b = DigestOf([](NamespaceSpec& n) {
    n.tp_rank = 0;
    n.pp_rank = 1;
  });
  EXPECT_NE(a, b);
  const ChainHash c = DigestOf([](NamespaceSpec& n) {
    n.tp_size = 2;
    n.pp_size = 4;
  });
  const ChainHash d = DigestOf([](NamespaceSpec& n) {
    n.tp_size = 4;
    n.pp_size = 2;
  });
  EXPECT_NE(c, d);
}

TEST(BlockKeyTest, SwappingGeometryValuesChangesTheDigest) {
  // kv_heads and head_dim both 8/128 -> 128/8 keeps the product (and the block size).
  const ChainHash a = DigestOf([](NamespaceSpec& n) {
    n.geometry.kv_heads = 8;
    n.geometry.head_dim = 128;
  });
  const ChainHash b = DigestOf([](NamespaceSpec& n) {
    n.geometry.kv_heads = 128;
    n.geometry.head_dim = 8;
  });
  EXPECT_NE(a, b);
}

// ---------------------------------------------------------------------------------------
// Tokens

TEST(BlockKeyTest, ChangingAnySingleTokenChangesThatChainAndAllLaterOnesButNoEarlierOne) {
  std::mt19937 rng(6);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const size_t bt = d.block_tokens();
  for (int iter = 0; iter < 300; ++iter) {
    const size_t blocks = 1 + iter % 6;
    std::vector<int32_t> tokens = RandomTokens(rng, blocks * bt + iter % 5);  // maybe a tail
    const std::vector<ChainHash> before = d.Chain(tokens);
    ASSERT_EQ(before.size(), blocks);
    const size_t pos = std::uniform_int_distribution<size_t>(0, blocks * bt - 1)(rng);
    const int32_t old = tokens[pos];
    // Sometimes a single-bit change, sometimes an arbitrary value (including negatives).
    tokens[pos] = iter % 2 ? old ^ (int32_t{1} << (iter % 31))
                           : std::uniform_int_distribution<int32_t>(INT32_MIN, INT32_MAX)(rng);
    if (tokens[pos] == old) tokens[pos] = old + 1;
    const std::vector<ChainHash> after = d.Chain(tokens);
    ASSERT_EQ(after.size(), blocks);
    const size_t changed_block = pos / bt;
    for (size_t i = 0; i < blocks; ++i) {
      if (i < changed_block) {
        ASSERT_EQ(after[i], before[i]) << "iteration " << iter << " block " << i;
      } else {
        ASSERT_NE(after[i], before[i]) << "iteration " << iter << " block " << i;
      }
    }
  }
}

TEST(BlockKeyTest, ChangingTheUnhashedTailChangesNothing) {
  std::mt19937 rng(7);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  std::vector<int32_t> tokens = RandomTokens(rng, 16 * 3 + 7);
  const std::vector<ChainHash> before = d.Chain(tokens);
  tokens.back() += 1;
  EXPECT_EQ(d.Chain(tokens), before);
}

TEST(BlockKeyTest, TokenOrderWithinABlockMatters) {
  std::mt19937 rng(8);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  for (int iter = 0; iter < 200; ++iter) {
    std::vector<int32_t> tokens = RandomTokens(rng, 16);
    const size_t i = std::uniform_int_distribution<size_t>(0, 15)(rng);
    size_t j = std::uniform_int_distribution<size_t>(0, 14)(rng);
    if (j >= i) ++j;
    if (tokens[i] == tokens[j]) tokens[j] = tokens[i] + 1;
    const ChainHash before = d.Chain(tokens).at(0);
    std::swap(tokens[i], tokens[j]);
    ASSERT_NE(d.Chain(tokens).at(0), before) << "swapping tokens " << i << " and " << j;
  }
}

TEST(BlockKeyTest, BlockOrderMatters) {
  std::mt19937 rng(9);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::vector<int32_t> a = RandomTokens(rng, 16);
  const std::vector<int32_t> b = RandomTokens(rng, 16);
  std::vector<int32_t> ab = a, ba = b;
  ab.insert(ab.end(), b.begin(), b.end());
  ba.insert(ba.end(), a.begin(), a.end());
  EXPECT_NE(d.Chain(ab).at(1), d.Chain(ba).at(1));
  // And the same block under a different prefix is a different block.
  EXPECT_NE(d.Chain(ab).at(1), d.Chain(b).at(0));
}

TEST(BlockKeyTest, TokenBytesAreNotConfusedAcrossTokenBoundaries) {
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  std::vector<int32_t> a(16, 0), b(16, 0);
  a[0] = 0x00000100;  // byte 1 of token 0
  b[0] = 0x00000001;  // byte 0 of token 0
  std::vector<int32_t> c(16, 0);
  c[1] = 0x00000001;  // byte 0 of token 1 (byte 4 of the block)
  std::vector<int32_t> e(16, 0);
  e[0] = 0x01000000;  // byte 3 of token 0
  const std::set<ChainHash> all = {d.Chain(a).at(0), d.Chain(b).at(0), d.Chain(c).at(0), d.Chain(e).at(0)};
  EXPECT_EQ(all.size(), 4u);
}

TEST(BlockKeyTest, ChainHashesAreNeverTheNamespaceDigest) {
  std::mt19937 rng(10);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::vector<ChainHash> chain = d.Chain(RandomTokens(rng, 16 * 8));
  for (const ChainHash& h : chain) EXPECT_NE(h, d.namespace_digest());
  EXPECT_EQ(std::set<ChainHash>(chain.begin(), chain.end()).size(), chain.size());
}

// ---------------------------------------------------------------------------------------
// Chain structure

TEST(BlockKeyTest, ChainFromAPrefixContinuesTheChain) {
  std::mt19937 rng(11);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const size_t bt = d.block_tokens();
  for (int iter = 0; iter < 300; ++iter) {
    const size_t blocks = 2 + iter % 7;
    const std::vector<int32_t> tokens = RandomTokens(rng, blocks * bt + iter % 3);
    const std::vector<ChainHash> all = d.Chain(tokens);
    ASSERT_EQ(all.size(), blocks);
    const size_t k = std::uniform_int_distribution<size_t>(1, blocks - 1)(rng);
    const std::vector<ChainHash> rest = d.ChainFrom(all[k - 1], std::span(tokens).subspan(k * bt));
    ASSERT_EQ(rest, std::vector<ChainHash>(all.begin() + static_cast<ptrdiff_t>(k), all.end()))
        << "iteration " << iter << " k " << k;
  }
}

TEST(BlockKeyTest, ChainIsChainFromTheNamespaceDigest) {
  std::mt19937 rng(12);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::vector<int32_t> tokens = RandomTokens(rng, 16 * 5);
  EXPECT_EQ(d.ChainFrom(d.namespace_digest(), tokens), d.Chain(tokens));
}

TEST(BlockKeyTest, ChainIsRepeatedNext) {
  std::mt19937 rng(13);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::span<const int32_t>::size_type bt = d.block_tokens();
  const std::vector<int32_t> tokens = RandomTokens(rng, 16 * 5);
  const std::vector<ChainHash> chain = d.Chain(tokens);
  ChainHash parent = d.namespace_digest();
  for (size_t i = 0; i < chain.size(); ++i) {
    const Result<ChainHash> next = d.Next(parent, std::span(tokens).subspan(i * bt, bt));
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    EXPECT_EQ(*next, chain[i]) << "block " << i;
    parent = *next;
  }
}

TEST(BlockKeyTest, PartialTailBlockProducesNoKey) {
  std::mt19937 rng(14);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const size_t bt = d.block_tokens();
  const std::vector<int32_t> tokens = RandomTokens(rng, 3 * bt + bt - 1);
  const std::vector<ChainHash> chain = d.Chain(tokens);
  EXPECT_EQ(chain.size(), 3u);
  EXPECT_EQ(chain, d.Chain(std::span(tokens).first(3 * bt)));
  EXPECT_TRUE(d.Chain(std::span(tokens).first(bt - 1)).empty());
  EXPECT_TRUE(d.Chain({}).empty());
  EXPECT_TRUE(d.ChainFrom(d.namespace_digest(), std::span(tokens).first(1)).empty());
  EXPECT_TRUE(d.Keys(d.Chain(std::span(tokens).first(bt - 1))).empty());
}

TEST(BlockKeyTest, NextRejectsAWrongTokenCount) {
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::vector<int32_t> tokens = Iota(64);
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{17}, size_t{32}}) {
    const Result<ChainHash> r = d.Next(d.namespace_digest(), std::span(tokens).first(n));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << n << " tokens";
  }
  EXPECT_TRUE(d.Next(d.namespace_digest(), std::span(tokens).first(16)).ok());
}

TEST(BlockKeyTest, LargestBlockTokensHashes) {
  // 4096 tokens is the geometry's upper bound; Next must handle it without truncating.
  NamespaceSpec ns = BaseSpec();
  ns.geometry = KvGeometry{.layers = 2, .kv_heads = 1, .head_dim = 16, .block_tokens = 4096, .dtype = DType::kBF16};
  const KeyDeriver d = Derive(TenantA(), ns);
  std::vector<int32_t> tokens = Iota(4096);
  const ChainHash before = d.Chain(tokens).at(0);
  tokens.back() += 1;
  EXPECT_NE(d.Chain(tokens).at(0), before);
}

// ---------------------------------------------------------------------------------------
// NamespaceSpec::Validate

void ExpectInvalid(const std::function<void(NamespaceSpec&)>& edit, std::string_view what) {
  NamespaceSpec ns = BaseSpec();
  edit(ns);
  const Status s = ns.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << what << ": " << s.ToString();
  const Result<KeyDeriver> d = KeyDeriver::Create(TenantA(), ns);
  EXPECT_FALSE(d.ok()) << what << ": Create accepted an invalid namespace";
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << what;
}

TEST(NamespaceSpecTest, BaseSpecIsValid) { EXPECT_TRUE(BaseSpec().Validate().ok()); }

TEST(NamespaceSpecTest, RejectsAnEmptyModel) {
  ExpectInvalid([](NamespaceSpec& n) { n.model_fingerprint.clear(); }, "empty model");
}

TEST(NamespaceSpecTest, RejectsTpRankNotBelowTpSize) {
  ExpectInvalid([](NamespaceSpec& n) { n.tp_rank = n.tp_size; }, "tp_rank == tp_size");
  ExpectInvalid([](NamespaceSpec& n) { n.tp_rank = 9; }, "tp_rank > tp_size");
  ExpectInvalid([](NamespaceSpec& n) { n.tp_size = 0; }, "tp_size 0");
}

TEST(NamespaceSpecTest, RejectsPpRankNotBelowPpSize) {
  ExpectInvalid([](NamespaceSpec& n) { n.pp_rank = n.pp_size; }, "pp_rank == pp_size");
  ExpectInvalid([](NamespaceSpec& n) { n.pp_rank = 9; }, "pp_rank > pp_size");
  ExpectInvalid([](NamespaceSpec& n) { n.pp_size = 0; }, "pp_size 0");
}

TEST(NamespaceSpecTest, RejectsANonPositiveOrNanTheta) {
  ExpectInvalid([](NamespaceSpec& n) { n.rope.theta = 0.0; }, "theta 0");
  ExpectInvalid([](NamespaceSpec& n) { n.rope.theta = -0.0; }, "theta -0");
  ExpectInvalid([](NamespaceSpec& n) { n.rope.theta = -10000.0; }, "theta negative");
  ExpectInvalid([](NamespaceSpec& n) { n.rope.theta = std::nan(""); }, "theta NaN");
}

TEST(NamespaceSpecTest, RejectsABadGeometry) {
  ExpectInvalid([](NamespaceSpec& n) { n.geometry.layers = 0; }, "layers 0");
  ExpectInvalid([](NamespaceSpec& n) { n.geometry.block_tokens = 0; }, "block_tokens 0");
  ExpectInvalid([](NamespaceSpec& n) { n.geometry = KvGeometry{}; }, "default geometry");
  ExpectInvalid([](NamespaceSpec& n) { n.geometry.dtype = static_cast<DType>(0); }, "unknown dtype");
}

TEST(NamespaceSpecTest, AcceptsTheLastRanks) {
  NamespaceSpec ns = BaseSpec();
  ns.tp_rank = ns.tp_size - 1;
  ns.pp_rank = ns.pp_size - 1;
  EXPECT_TRUE(ns.Validate().ok());
}

// ---------------------------------------------------------------------------------------
// Keys and BlockKey

TEST(BlockKeyTest, KeysAreBlockMajorOverLayers) {
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  const std::vector<ChainHash> chain = d.Chain(Iota(16 * 3));
  const std::vector<BlockKey> keys = d.Keys(chain);
  ASSERT_EQ(keys.size(), chain.size() * d.layers());
  for (size_t b = 0; b < chain.size(); ++b) {
    for (uint32_t l = 0; l < d.layers(); ++l) {
      const BlockKey& k = keys[b * d.layers() + l];
      EXPECT_EQ(k.chain, chain[b]);
      EXPECT_EQ(k.layer, LayerId{l});
    }
  }
  EXPECT_EQ(std::set<BlockKey>(keys.begin(), keys.end()).size(), keys.size());
}

TEST(BlockKeyTest, EqualityIncludesTheLayer) {
  const ChainHash c = Derive(TenantA(), BaseSpec()).Chain(Iota(16)).at(0);
  const BlockKey l0{c, LayerId{0}}, l1{c, LayerId{1}};
  EXPECT_NE(l0, l1);
  EXPECT_EQ(l0, (BlockKey{c, LayerId{0}}));
  EXPECT_LT(l0, l1);
  ChainHash other = c;
  other.bytes[31] ^= 1;
  EXPECT_NE(l0, (BlockKey{other, LayerId{0}}));
}

TEST(BlockKeyTest, HashDiffersAcrossLayersOfOneChain) {
  const ChainHash c = Derive(TenantA(), BaseSpec()).Chain(Iota(16)).at(0);
  std::unordered_set<uint64_t> hashes;
  for (uint32_t l = 0; l < 1024; ++l) {
    const BlockKey k{c, LayerId{l}};
    EXPECT_EQ(std::hash<BlockKey>{}(k), k.hash64());
    EXPECT_TRUE(hashes.insert(k.hash64()).second) << "layer " << l;
  }
  std::unordered_set<BlockKey> set = {BlockKey{c, LayerId{0}}, BlockKey{c, LayerId{1}}, BlockKey{c, LayerId{0}}};
  EXPECT_EQ(set.size(), 2u);
}

TEST(BlockKeyTest, Prefix64IsTheFirstEightBytesLittleEndianOnThisHost) {
  ChainHash h;
  for (size_t i = 0; i < h.bytes.size(); ++i) h.bytes[i] = static_cast<uint8_t>(i + 1);
  uint64_t expected;
  std::memcpy(&expected, h.bytes.data(), sizeof(expected));
  EXPECT_EQ(h.prefix64(), expected);
  h.bytes[8] = 0xff;  // beyond the prefix
  EXPECT_EQ(h.prefix64(), expected);
}

TEST(BlockKeyTest, ToHexIsSixtyFourLowercaseDigitsAndRoundTrips) {
  std::mt19937 rng(15);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  for (const ChainHash& h : d.Chain(RandomTokens(rng, 16 * 20))) {
    const std::string hex = h.ToHex();
    ASSERT_EQ(hex.size(), 64u);
    for (char ch : hex) ASSERT_TRUE((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')) << hex;
    EXPECT_EQ(FromHex(hex), h);
  }
  ChainHash zero;
  EXPECT_EQ(zero.ToHex(), std::string(64, '0'));
}

TEST(BlockKeyTest, ToStringIsAShortPrefixAndTheLayer) {
  ChainHash h;
  for (size_t i = 0; i < h.bytes.size(); ++i) h.bytes[i] = static_cast<uint8_t>(0x10 + i);
  EXPECT_EQ((BlockKey{h, LayerId{3}}).ToString(), "1011121314151617/L3");
}

// ---------------------------------------------------------------------------------------
// TenantSecret

TEST(TenantSecretTest, FromPassphraseIsDeterministic) {
  EXPECT_EQ(TenantSecret::FromPassphrase("alice").bytes, TenantSecret::FromPassphrase("alice").bytes);
  EXPECT_EQ(TenantSecret::FromPassphrase("").bytes, TenantSecret::FromPassphrase("").bytes);
}

TEST(TenantSecretTest, FromPassphraseIsDistinctPerPassphrase) {
  std::set<std::array<uint8_t, 32>> secrets;
  const std::array<uint8_t, 32> zero{};
  for (const char* p : {"", "a", "b", "ab", "ba", "alice", "alice ", "Alice", "bob"}) {
    const TenantSecret s = TenantSecret::FromPassphrase(p);
    EXPECT_NE(s.bytes, zero) << "'" << p << "'";
    EXPECT_TRUE(secrets.insert(s.bytes).second) << "'" << p << "' collides";
  }
  for (int i = 0; i < 200; ++i) {
    EXPECT_TRUE(secrets.insert(TenantSecret::FromPassphrase("tenant-" + std::to_string(i)).bytes).second);
  }
}

TEST(TenantSecretTest, RandomIsDistinctAndNotZero) {
  std::set<std::array<uint8_t, 32>> secrets;
  const std::array<uint8_t, 32> zero{};
  for (int i = 0; i < 200; ++i) {
    const TenantSecret s = TenantSecret::Random();
    EXPECT_NE(s.bytes, zero);
    EXPECT_TRUE(secrets.insert(s.bytes).second);
  }
  // Not derived from a passphrase by accident.
  EXPECT_FALSE(secrets.contains(TenantSecret::FromPassphrase("").bytes));
}

// ---------------------------------------------------------------------------------------
// Thread safety: a KeyDeriver is immutable after Create.

TEST(BlockKeyTest, ConcurrentChainsAgreeWithSerialOnes) {
  std::mt19937 rng(16);
  const KeyDeriver d = Derive(TenantA(), BaseSpec());
  std::vector<std::vector<int32_t>> inputs;
  std::vector<std::vector<ChainHash>> expected;
  for (int i = 0; i < 32; ++i) {
    inputs.push_back(RandomTokens(rng, 16 * (1 + i % 8)));
    expected.push_back(d.Chain(inputs.back()));
  }
  std::vector<int> mismatches(8, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < mismatches.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = 0; i < inputs.size(); ++i) {
          if (d.Chain(inputs[i]) != expected[i]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

}  // namespace
}  // namespace kvtier
