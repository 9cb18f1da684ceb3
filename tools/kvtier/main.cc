// kvtier: one CLI, one subcommand per job (demo, bench ...). `kvtier <command> --help`.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "commands.h"
#include "registry.h"
#include "xxh3_dispatch.h"

int main(int argc, char** argv) {
  // KVTIER_XXH3=baseline|avx2|avx512: the NVMe slot checksum's vector path, for measurements
  // (the library itself reads no environment; docs/formats.md).
  if (const char* want = std::getenv("KVTIER_XXH3"); want != nullptr) {
    kvtier::nvme::Xxh3Path path{};
    if (!kvtier::nvme::ParseXxh3Path(want, &path) || !kvtier::nvme::PreferXxh3Path(path)) {
      std::fprintf(stderr, "kvtier: KVTIER_XXH3=%s is not a path this build and CPU have (baseline, avx2, avx512)\n", want);
      return 2;
    }
  }
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
  kvtier::cli::AddBenchHostScatterCommand(*bench, &exit_code);
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
