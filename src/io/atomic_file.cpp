// AtomicFile: temp file + fsync + rename + directory fsync, with cleanup on every failure path.
#include "mixtrain/io/atomic_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "mixtrain/error.h"

namespace mixtrain {

namespace {

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Testing aid for the crash-safety test (tests/kill_resume_test.cpp): with
// MIXTRAIN_TEST_SLOW_WRITES=US set, writes go out in 64 KiB pieces with a US-microsecond pause
// after each (and before the rename), so a SIGKILL at a random moment often lands inside a
// write. Read once; unset (the normal case) costs one branch per write.
long slow_write_us() {
  static const long us = [] {
    const char* e = std::getenv("MIXTRAIN_TEST_SLOW_WRITES");
    return e ? std::max(0L, std::strtol(e, nullptr, 10)) : 0L;
  }();
  return us;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  if (path_.empty() || path_.back() == '/')
    throw IOError(fmt::format("write '{}': not a file path", path_));
  // Same directory as the target: rename(2) is only atomic within one file system. The name
  // starts with '.' so globs over the directory do not pick up half-written files.
  temp_ = fmt::format("{}/.{}.tmp.XXXXXX", dir_of(path_), base_of(path_));
  fd_ = ::mkstemp(temp_.data());
  if (fd_ < 0) {
    const int err = errno;
    temp_.clear();
    done_ = true;
    throw IOError(fmt::format("write {}: cannot create temp file in {}: {}", path_, dir_of(path_),
                              std::strerror(err)));
  }
  // mkstemp creates 0600; a model or checkpoint file is ordinary data.
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() { abort(); }

void AtomicFile::abort() noexcept {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::fail(const char* what, int err) {
  abort();
  throw IOError(fmt::format("write {}: {} failed after {} bytes: {}", path_, what, written_,
                            std::strerror(err)));
}

void AtomicFile::write(const void* data, size_t n) {
  if (done_) throw IOError(fmt::format("write {}: file already committed or aborted", path_));
  const char* p = static_cast<const char*>(data);
  const long pause_us = slow_write_us();
  // Cap each call at 1 GiB: Linux write() transfers at most ~2 GiB at once anyway.
  const size_t piece = pause_us > 0 ? size_t{1} << 16 : size_t{1} << 30;
  while (n > 0) {
    if (pause_us > 0 && written_ > 0) ::usleep(static_cast<useconds_t>(pause_us));
    const ssize_t r = ::write(fd_, p, n < piece ? n : piece);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("write", errno);
    }
    if (r == 0) fail("write", ENOSPC);  // a zero-length write of a non-empty buffer: disk full
    p += r;
    n -= static_cast<size_t>(r);
    written_ += static_cast<size_t>(r);
  }
}

void AtomicFile::commit() {
  if (done_) throw IOError(fmt::format("write {}: file already committed or aborted", path_));
  // fsync before rename: otherwise a crash can leave the new name pointing at unwritten blocks.
  // Delayed allocation means ENOSPC can surface only here, so its result matters.
  if (const long pause_us = slow_write_us(); pause_us > 0)
    ::usleep(static_cast<useconds_t>(pause_us));
  if (::fsync(fd_) != 0) fail("fsync", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close", errno);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) fail("rename", errno);
  done_ = true;  // the temp name is gone: nothing left to clean up
  // fsync the directory so the rename itself survives a crash.
  const std::string dir = dir_of(path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    throw IOError(
        fmt::format("write {}: open directory {} for fsync: {}", path_, dir, std::strerror(errno)));
  if (::fsync(dfd) != 0) {
    const int err = errno;
    ::close(dfd);
    throw IOError(fmt::format("write {}: fsync directory {}: {}", path_, dir, std::strerror(err)));
  }
  ::close(dfd);
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace mixtrain
