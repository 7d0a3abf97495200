// IDX reader over zlib's gz* API (which reads plain files transparently), validating every
// field against bounds and against the real file size before allocating.
#include "mixtrain/data/idx.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <cerrno>
#include <cstring>

#include "mixtrain/error.h"

namespace mixtrain {

namespace {

constexpr uint64_t kMaxItems = 10'000'000;
constexpr uint64_t kMaxSide = 4096;
constexpr uint64_t kMaxBytes = uint64_t{1} << 31;
// deflate cannot expand data by more than about 1032:1, so a gzip file of S bytes holds at most
// ~1032*S bytes; a header claiming more is lying and is refused before anything is allocated.
constexpr uint64_t kMaxDeflateRatio = 1032;

class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0)
      throw IOError(fmt::format("idx {}: cannot open: {}", path, std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) throw IOError(fmt::format("idx {}: not a regular file", path));
    file_size_ = static_cast<uint64_t>(st.st_size);
    f_ = ::gzopen(path.c_str(), "rb");
    if (!f_)
      throw IOError(fmt::format("idx {}: cannot open: {}", path,
                                errno ? std::strerror(errno) : "out of memory"));
    ::gzbuffer(f_, 1 << 18);
  }
  // Bytes in memory, copied into an anonymous memory file so that the very same gz* path
  // (gzip or plain, told apart by zlib) reads memory and files alike.
  GzFile(const void* data, size_t size, const std::string& name) : path_(name), file_size_(size) {
    const int fd = ::memfd_create("mixtrain-idx", MFD_CLOEXEC);
    if (fd < 0) throw IOError(fmt::format("idx {}: memfd_create: {}", name, std::strerror(errno)));
    const char* p = static_cast<const char*>(data);
    for (size_t done = 0; done < size;) {
      const ssize_t w = ::write(fd, p + done, size - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = errno;
        ::close(fd);
        throw IOError(fmt::format("idx {}: copying {} bytes to a memory file: {}", name, size,
                                  std::strerror(err)));
      }
      done += static_cast<size_t>(w);
    }
    f_ = ::lseek(fd, 0, SEEK_SET) == 0 ? ::gzdopen(fd, "rb") : nullptr;
    if (!f_) {
      ::close(fd);
      throw IOError(fmt::format("idx {}: cannot open the memory file", name));
    }
    ::gzbuffer(f_, 1 << 18);
  }
  ~GzFile() { ::gzclose(f_); }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  uint64_t file_size() const { return file_size_; }

  // Reads up to n bytes; returns how many were read (fewer only at the end of the data).
  // A damaged gzip stream throws with zlib's message.
  size_t read(void* dst, size_t n, const char* what) {
    char* p = static_cast<char*>(dst);
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int r = ::gzread(f_, p + done, chunk);
      if (r < 0) throw_gz_error(what);
      if (r == 0) {
        // gzread returns 0 both at a clean end and for a stream cut short: ask which.
        int errnum = Z_OK;
        ::gzerror(f_, &errnum);
        if (errnum != Z_OK) throw_gz_error(what);
        break;
      }
      done += static_cast<size_t>(r);
    }
    return done;
  }

  [[noreturn]] void throw_gz_error(const char* what) {
    int errnum = Z_OK;
    const char* msg = ::gzerror(f_, &errnum);
    if (errnum == Z_ERRNO) msg = std::strerror(errno);
    throw IOError(fmt::format("idx {}: reading {}: {} (damaged or truncated gzip data)", path_,
                              what, msg ? msg : "unknown zlib error"));
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  uint64_t file_size_ = 0;
};

uint32_t be32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

Tensor read_idx(GzFile& f, const std::string& path, uint32_t magic, int ndim, const char* kind) {
  unsigned char head[16];
  const size_t head_len = 4 + 4 * static_cast<size_t>(ndim);
  const size_t got = f.read(head, head_len, "header");
  if (got < 4)
    throw IOError(
        fmt::format("idx {}: file holds {} bytes, too short for the 4-byte magic", path, got));
  const uint32_t m = be32(head);
  if (m != magic)
    throw IOError(fmt::format(
        "idx {}: magic 0x{:08x}, expected 0x{:08x} ({}: unsigned bytes, {} dimension{})", path, m,
        magic, kind, ndim, ndim == 1 ? "" : "s"));
  if (got < head_len)
    throw IOError(fmt::format("idx {}: header truncated: {} of {} bytes", path, got, head_len));
  Shape shape;
  uint64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    const uint64_t ext = be32(head + 4 + 4 * d);
    const uint64_t bound = d == 0 ? kMaxItems : kMaxSide;
    if (ext == 0 || ext > bound)
      throw IOError(
          fmt::format("idx {}: dimension {} is {}, outside [1, {}]", path, d, ext, bound));
    total *= ext;  // cannot overflow: at most 1e7 * 4096 * 4096 < 2^64
    shape.push_back(static_cast<int64_t>(ext));
  }
  if (total > kMaxBytes || total > kMaxDeflateRatio * f.file_size() + 4096)
    throw IOError(fmt::format(
        "idx {}: shape {} claims {} bytes, more than a {}-byte file can hold (or above the {} byte "
        "bound)",
        path, shape_str(shape), total, f.file_size(), kMaxBytes));
  Tensor t = Tensor::empty(shape, DType::u8);
  const size_t n = f.read(t.raw_data(), static_cast<size_t>(total), "data");
  if (n < total)
    throw IOError(
        fmt::format("idx {}: truncated: shape {} needs {} data bytes but the file ends "
                    "after {}",
                    path, shape_str(shape), total, n));
  unsigned char extra[64];
  const size_t more = f.read(extra, sizeof extra, "trailing data");
  if (more > 0)
    throw IOError(fmt::format("idx {}: trailing data after the {} bytes that shape {} needs", path,
                              total, shape_str(shape)));
  return t;
}

}  // namespace

Tensor read_idx_images(const std::string& path) {
  GzFile f(path);
  return read_idx(f, path, kIdxImagesMagic, 3, "images");
}

Tensor read_idx_labels(const std::string& path) {
  GzFile f(path);
  return read_idx(f, path, kIdxLabelsMagic, 1, "labels");
}

Tensor read_idx_images_from_memory(const void* data, size_t size, const std::string& name) {
  GzFile f(data, size, name);
  return read_idx(f, name, kIdxImagesMagic, 3, "images");
}

Tensor read_idx_labels_from_memory(const void* data, size_t size, const std::string& name) {
  GzFile f(data, size, name);
  return read_idx(f, name, kIdxLabelsMagic, 1, "labels");
}

}  // namespace mixtrain
