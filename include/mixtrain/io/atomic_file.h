// Crash-safe file replacement: write a temp file beside the target, fsync it, rename it over
// the target, fsync the directory. A reader sees the old file or the new one, never a mix.
#pragma once

#include <cstddef>
#include <string>

namespace mixtrain {

/// Writes a file atomically. Usage:
///   AtomicFile f("ckpt/model.safetensors");
///   f.write(header.data(), header.size());
///   f.write(weights, nbytes);
///   f.commit();  // durable and visible from here on
/// Every failure (open, write including ENOSPC/EFBIG, fsync, close, rename) throws IOError
/// naming the target path and the errno text, and removes the temp file, so a previous file at
/// the target is left intact. Destroying an uncommitted AtomicFile also removes the temp file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends n bytes (retries short writes and EINTR).
  void write(const void* data, size_t n);
  /// fsync, close, rename over the target, fsync the directory.
  void commit();
  /// Removes the temp file without touching the target (also done by the destructor).
  void abort() noexcept;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }
  size_t bytes_written() const { return written_; }

 private:
  [[noreturn]] void fail(const char* what, int err);
  std::string path_;
  std::string temp_;
  int fd_ = -1;
  size_t written_ = 0;
  bool done_ = false;
};

/// Convenience: the whole file from one buffer.
void write_file_atomic(const std::string& path, const void* data, size_t n);

}  // namespace mixtrain
