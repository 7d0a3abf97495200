// InputFile: a regular file read by offset (pread), with messages that name the file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>

#include "data/formats.h"
#include "mixtrain/error.h"

namespace mixtrain::data {

InputFile::InputFile(const std::string& path, const char* format) : path_(path), format_(format) {
  if (path.empty()) throw IOError(fmt::format("{}: an empty file name", format));
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0)
    throw IOError(fmt::format("{} {}: cannot open: {}", format, path, std::strerror(errno)));
  struct stat st;
  std::string fault;
  if (::fstat(fd_, &st) != 0)
    fault = fmt::format("cannot stat: {}", std::strerror(errno));
  else if (!S_ISREG(st.st_mode))
    fault = "not a regular file";
  if (!fault.empty()) {
    ::close(fd_);
    fd_ = -1;
    throw IOError(fmt::format("{} {}: {}", format, path, fault));
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

size_t InputFile::read_at(uint64_t offset, void* dst, size_t n) const {
  char* p = static_cast<char*>(dst);
  size_t done = 0;
  while (done < n) {
    const size_t chunk = std::min<size_t>(n - done, size_t{1} << 30);
    const ssize_t r = ::pread(fd_, p + done, chunk, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      throw IOError(fmt::format("{} {}: read failed at offset {}: {}", format_, path_,
                                offset + done, std::strerror(errno)));
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

void InputFile::read_exact(uint64_t offset, void* dst, size_t n, const char* what) const {
  const size_t got = read_at(offset, dst, n);
  if (got < n)
    throw IOError(
        fmt::format("{} {}: truncated: {} needs {} bytes at offset {}, the file ends after {}",
                    format_, path_, what, n, offset, got));
}

}  // namespace mixtrain::data
