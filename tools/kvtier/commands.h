// The subcommands of the `kvtier` CLI. Each Add* registers its options and a callback that
// stores the command's exit code in *exit_code.
#pragma once

#include <CLI/CLI.hpp>

namespace kvtier::cli {

void AddDemoCommand(CLI::App& app, int* exit_code);
void AddBenchIndexCommand(CLI::App& bench, int* exit_code);
void AddBenchQstoreCommand(CLI::App& bench, int* exit_code);
void AddQstoreCommand(CLI::App& app, int* exit_code);
void AddBenchTransferCommand(CLI::App& bench, int* exit_code);  // CUDA builds measure; others explain
void AddProbeCommand(CLI::App& app, int* exit_code);
void AddBenchHostScatterCommand(CLI::App& bench, int* exit_code);  // CPU half of CPU-assisted D2H
void AddScoreCommand(CLI::App& app, int* exit_code);
void AddBenchScoreCommand(CLI::App& bench, int* exit_code);  // CPU quality part everywhere; GPU part on CUDA builds
void AddStressNvmeCommand(CLI::App& stress, int* exit_code);
void AddFsckCommand(CLI::App& app, int* exit_code);
void AddBenchNvmeCommand(CLI::App& bench, int* exit_code);
void AddBenchDecodeCommand(CLI::App& bench, int* exit_code);  // CUDA builds measure; others explain
void AddBenchSparseCommands(CLI::App& bench, int* exit_code);  // slice-cache, admission, prefill
void AddBenchPrefillCommand(CLI::App& bench, int* exit_code);   // prefill (AddBenchSparseCommands adds it)
void AddSelectCommand(CLI::App& app, int* exit_code);
void AddBenchSelectCommand(CLI::App& bench, int* exit_code);

}  // namespace kvtier::cli
