// `kvtier bench decode`: the CLI of the sparse-vs-dense decode attention benchmark
// (decode_bench.h). Built everywhere; without CUDA it explains and exits non-zero.
#include <fmt/format.h>

#include <memory>

#include "commands.h"
#include "decode_bench.h"

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
  cmd->callback([o, exit_code] {
    if (Status s = RunDecodeBench(*o); !s.ok()) {
      fmt::print(stderr, "kvtier bench decode: {}\n", s.message());
      *exit_code = 2;
    }
  });
}

}  // namespace kvtier::cli
