// safetensors files: save (atomic, with a CRC32 per tensor) and load (validated, never trusting
// the file). Format: u64 little-endian header length N, N bytes of JSON header, raw data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixtrain/tensor.h"

namespace mixtrain {

/// Prefix of the __metadata__ keys that hold each tensor's CRC32 (8 lower-case hex digits):
/// "mixtrain.crc32.<tensor name>".
inline constexpr std::string_view kSafetensorsCrcPrefix = "mixtrain.crc32.";
/// Largest JSON header accepted on load (the Python/Rust reference uses the same 100 MB bound).
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

/// The safetensors name of a dtype ("F32", "BF16", "F8_E4M3", ...).
const char* safetensors_dtype_name(DType dt);

/// A loaded file: tensors in file (offset) order, and its string metadata.
class SafetensorsFile {
 public:
  /// The path (or the name given to load_safetensors_from_memory); used in every message.
  const std::string& path() const { return path_; }
  /// Tensor names in file (data offset) order.
  const std::vector<std::string>& names() const { return names_; }
  size_t size() const { return names_.size(); }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  /// The tensor called name; throws IOError naming the file and the missing tensor.
  const Tensor& get(const std::string& name) const;
  /// get(name), and throws IOError naming the file, the tensor and the mismatch when its dtype or
  /// shape differ from the ones expected.
  const Tensor& require(const std::string& name, DType dtype, const Shape& shape) const;
  /// The __metadata__ entries, without the mixtrain.crc32.* checksums.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// True when the file carried checksums (written by mixtrain) and they were all verified.
  bool checksummed() const { return checksummed_; }

 private:
  friend class SafetensorsLoader;
  std::string path_;
  std::vector<std::string> names_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  bool checksummed_ = false;
};

/// Writes tensors (any layout; CPU) in the given order with their CRC32s added to metadata.
/// Atomic (see AtomicFile): on any failure throws IOError naming path and errno text, and a
/// previous file at path is left as it was. Names must be unique, non-empty, not
/// "__metadata__"; metadata keys must not start with kSafetensorsCrcPrefix.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads and validates a whole file: one read per tensor straight into its storage. Throws
/// IOError naming the file and the fault for anything malformed, and for a checksum mismatch
/// naming the tensor.
SafetensorsFile load_safetensors(const std::string& path);

/// The same parser over bytes in memory (for fuzzing and embedded files); name is used in
/// messages in place of a path.
SafetensorsFile load_safetensors_from_memory(const void* data, size_t size,
                                             const std::string& name = "<memory>");
inline SafetensorsFile load_safetensors_from_memory(std::string_view bytes,
                                                    const std::string& name = "<memory>") {
  return load_safetensors_from_memory(bytes.data(), bytes.size(), name);
}

}  // namespace mixtrain
