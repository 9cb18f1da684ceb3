// `kvtier bench decode`: the CLI of the sparse-vs-dense decode attention benchmark
// (decode_bench.h). Built everywhere; without CUDA it explains and exits non-zero.
#include <fmt/format.h>

#include <fstream>
#include <memory>
#include <string>

#include "commands.h"
#include "decode_bench.h"
#include "decode_table.h"

namespace kvtier::cli {

void AddBenchDecodeCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<DecodeBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "decode", "Quest select + sparse decode attention vs dense attention vs a D2D copy (CUDA builds, Llama-3-8B shapes)");
  cmd->add_option("--contexts", o->contexts, "tokens per request")->delimiter(',')->capture_default_str();
  cmd->add_option("--batches", o->batches, "requests per step")->delimiter(',')->capture_default_str();
  cmd->add_option("--budget", o->budget, "Quest token budget (forced blocks included)")->capture_default_str();
  cmd->add_option("--iterations", o->iterations, "back-to-back steps per timed repetition")->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "timed repetitions (median)")->capture_default_str();
  cmd->add_option("--layers", o->layers, "KV copies cycled through (0: enough to defeat L2)")->capture_default_str();
  cmd->add_option("--device", o->device, "CUDA device")->capture_default_str();
  cmd->add_flag("--json", o->json, "JSON lines instead of a table");
  auto table_from = std::make_shared<std::string>();
  cmd->add_option("--table", *table_from,
                  "print the table of JSON lines written by --json (FILE; no GPU needed, nothing is measured)");
  cmd->add_flag("--sweep", o->sweep,
                "also time the score and attention launches over a grid of launch shapes (checked against the "
                "defaults' output) and the sparse step with the fastest pair");
  DecodeBenchOverrides& v = o->overrides;
  cmd->add_option("--score-tiles-per-cta", v.score_tiles_per_cta, "score tiles per CTA (0: one wave of CTAs)");
  cmd->add_option("--score-stages", v.score_stages, "score tile buffers per CTA: 2, 3, 4, 6 (0: 4)");
  cmd->add_option("--score-slices-per-thread", v.score_slices_per_thread, "score slices per thread per tile: 2, 4 (0: 2)");
  cmd->add_option("--score-preset", v.score_preset,
                  "score launch-shape rule: r9w (default), r8 (round 8's) or r9 (docs/sparse.md, round 9)")
      ->check(CLI::IsMember({"r8", "r9", "r9w"}))
      ->capture_default_str();
  cmd->add_option("--attention-heads-per-cta", v.attention_heads_per_cta,
                  "streamed attention: query heads per CTA, 1/2/4/8 dividing the group (0: planner)");
  cmd->add_option("--attention-chunk-pages", v.attention_chunk_pages, "streamed attention: pages per CTA (0: planner)");
  cmd->add_option("--attention-splits", v.attention_splits,
                  "streamed attention: pieces per row instead of --attention-chunk-pages (0: planner)");
  cmd->add_option("--attention-tile-loads", v.attention_tile_loads,
                  "streamed attention: loads per warp tile, 4 or 8 (deep) (0: planner)");
  cmd->add_option("--attention-rule", v.attention_rule,
                  "attention split rule: default, or r9d (round-9d candidate for dense-length rows at small batch)")
      ->check(CLI::IsMember({"default", "r9d"}))
      ->capture_default_str();
  cmd->callback([o, exit_code, table_from] {
    if (!table_from->empty()) {
      std::ifstream in(*table_from);
      if (!in) {
        fmt::print(stderr, "kvtier bench decode: cannot open {}\n", *table_from);
        *exit_code = 2;
        return;
      }
      const DecodeTable table = DecodeTableFromJsonLines(in);
      fmt::print("{}", table.text);
      for (const std::string& e : table.errors) fmt::print(stderr, "kvtier bench decode: {}: {}\n", *table_from, e);
      if (!table.errors.empty()) *exit_code = 2;
      return;
    }
    if (Status s = RunDecodeBench(*o); !s.ok()) {
      fmt::print(stderr, "kvtier bench decode: {}\n", s.message());
      *exit_code = 2;
    }
  });
}

}  // namespace kvtier::cli
