// The CLI's subcommand registry (internal to tools/mixtrain): each cmd_*.cpp adds its
// subcommands to the root CLI::App through a static registration, and binds the action that
// runs when that subcommand is the one given on the command line.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mixtrain::cli {

/// What a subcommand does once parsed; returns the process exit status.
using Action = std::function<int()>;
/// Adds one subcommand (with its options and nested subcommands) to the root app.
using Setup = void (*)(CLI::App& root);

struct Command {
  const char* name;
  int order;  ///< position in --help (smaller first)
  Setup setup;
};

/// Range validators whose message says what was expected ("--batch: must be positive, got 0";
/// CLI11's own name the range as 0 to 1.8e308).
extern const CLI::Validator kPositive;
extern const CLI::Validator kNonNegative;

/// Called from a static initialiser in each cmd_*.cpp:
///   static const bool registered = mixtrain::cli::add_command("bench", 20, &setup_bench);
bool add_command(const char* name, int order, Setup setup);
/// Every registered command, in order.
std::vector<Command> registered_commands();

/// Binds the action run when `sub` is the innermost subcommand on the command line.
void on_run(CLI::App* sub, Action action);
/// The action bound to `sub`, or an empty function.
Action action_for(const CLI::App* sub);
/// Binds what check_only runs instead of the action: validation that builds nothing and
/// reads no data (returns the exit status; throws mixtrain::Error like the action would).
void on_check(CLI::App* sub, Action check);

/// The whole CLI: builds the root app, parses, runs the innermost subcommand's action and
/// returns the exit status (0 ok, 1 library error, 2 bad command line). With check_only it
/// parses and runs the subcommand's check instead, printing nothing (the fuzz target).
int main_entry(int argc, const char* const* argv, bool check_only = false);

/// Shared with the no-argument default run (main.cpp).
int run_info(bool json);
/// The main job: the default training run (MLP on Fashion-MNIST, precision auto, 3 epochs).
int run_default_training();
/// Its check (check_only with no subcommand).
int check_default_training();

struct GemmBenchOptions {
  bool json = false;
  std::vector<int64_t> sizes{512, 1024, 2048};
  std::vector<std::string> dtypes{"fp32", "bf16", "fp16"};
  double min_time = 0.5;  ///< seconds per measurement
};
int run_bench_gemm(const GemmBenchOptions& options);

}  // namespace mixtrain::cli
