// Helpers shared by the tests that run the trainer end to end: a fresh per-process run folder
// and the bytes of every tensor in a run's newest checkpoint (for bit-identity checks).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "mixtrain/io/safetensors.h"
#include "train/checkpoint.h"

namespace mixtrain::test {

/// <tmp>/mixtrain_<suite>_<name>_<pid>, emptied.
inline std::filesystem::path fresh_run_dir(const std::string& suite, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            ("mixtrain_" + suite + "_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p;
}

/// Every tensor of the newest checkpoint in `out` (a sharded one put back together), by name,
/// as raw bytes.
inline std::map<std::string, std::vector<uint8_t>> newest_checkpoint_tensors(
    const std::filesystem::path& out) {
  const auto files = train::list_checkpoints(out);
  EXPECT_FALSE(files.empty()) << out;
  std::map<std::string, std::vector<uint8_t>> w;
  if (files.empty()) return w;
  for (const auto& [n, tensor] : train::read_checkpoint(files.front()).tensors) {
    const Tensor t = tensor.contiguous();
    const auto* p = static_cast<const uint8_t*>(t.raw_data());
    w[n] = std::vector<uint8_t>(p, p + t.nbytes());
  }
  return w;
}

}  // namespace mixtrain::test
