// `kvtier bench transfer` and `kvtier probe` in builds without CUDA: the commands exist and
// say why they cannot run.
#include <fmt/format.h>

#include "commands.h"

namespace kvtier::cli {
namespace {
constexpr const char* kWhy =
    "this build has no CUDA (configure with -DKVTIER_CUDA=ON on a machine with nvcc, then run on a GPU)";
}

void AddBenchTransferCommand(CLI::App& bench, int* exit_code) {
  CLI::App* cmd = bench.add_subcommand("transfer", "DRAM<->HBM block movers vs cudaMemcpyAsync (CUDA builds)");
  cmd->allow_extras();
  cmd->callback([exit_code] {
    fmt::print(stderr, "kvtier bench transfer: {}\n", kWhy);
    *exit_code = 2;
  });
}

void AddProbeCommand(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand("probe", "measure this machine's transfer paths (CUDA builds)");
  cmd->allow_extras();
  cmd->callback([exit_code] {
    fmt::print(stderr, "kvtier probe: {}\n", kWhy);
    *exit_code = 2;
  });
}

}  // namespace kvtier::cli
