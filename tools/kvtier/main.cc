// kvtier: one CLI, one subcommand per job (demo, bench ...). `kvtier <command> --help`.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "commands.h"
#include "registry.h"

int main(int argc, char** argv) {
  CLI::App app{"kvtier: tiered KV cache for LLM serving engines (HBM, pinned DRAM, NVMe)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kvtier 0.1.0 (") + kvtier::DescribeBuild() + ")");
  int exit_code = 0;
  kvtier::cli::AddDemoCommand(app, &exit_code);
  CLI::App* bench = app.add_subcommand("bench", "benchmarks that print kvtier's figure next to a same-run baseline");
  bench->require_subcommand(1);
  kvtier::cli::AddBenchIndexCommand(*bench, &exit_code);
  kvtier::cli::AddBenchQstoreCommand(*bench, &exit_code);
  kvtier::cli::AddQstoreCommand(app, &exit_code);
  kvtier::cli::AddBenchTransferCommand(*bench, &exit_code);
  kvtier::cli::AddProbeCommand(app, &exit_code);
  kvtier::cli::AddScoreCommand(app, &exit_code);
  kvtier::cli::AddBenchScoreCommand(*bench, &exit_code);
  kvtier::cli::AddBenchNvmeCommand(*bench, &exit_code);
  kvtier::cli::AddBenchDecodeCommand(*bench, &exit_code);
  kvtier::cli::AddBenchSparseCommands(*bench, &exit_code);
  kvtier::cli::AddSelectCommand(app, &exit_code);
  kvtier::cli::AddBenchSelectCommand(*bench, &exit_code);
  CLI::App* stress = app.add_subcommand("stress", "crash and fault loops checked against an oracle");
  stress->require_subcommand(1);
  kvtier::cli::AddStressNvmeCommand(*stress, &exit_code);
  kvtier::cli::AddFsckCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
