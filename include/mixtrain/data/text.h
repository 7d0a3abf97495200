// Byte-level text data ("text:PATH"): a whole file as bytes (vocabulary 256), a train /
// validation split, and batches of random windows (inputs and next-byte targets, i64 [B, T]).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mixtrain/random.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

enum class TextSplit { train, validation };
const char* text_split_name(TextSplit s);

/// Inputs and targets, both i64 [B, T]: targets[b, t] = inputs[b, t + 1] within one window of
/// T + 1 consecutive bytes.
struct TextBatch {
  Tensor inputs;
  Tensor targets;
};

class ByteTextData {
 public:
  static constexpr int64_t kVocabSize = 256;

  /// Reads a file whole (plain or gzip-compressed: zlib reads both). The last
  /// validation_fraction of the bytes (rounded down) is the validation split. Throws IOError
  /// naming the file for a missing, unreadable or empty file; ConfigError for a fraction
  /// outside [0, 1).
  static ByteTextData load(const std::string& path, double validation_fraction = 0.1);
  /// Parses a data spec "text:PATH" and loads PATH; ConfigError naming the spec otherwise.
  static ByteTextData from_spec(const std::string& spec, double validation_fraction = 0.1);
  /// From bytes in memory; name is used in messages.
  static ByteTextData from_bytes(std::string bytes, std::string name,
                                 double validation_fraction = 0.1);

  const std::string& name() const { return name_; }
  int64_t vocab_size() const { return kVocabSize; }
  int64_t size(TextSplit s) const { return static_cast<int64_t>(bytes(s).size()); }
  std::string_view bytes(TextSplit s) const;

  /// B windows of T + 1 bytes at uniform random starts within the split, drawn from rng (one
  /// draw per row, in row order), so a seed fixes the batch. Throws ConfigError naming the
  /// file, the split and its length when it is shorter than T + 1 bytes.
  TextBatch sample(TextSplit split, int64_t batch, int64_t context, Rng& rng) const;

  /// Non-overlapping windows for evaluation: window k covers bytes [k*T, k*T + T + 1).
  int64_t num_windows(TextSplit split, int64_t context) const;
  /// Windows first .. first + count - 1 as one batch (count rows).
  TextBatch windows(TextSplit split, int64_t first, int64_t count, int64_t context) const;

 private:
  void check_window(TextSplit split, int64_t batch, int64_t context, const char* op) const;
  std::string name_;
  std::string data_;
  size_t split_ = 0;  // first validation byte
};

}  // namespace mixtrain
