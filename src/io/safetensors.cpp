// safetensors save/load. The loader treats the file as hostile: every length, offset and extent
// is checked against the real byte count before anything is allocated or read.
#include "mixtrain/io/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "mixtrain/error.h"
#include "mixtrain/io/atomic_file.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

namespace mixtrain {

namespace {

struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kDTypeNames[] = {
    {DType::f32, "F32"}, {DType::f64, "F64"},      {DType::bf16, "BF16"},
    {DType::f16, "F16"}, {DType::e4m3, "F8_E4M3"}, {DType::e5m2, "F8_E5M2"},
    {DType::i32, "I32"}, {DType::i64, "I64"},      {DType::u8, "U8"},
};

bool parse_st_dtype(const std::string& s, DType* out) {
  for (const auto& d : kDTypeNames)
    if (s == d.name) {
      *out = d.dtype;
      return true;
    }
  return false;
}

uint32_t crc32_of(const void* data, size_t n) {
  // crc32_z takes a size_t length, so tensors over 4 GiB are covered in one call.
  return static_cast<uint32_t>(
      ::crc32_z(::crc32_z(0L, Z_NULL, 0), static_cast<const Bytef*>(data), n));
}

// Where the bytes come from: a file descriptor (pread) or a memory buffer.
class Source {
 public:
  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  // Reads exactly n bytes at offset into dst or throws IOError.
  virtual void read(uint64_t offset, void* dst, size_t n) const = 0;
};

class MemorySource final : public Source {
 public:
  MemorySource(const void* data, size_t size)
      : data_(static_cast<const char*>(data)), size_(size) {}
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* dst, size_t n) const override {
    if (n) std::memcpy(dst, data_ + offset, n);  // ranges are validated by the caller
  }

 private:
  const char* data_;
  size_t size_;
};

class FileSource final : public Source {
 public:
  explicit FileSource(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      throw IOError(fmt::format("safetensors {}: cannot open: {}", path, std::strerror(errno)));
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      throw IOError(fmt::format("safetensors {}: fstat: {}", path, std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw IOError(fmt::format("safetensors {}: not a regular file", path));
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~FileSource() override { ::close(fd_); }
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* dst, size_t n) const override {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw IOError(fmt::format("safetensors {}: read at offset {}: {}", path_, offset,
                                  std::strerror(errno)));
      }
      if (r == 0)
        throw IOError(fmt::format(
            "safetensors {}: file ended at offset {} while {} more bytes were expected (was it "
            "truncated while being read?)",
            path_, offset, n));
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Thrown from the JSON parse callback to stop at absurd nesting (a valid header nests 3 deep).
struct TooDeep {};
constexpr int kMaxJsonDepth = 16;

}  // namespace

const char* safetensors_dtype_name(DType dt) {
  for (const auto& d : kDTypeNames)
    if (d.dtype == dt) return d.name;
  return "?";
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    std::string have;
    for (size_t i = 0; i < names_.size() && i < 20; ++i) have += (i ? ", " : "") + names_[i];
    if (names_.size() > 20) have += ", ...";
    throw IOError(fmt::format("safetensors {}: no tensor named '{}' (the file has {} tensors: {})",
                              path_, name, names_.size(), have));
  }
  return tensors_[it->second];
}

const Tensor& SafetensorsFile::require(const std::string& name, DType dtype,
                                       const Shape& shape) const {
  const Tensor& t = get(name);
  if (t.dtype() != dtype || t.shape() != shape)
    throw IOError(fmt::format("safetensors {}: tensor '{}' is {} {} but {} {} was expected", path_,
                              name, safetensors_dtype_name(t.dtype()), shape_str(t.shape()),
                              safetensors_dtype_name(dtype), shape_str(shape)));
  return t;
}

// The parser, shared by the file and memory entry points.
class SafetensorsLoader {
 public:
  static SafetensorsFile load(const Source& src, const std::string& name);
};

SafetensorsFile SafetensorsLoader::load(const Source& src, const std::string& name) {
  auto fail = [&](const std::string& what) -> IOError {
    return IOError(fmt::format("safetensors {}: {}", name, what));
  };
  const uint64_t file_size = src.size();
  if (file_size < 8)
    throw fail(fmt::format("file is {} bytes, too short for the 8-byte header length", file_size));
  unsigned char len_bytes[8];
  src.read(0, len_bytes, 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kSafetensorsMaxHeader)
    throw fail(fmt::format("header length {} exceeds the bound of {} bytes", header_len,
                           kSafetensorsMaxHeader));
  if (header_len > file_size - 8)
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes)", header_len,
                           file_size));
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  std::string header(header_len, '\0');
  src.read(8, header.data(), header_len);

  // Parse, recording duplicate top-level keys (nlohmann would silently keep the last one, and
  // two entries for one tensor name is a malformed file) and refusing absurd nesting.
  using json = nlohmann::json;
  std::set<std::string> seen;
  std::string duplicate;
  json root;
  try {
    root = json::parse(header, [&](int depth, json::parse_event_t ev, json& parsed) {
      if (depth > kMaxJsonDepth) throw TooDeep{};
      if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
      }
      return true;
    });
  } catch (const TooDeep&) {
    throw fail(fmt::format("header JSON nests deeper than {} levels", kMaxJsonDepth));
  } catch (const json::exception& e) {
    throw fail(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!duplicate.empty()) throw fail(fmt::format("header names '{}' twice", duplicate));
  if (!root.is_object())
    throw fail(fmt::format("header is a JSON {}, not an object", root.type_name()));

  SafetensorsFile out;
  out.path_ = name;
  std::map<std::string, std::string> all_meta;
  std::vector<Entry> entries;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object())
        throw fail(fmt::format("__metadata__ is a {}, not an object", v.type_name()));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw fail(fmt::format("__metadata__ value for '{}' is a {}, not a string", m.key(),
                                 m.value().type_name()));
        all_meta[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      return fail(fmt::format("tensor '{}': {}", key, what));
    };
    if (!v.is_object()) throw bad(fmt::format("entry is a {}, not an object", v.type_name()));
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end())
      throw bad("entry lacks one of \"dtype\", \"shape\", \"data_offsets\"");
    Entry e;
    e.name = key;
    if (!dt->is_string()) throw bad("dtype is not a string");
    if (!parse_st_dtype(dt->get<std::string>(), &e.dtype))
      throw bad(
          fmt::format("unknown dtype '{}' (mixtrain reads F32, F64, BF16, F16, F8_E4M3, "
                      "F8_E5M2, I32, I64, U8)",
                      dt->get<std::string>()));
    if (!sh->is_array()) throw bad("shape is not an array");
    uint64_t numel = 1;
    for (const json& x : *sh) {
      if (!x.is_number_integer())
        throw bad(fmt::format("shape {} has a non-integer extent", sh->dump()));
      if (!x.is_number_unsigned())
        throw bad(fmt::format("shape {} has a negative extent", sh->dump()));
      const uint64_t ext = x.get<uint64_t>();
      // Extents must fit int64 (Shape) and their product must not wrap.
      if (ext > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, ext, &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX))
        throw bad(fmt::format("shape {} overflows 64-bit element counts", sh->dump()));
      e.shape.push_back(static_cast<int64_t>(ext));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes))
      throw bad(fmt::format("shape {} overflows 64-bit byte counts", sh->dump()));
    // A zero extent makes numel 0, but the strides (suffix products over every extent) must
    // still fit int64: [0, 2^62, 2^62] holds no bytes yet has no representable layout.
    int64_t span = static_cast<int64_t>(dtype_size(e.dtype));
    for (int64_t ext : e.shape)
      if (ext > 0 && __builtin_mul_overflow(span, ext, &span))
        throw bad(fmt::format("shape {} overflows 64-bit strides", sh->dump()));
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      throw bad(fmt::format("data_offsets {} is not two non-negative integers", off->dump()));
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.begin > e.end)
      throw bad(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    if (e.end > data_size)
      throw bad(fmt::format("data_offsets [{}, {}] run past the end of the data ({} bytes)",
                            e.begin, e.end, data_size));
    if (e.end - e.begin != nbytes)
      throw bad(fmt::format("data_offsets [{}, {}] hold {} bytes but {} {} needs {}", e.begin,
                            e.end, e.end - e.begin, dt->get<std::string>(), sh->dump(), nbytes));
    entries.push_back(std::move(e));
  }

  // Tensors must tile the data section exactly: no overlap (two tensors aliasing bytes), no
  // gap and no trailing bytes (room to hide data, and a sign of a damaged file).
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < expected)
      throw fail(fmt::format("tensor '{}' data_offsets [{}, {}] overlap tensor '{}' [{}, {}]",
                             e.name, e.begin, e.end, prev->name, prev->begin, prev->end));
    if (e.begin > expected)
      throw fail(
          fmt::format("tensor '{}' data_offsets [{}, {}] leave a gap after byte {} (tensors "
                      "must be packed contiguously)",
                      e.name, e.begin, e.end, expected));
    expected = e.end;
    prev = &e;
  }
  if (expected != data_size)
    throw fail(
        fmt::format("tensors cover {} bytes but the data section holds {} ({} trailing "
                    "bytes)",
                    expected, data_size, data_size - expected));

  // Checksums: either none (a file from another writer) or one per tensor.
  std::map<std::string, uint32_t> crcs;
  for (const auto& [k, v] : all_meta) {
    if (k.rfind(kSafetensorsCrcPrefix, 0) != 0) {
      out.metadata_[k] = v;
      continue;
    }
    const std::string tname = k.substr(kSafetensorsCrcPrefix.size());
    if (!seen.count(tname) || tname == "__metadata__")
      throw fail(fmt::format("metadata '{}' is a checksum for a tensor the file does not have", k));
    uint32_t crc = 0;
    if (v.size() != 8 || v.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      throw fail(fmt::format("metadata '{}' = '{}' is not 8 hex digits", k, v));
    crc = static_cast<uint32_t>(std::stoul(v, nullptr, 16));
    crcs[tname] = crc;
  }
  if (!crcs.empty())
    for (const Entry& e : entries)
      if (!crcs.count(e.name))
        throw fail(fmt::format("tensor '{}' has no checksum while others do", e.name));

  // Every allocation below is bounded by the real data size, checked above.
  out.names_.reserve(entries.size());
  out.tensors_.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    const size_t n = static_cast<size_t>(e.end - e.begin);
    src.read(data_start + e.begin, t.raw_data(), n);  // straight into the tensor's storage
    if (!crcs.empty()) {
      const uint32_t got = crc32_of(t.raw_data(), n);
      if (got != crcs[e.name])
        throw fail(
            fmt::format("tensor '{}' fails its checksum (CRC32 {:08x}, stored {:08x}): the "
                        "file is corrupt",
                        e.name, got, crcs[e.name]));
    }
    out.index_[e.name] = out.names_.size();
    out.names_.push_back(e.name);
    out.tensors_.push_back(std::move(t));
  }
  out.checksummed_ = !crcs.empty();
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  FileSource src(path);
  return SafetensorsLoader::load(src, path);
}

SafetensorsFile load_safetensors_from_memory(const void* data, size_t size,
                                             const std::string& name) {
  MemorySource src(data, size);
  return SafetensorsLoader::load(src, name);
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) {
    return IOError(fmt::format("save_safetensors {}: {}", path, what));
  };
  // ordered_json keeps the caller's order in the header, which makes files easy to read.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& [k, v] : metadata) {
    if (k.rfind(kSafetensorsCrcPrefix, 0) == 0)
      throw fail(
          fmt::format("metadata key '{}' uses the reserved prefix '{}'", k, kSafetensorsCrcPrefix));
    meta[k] = v;
  }
  std::set<std::string> names;
  std::vector<Tensor> bodies;
  bodies.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw fail(fmt::format("invalid tensor name '{}'", name));
    if (!names.insert(name).second) throw fail(fmt::format("tensor name '{}' given twice", name));
    if (!t.defined()) throw fail(fmt::format("tensor '{}' is undefined", name));
    if (t.device() != Device::cpu)
      throw fail(fmt::format("tensor '{}' is on {}; copy it to the CPU first", name,
                             device_name(t.device())));
    Tensor c = t.contiguous();
    const uint64_t n = c.nbytes();
    header[name] = {{"dtype", safetensors_dtype_name(c.dtype())},
                    {"shape", c.shape()},
                    {"data_offsets", {offset, offset + n}}};
    meta[std::string(kSafetensorsCrcPrefix) + name] =
        fmt::format("{:08x}", crc32_of(c.raw_data(), n));
    offset += n;
    bodies.push_back(std::move(c));
  }
  // __metadata__ first, as the reference writer does. ordered_json has no insert-at-front, so
  // build the final object in order.
  nlohmann::ordered_json full = nlohmann::ordered_json::object();
  full["__metadata__"] = std::move(meta);
  for (auto it = header.begin(); it != header.end(); ++it) full[it.key()] = std::move(it.value());
  std::string text = full.dump();
  // Pad with spaces so the data starts 8-byte aligned (lets readers mmap f64/i64 in place).
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  uint64_t hl = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hl >> (8 * i));

  AtomicFile f(path);
  f.write(len, 8);
  f.write(text.data(), text.size());
  for (const Tensor& c : bodies) f.write(c.raw_data(), c.nbytes());
  f.commit();
}

}  // namespace mixtrain
