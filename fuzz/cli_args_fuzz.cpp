// libFuzzer target: the mixtrain command line, parsed and validated exactly as `mixtrain` does
// (cli.cpp's main_entry) but with check_only set, so no subcommand runs: CLI11's parsing and
// validators, the train flags' conversion into a TrainConfig and validate_config(). The input
// is the argument list, NUL-separated. Any exit status is fine (0, 1 refused, 2 bad command
// line); a crash, a sanitizer report, a hang or an allocation beyond the limit is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "commands.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"mixtrain"};
  std::string cur;
  for (size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  if (!cur.empty() && args.size() < 64) args.push_back(cur);
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const int rc =
      mixtrain::cli::main_entry(static_cast<int>(args.size()), argv.data(), /*check_only=*/true);
  if (rc < 0 || rc > 2) __builtin_trap();  // main_entry's contract: 0, 1 or 2
  return 0;
}
