// The mixtrain command-line trainer: the root CLI::App, the subcommands registered by the
// cmd_*.cpp files, and the exit-status rules (0 ok, 1 runtime error, 2 bad command line: a parse
// error or a ConfigError, raised before anything is written).
// Built only on the public API. main() is in main.cpp; the CLI-args fuzz target
// (fuzz/cli_args_fuzz.cpp) links this file with check_only set.
#include <algorithm>
#include <cstdio>
#include <map>
#include <ostream>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "mixtrain/error.h"
#include "mixtrain/version.h"

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

std::map<const CLI::App*, Action>& checks() {
  static std::map<const CLI::App*, Action> c;
  return c;
}

// With no subcommand: the main job, the default training run.
int run_default() { return run_default_training(); }

}  // namespace

namespace {

// Numbers above 0 (strict) or from 0 on.
CLI::Validator at_least(bool strict, const char* what) {
  return CLI::Validator(
      [strict, what](std::string& v) -> std::string {
        double x = 0;
        size_t used = 0;
        try {
          x = std::stod(v, &used);
        } catch (const std::exception&) {
          return fmt::format("not a number: '{}'", v);
        }
        if (used != v.size()) return fmt::format("not a number: '{}'", v);
        if (strict ? !(x > 0) : !(x >= 0)) return fmt::format("must be {}, got {}", what, v);
        return "";
      },
      what);
}

}  // namespace

const CLI::Validator kPositive = at_least(true, "positive");
const CLI::Validator kNonNegative = at_least(false, ">= 0");

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

void on_check(CLI::App* sub, Action check) { checks()[sub] = std::move(check); }

int main_entry(int argc, const char* const* argv, bool check_only) {
  // Bindings are keyed by the App objects of this call (a fuzz target calls this repeatedly).
  actions().clear();
  checks().clear();
  std::ostringstream sink;  // check_only: help and parse errors are not printed
  CLI::App app{
      "mixtrain: mixed-precision (bf16/fp16, fp32 master weights) neural-network "
      "training on the CPU"};
  app.name("mixtrain");
  app.set_version_flag("--version", std::string("mixtrain ") + version());
  for (const Command& c : registered_commands()) c.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0 (CLI11 prints the innermost subcommand's help); anything wrong on the
    // command line prints what and exits 2, as usage errors conventionally do.
    const int rc = check_only ? app.exit(e, sink, sink) : app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    // The innermost subcommand given decides what runs.
    const CLI::App* cur = &app;
    while (!cur->get_subcommands().empty()) cur = cur->get_subcommands().front();
    if (check_only) {
      auto it = checks().find(cur);
      if (cur == &app) return check_default_training();
      return it == checks().end() ? 0 : it->second();
    }
    if (cur == &app) return run_default();
    if (Action a = action_for(cur)) return a();
    std::fputs(cur->help().c_str(), stderr);
    return 2;
  } catch (const ConfigError& e) {  // a flag value out of range, or flags that do not fit
    if (!check_only) fmt::print(stderr, "mixtrain: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {  // a runtime error: a file, the numerics, the machine
    if (!check_only) fmt::print(stderr, "mixtrain: error: {}\n", e.what());
    return 1;
  }
}

}  // namespace mixtrain::cli
