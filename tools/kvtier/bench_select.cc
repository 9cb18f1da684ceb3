// `kvtier bench select`: Quest selection quality on the synthetic workload
// (sparse_synth.h, papers.md §0.2) next to the oracle and random pages in the same run.
//
// Per step of drifting queries, the truth is the attention of every query head over all
// tokens (softmax, scale 1/√d), averaged over the GQA group, summed per block. Per budget
// and KV head each method selects budget / block_tokens blocks with the same forced blocks
// (sink block, current block):
//   quest   QuestSelector (the runtime's code) on fp32 or int8 compact bounds, GQA sum or max
//   oracle  the blocks of highest true mass
//   random  uniformly random blocks
// Reported, averaged over steps and KV heads: mass recall (true mass of the selected
// blocks), Quest / oracle, top-10 token recall (the 10 tokens of highest mass that lie in
// selected blocks) and needles found (planted clusters whose blocks are all selected).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "kvtier/quest_selector.h"
#include "kvtier/slice_metadata.h"
#include "reference/quest_select.h"
#include "sparse_synth.h"

namespace kvtier::cli {
namespace {

struct BenchSelectOptions {
  synth::SparseSynthOptions synth{};
  std::vector<uint32_t> budgets{256, 512, 1024, 2048, 4096};
  uint32_t block_tokens = 16;
  bool quick = false;
  bool json = false;
};

struct Method {
  std::string name;
  bool quest = false;
  GqaCombine combine = GqaCombine::kSum;
  bool compact = true;
};

struct Tally {  // sums over (step, KV head)
  double mass = 0, oracle_mass = 0, top10 = 0, min_ratio = 1e9;
  uint64_t needles = 0, needle_total = 0, rows = 0;
};

// Fraction of the 10 highest-mass tokens of `mass` [tokens] that lie in `blocks`.
double Top10Recall(std::span<const double> mass, std::span<const uint32_t> blocks, uint32_t bt) {
  std::vector<uint32_t> idx(mass.size());
  std::iota(idx.begin(), idx.end(), 0u);
  const size_t n = std::min<size_t>(10, idx.size());
  std::partial_sort(idx.begin(), idx.begin() + static_cast<ptrdiff_t>(n), idx.end(),
                    [&](uint32_t a, uint32_t b) { return mass[a] > mass[b]; });
  size_t hit = 0;
  for (size_t i = 0; i < n; ++i) hit += std::binary_search(blocks.begin(), blocks.end(), idx[i] / bt);
  return double(hit) / double(n);
}

Status RunBenchSelect(const BenchSelectOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  KVT_ASSIGN_OR_RETURN(synth::SyntheticSequence seq, synth::GenerateSparseSequence(o.synth));
  const synth::SparseSynthOptions& s = o.synth;
  const uint32_t L = s.tokens, d = s.head_dim, kv = s.kv_heads, bt = o.block_tokens;
  const uint32_t blocks = (L + bt - 1) / bt;
  KVT_ASSIGN_OR_RETURN(SliceMetadata meta, SliceMetadata::Create({.layers = 1, .kv_heads = kv, .head_dim = d,
                                                                  .block_tokens = bt, .keep_exact_bounds = true}));
  KVT_RETURN_IF_ERROR(meta.Append(LayerId{0}, seq.keys, L, KeyLayout::kHeadMajor));
  const std::vector<Method> methods = {{"quest-sum-fp32", true, GqaCombine::kSum, false},
                                       {"quest-sum-int8", true, GqaCombine::kSum, true},
                                       {"quest-max-fp32", true, GqaCombine::kMax, false},
                                       {"quest-max-int8", true, GqaCombine::kMax, true},
                                       {"oracle", false},
                                       {"random", false}};
  std::vector<std::vector<Tally>> tally(o.budgets.size(), std::vector<Tally>(methods.size()));
  std::vector<double> token_mass(size_t{kv} * L), block_mass(size_t{kv} * blocks);
  std::mt19937_64 rng(s.seed + 99);
  for (uint32_t step = 0; step < s.steps; ++step) {
    synth::TrueTokenMass(kv, s.q_heads(), d, L, seq.keys, seq.StepQueries(step), token_mass);
    synth::TrueBlockMass(kv, L, bt, token_mass, block_mass);
    for (size_t bi = 0; bi < o.budgets.size(); ++bi) {
      QuestSelectorOptions base{.budget_tokens = o.budgets[bi], .block_tokens = bt, .dense_layers = 0};
      kernels::QuestShape shape{.q_heads = 1, .kv_heads = 1, .head_dim = d, .blocks = blocks};
      kernels::QuestSelectParams params{.budget_tokens = o.budgets[bi], .block_tokens = bt,
                                        .sink_blocks = base.sink_blocks, .min_blocks = base.min_blocks};
      const uint32_t k = kernels::QuestBudgetBlocks(shape, params);
      std::vector<std::vector<uint32_t>> rows(methods.size());
      std::vector<double> oracle_mass(kv);
      for (size_t mi = 0; mi < methods.size(); ++mi) {
        const Method& m = methods[mi];
        std::vector<uint32_t>& sel = rows[mi];
        if (m.quest) {
          QuestSelectorOptions so = base;
          so.combine = m.combine;
          so.use_compact_metadata = m.compact;
          KVT_ASSIGN_OR_RETURN(QuestSelector q, QuestSelector::Create(so));
          KVT_ASSIGN_OR_RETURN(Selection r, q.Select(LayerId{0}, seq.StepQueries(step), meta));
          sel = std::move(r.indices);
        } else {
          sel.resize(size_t{kv} * k);
          std::vector<float> score(blocks);
          for (uint32_t h = 0; h < kv; ++h) {
            for (uint32_t b = 0; b < blocks; ++b) {
              score[b] = m.name == "oracle" ? static_cast<float>(block_mass[size_t{h} * blocks + b])
                                            : std::uniform_real_distribution<float>(0, 1)(rng);
            }
            kernels::QuestSelectTopK(shape, params, score, std::span(sel).subspan(size_t{h} * k, k));
          }
        }
      }
      for (uint32_t h = 0; h < kv; ++h) {  // the oracle (index 4) first: every ratio needs it
        for (uint32_t b : std::span(rows[4]).subspan(size_t{h} * k, k)) oracle_mass[h] += block_mass[size_t{h} * blocks + b];
      }
      for (size_t mi = 0; mi < methods.size(); ++mi) {
        Tally& t = tally[bi][mi];
        for (uint32_t h = 0; h < kv; ++h) {
          auto row = std::span<const uint32_t>(rows[mi]).subspan(size_t{h} * k, k);
          double mass = 0;
          for (uint32_t b : row) mass += block_mass[size_t{h} * blocks + b];
          t.mass += mass;
          t.oracle_mass += oracle_mass[h];
          t.min_ratio = std::min(t.min_ratio, mass / oracle_mass[h]);
          t.top10 += Top10Recall(std::span<const double>(token_mass).subspan(size_t{h} * L, L), row, bt);
          for (const synth::NeedleCluster& n : seq.needles) {
            if (n.kv_head != h) continue;
            bool all = true;
            for (uint32_t b = n.first_token / bt; b <= (n.first_token + n.tokens - 1) / bt; ++b) {
              all = all && std::binary_search(row.begin(), row.end(), b);
            }
            t.needles += all;
            ++t.needle_total;
          }
          ++t.rows;
        }
      }
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!o.json) {
    fmt::print("Quest selection quality: {} kv heads x {} q heads, {} tokens, d={}, block {}, {} steps of drifting "
               "queries (seed {}), {:.1f} s\n",
               kv, s.q_heads(), L, d, bt, s.steps, s.seed, secs);
    fmt::print("{:>7} {:<15} {:>12} {:>12} {:>13} {:>11} {:>12} {:>9}\n", "budget", "method", "mass recall",
               "oracle mass", "ratio (mean)", "ratio min", "top-10 rec.", "needles");
  }
  for (size_t bi = 0; bi < o.budgets.size(); ++bi) {
    for (size_t mi = 0; mi < methods.size(); ++mi) {
      const Tally& t = tally[bi][mi];
      const double recall = t.mass / t.rows, oracle = t.oracle_mass / t.rows, ratio = t.mass / t.oracle_mass;
      const double top10 = t.top10 / t.rows, needles = t.needle_total ? double(t.needles) / t.needle_total : 1.0;
      if (o.json) {
        nlohmann::ordered_json j{{"bench", "select_quality"}, {"budget", o.budgets[bi]}, {"method", methods[mi].name},
                                 {"mass_recall", recall}, {"oracle_mass_recall", oracle}, {"ratio", ratio},
                                 {"ratio_min", t.min_ratio}, {"top10_recall", top10}, {"needles_found", needles},
                                 {"needles", t.needle_total}, {"tokens", L}, {"kv_heads", kv},
                                 {"q_heads", s.q_heads()}, {"head_dim", d}, {"block_tokens", bt},
                                 {"steps", s.steps}, {"seed", s.seed}};
        fmt::print("{}\n", j.dump());
      } else {
        fmt::print("{:>7} {:<15} {:>12.4f} {:>12.4f} {:>13.4f} {:>11.4f} {:>12.3f} {:>9.3f}\n", o.budgets[bi],
                   methods[mi].name, recall, oracle, ratio, t.min_ratio, top10, needles);
      }
    }
  }
  if (!o.json) {
    fmt::print("metadata: {} B for {} slices ({:.1f} B per slice incl. fp32 copies kept for this comparison)\n",
               meta.bytes().value(), uint64_t{kv} * blocks, double(meta.bytes().value()) / (uint64_t{kv} * blocks));
  }
  return Status::Ok();
}

}  // namespace

void AddBenchSelectCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<BenchSelectOptions>();
  CLI::App* cmd = bench.add_subcommand("select", "Quest selection quality vs oracle and random pages on synthetic keys");
  cmd->add_option("--tokens", o->synth.tokens, "tokens of the sequence")->capture_default_str();
  cmd->add_option("--steps", o->synth.steps, "decode steps of drifting queries")->capture_default_str();
  cmd->add_option("--kv-heads", o->synth.kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("--group", o->synth.group, "query heads per KV head")->capture_default_str();
  cmd->add_option("--head-dim", o->synth.head_dim, "head dim")->capture_default_str();
  cmd->add_option("--seed", o->synth.seed, "generator seed")->capture_default_str();
  cmd->add_option("--needle-strength", o->synth.needle_strength, "needle key along the query, in sqrt(d)")
      ->capture_default_str();
  cmd->add_option("--sink-strength", o->synth.sink_strength, "sink key along the query, in sqrt(d)")->capture_default_str();
  cmd->add_option("--query-scale", o->synth.query_scale, "query norm, in sqrt(d)")->capture_default_str();
  cmd->add_option("--drift", o->synth.drift, "per-channel std of one query random-walk step")->capture_default_str();
  cmd->add_option("--block-tokens", o->block_tokens, "tokens per block")->capture_default_str();
  cmd->add_option("--budgets", o->budgets, "token budgets")->capture_default_str();
  cmd->add_flag("--quick", o->quick, "8192 tokens, 2 steps (CI)");
  cmd->add_flag("--json", o->json, "JSON lines");
  cmd->callback([o, exit_code] {
    if (o->quick) {
      o->synth.tokens = 8192;
      o->synth.steps = 2;
    }
    Status s = o->block_tokens == 0 || o->budgets.empty() ? Status::InvalidArgument("--block-tokens and --budgets must be set")
                                                          : Status::Ok();
    for (uint32_t b : o->budgets) {
      if (s.ok() && b < o->block_tokens) s = Status::InvalidArgument(fmt::format("budget {} is less than one block", b));
    }
    if (s.ok()) s = RunBenchSelect(*o);
    if (!s.ok()) {
      fmt::print(stderr, "kvtier bench select: {}\n", s.message());
      *exit_code = 2;
    }
  });
}

}  // namespace kvtier::cli
