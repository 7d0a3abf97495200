// The file formats open_data() reads, below the DataSource adapters: .npy arrays, uint16 token
// files (llm.c's and headerless nanoGPT ones) and numeric CSV. Each reader validates as it reads
// and throws IOError naming the file, and the offset or line, of the first fault.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mixtrain/tensor.h"

namespace mixtrain::data {

/// A regular file opened for reading. IOError "FORMAT PATH: ..." for an empty path, a missing or
/// unreadable file, or a directory; `format` ("npy", "tokens", ...) starts every message.
class InputFile {
 public:
  InputFile(const std::string& path, const char* format);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  /// Up to n bytes from `offset`; fewer only where the file ends.
  size_t read_at(uint64_t offset, void* dst, size_t n) const;
  /// Exactly n bytes from `offset`, else IOError naming `what`, the offset and the bytes found.
  void read_exact(uint64_t offset, void* dst, size_t n, const char* what) const;

 private:
  std::string path_;
  const char* format_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// ---- .npy (NumPy's format, versions 1.0, 2.0 and 3.0) ----

inline constexpr char kNpyMagic[] = "\x93NUMPY";

struct NpyHeader {
  int major = 0, minor = 0;
  std::string descr;    ///< as written, e.g. "<f4"; for a structured dtype the list as text
  char byte_order = 0;  ///< '<', '>', '|' or '='; 0 when descr is not a plain "<f4"-style code
  char kind = 0;        ///< 'f' float, 'i' signed, 'u' unsigned, 'b' bool, others as written
  int64_t itemsize = 0;
  bool fortran_order = false;
  Shape shape;
  uint64_t data_offset = 0;  ///< where the array's bytes start
  uint64_t data_bytes = 0;   ///< numel × itemsize
};

/// Parses the magic, version and header dict from the start of a file (`head`, at least the
/// first min(file size, header length) bytes); `file_size` checks that the data is all there,
/// no more and no less. IOError names `name` and the offset of the fault.
NpyHeader parse_npy_header(std::string_view head, const std::string& name, uint64_t file_size);

/// Opens a .npy file and parses its header (parse_npy_header); read_data() then reads the array.
class NpyFile {
 public:
  explicit NpyFile(const std::string& path);
  const NpyHeader& header() const { return header_; }
  const std::string& path() const { return file_.path(); }
  /// IOError unless the file holds exactly header().data_bytes after the header (truncated, or
  /// trailing bytes). Call it before allocating for the array: the header's shape is a claim.
  void check_length() const;
  /// The array's header().data_bytes bytes, in file order (check_length() first).
  void read_data(void* dst) const;

 private:
  InputFile file_;
  NpyHeader header_;
};

// ---- uint16 token files ----

inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr int32_t kLlmcVersion = 1;
inline constexpr int64_t kLlmcHeaderInts = 256;

struct TokenFile {
  std::vector<uint16_t> tokens;
  uint64_t header_bytes = 0;  ///< 1024 for llm.c's format, 0 for a headerless file
};

/// llm.c's format (256 int32 little-endian: magic 20240520, version 1, the token count; then
/// the uint16 tokens) when the first int32 is the magic, else a headerless file of uint16
/// little-endian tokens. Checks the version, that the count matches the length exactly, an even
/// length for a headerless file, and at least one token.
TokenFile read_token_file(const std::string& path);

// ---- CSV ----

struct CsvTable {
  std::vector<std::string> columns;  ///< the header's names; empty when the file has none
  int64_t cols = 0;
  int64_t rows = 0;
  std::vector<double> values;  ///< rows × cols, row-major
  std::vector<int64_t> line;   ///< each row's line number in the file (1-based)
};

/// Comma-separated numbers, one row per line (blank lines skipped; fields may be quoted, but
/// a quoted comma is not supported). The first row is a header when one of its fields is not a
/// number. IOError names the file, the line and the column of a field that is not a finite
/// number or a row with the wrong number of fields.
CsvTable read_csv(const std::string& path);
/// "2 ('petal_width')" with a header, "2" without: how messages name column c.
std::string csv_column_name(const CsvTable& t, int64_t c);

}  // namespace mixtrain::data
