// The mixtrain command-line trainer: the root CLI::App, the subcommands registered by the
// cmd_*.cpp files, and the exit-status rules (0 ok, 1 library error, 2 bad command line).
// Built only on the public API.
#include <algorithm>
#include <cstdio>
#include <map>

#include <fmt/format.h>

#include "commands.h"
#include "mixtrain/error.h"

namespace mixtrain::cli {

namespace {

std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}

std::map<const CLI::App*, Action>& actions() {
  static std::map<const CLI::App*, Action> a;
  return a;
}

// With no subcommand: the main job, the default training run.
int run_default() { return run_default_training(); }

}  // namespace

bool add_command(const char* name, int order, Setup setup) {
  registry().push_back({name, order, setup});
  return true;
}

std::vector<Command> registered_commands() {
  std::vector<Command> r = registry();
  std::stable_sort(r.begin(), r.end(),
                   [](const Command& x, const Command& y) { return x.order < y.order; });
  return r;
}

void on_run(CLI::App* sub, Action action) { actions()[sub] = std::move(action); }

Action action_for(const CLI::App* sub) {
  auto it = actions().find(sub);
  return it == actions().end() ? Action() : it->second;
}

}  // namespace mixtrain::cli

int main(int argc, char** argv) {
  using namespace mixtrain::cli;
  CLI::App app{
      "mixtrain: mixed-precision (bf16/fp16, fp32 master weights) neural-network "
      "training on the CPU"};
  app.name("mixtrain");
  for (const Command& c : registered_commands()) c.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0 (CLI11 prints the innermost subcommand's help); anything wrong on the
    // command line prints what and exits 2, as usage errors conventionally do.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    // The innermost subcommand given decides what runs.
    const CLI::App* cur = &app;
    while (!cur->get_subcommands().empty()) cur = cur->get_subcommands().front();
    if (cur == &app) return run_default();
    if (Action a = action_for(cur)) return a();
    std::fputs(cur->help().c_str(), stderr);
    return 2;
  } catch (const mixtrain::Error& e) {
    fmt::print(stderr, "mixtrain: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "mixtrain: error: {}\n", e.what());
    return 1;
  }
}
