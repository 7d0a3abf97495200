// Byte-level text data: file reading (plain or gzip), the split, random and sequential windows.
#include "mixtrain/data/text.h"

#include <unistd.h>

#include <fmt/format.h>
#include <sys/stat.h>
#include <zlib.h>
#include <cerrno>
#include <cstring>

#include "mixtrain/error.h"

namespace mixtrain {

const char* text_split_name(TextSplit s) {
  return s == TextSplit::train ? "training" : "validation";
}

namespace {

std::string read_whole(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw IOError(fmt::format("text {}: cannot open: {}", path, std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw IOError(fmt::format("text {}: not a regular file", path));
  gzFile f = ::gzopen(path.c_str(), "rb");
  if (!f) throw IOError(fmt::format("text {}: cannot open: {}", path, std::strerror(errno)));
  ::gzbuffer(f, 1 << 18);
  std::string out;
  // The file size is the exact length of a plain file and a first guess for a gzip one; the
  // buffer grows with what is really read, never with what a header claims.
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const int r = ::gzread(f, buf, sizeof buf);
    if (r < 0 || (r == 0 && [&] {
          int e = Z_OK;
          ::gzerror(f, &e);
          return e != Z_OK;
        }())) {
      int e = Z_OK;
      const char* msg = ::gzerror(f, &e);
      const std::string text = e == Z_ERRNO ? std::strerror(errno) : (msg ? msg : "zlib error");
      ::gzclose(f);
      throw IOError(fmt::format("text {}: read failed after {} bytes: {}", path, out.size(), text));
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::gzclose(f);
  return out;
}

}  // namespace

ByteTextData ByteTextData::from_bytes(std::string bytes, std::string name,
                                      double validation_fraction) {
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0))
    throw ConfigError(
        fmt::format("text {}: validation fraction {} outside [0, 1)", name, validation_fraction));
  if (bytes.empty()) throw IOError(fmt::format("text {}: the file is empty", name));
  ByteTextData d;
  d.name_ = std::move(name);
  d.data_ = std::move(bytes);
  const size_t n = d.data_.size();
  const size_t val = static_cast<size_t>(static_cast<double>(n) * validation_fraction);
  d.split_ = n - val;
  return d;
}

ByteTextData ByteTextData::load(const std::string& path, double validation_fraction) {
  return from_bytes(read_whole(path), path, validation_fraction);
}

ByteTextData ByteTextData::from_spec(const std::string& spec, double validation_fraction) {
  constexpr std::string_view kPrefix = "text:";
  if (spec.rfind(kPrefix, 0) != 0 || spec.size() == kPrefix.size())
    throw ConfigError(fmt::format("data spec '{}' is not of the form text:PATH", spec));
  return load(spec.substr(kPrefix.size()), validation_fraction);
}

std::string_view ByteTextData::bytes(TextSplit s) const {
  const std::string_view all(data_);
  return s == TextSplit::train ? all.substr(0, split_) : all.substr(split_);
}

void ByteTextData::check_window(TextSplit split, int64_t batch, int64_t context,
                                const char* op) const {
  if (batch < 1 || context < 1)
    throw ConfigError(fmt::format("text {}: {} needs batch >= 1 and context >= 1 (got {} and {})",
                                  name_, op, batch, context));
  const int64_t n = size(split);
  // context >= n, not n < context + 1: context may be any int64 (INT64_MAX + 1 overflows).
  if (context >= n)
    throw ConfigError(fmt::format(
        "text {}: the {} split has {} bytes, fewer than context + 1 = {} (the file has {} bytes)",
        name_, text_split_name(split), n, static_cast<uint64_t>(context) + 1, data_.size()));
  // The batch is two int64 tensors [batch, context] (inputs, targets) plus the window starts.
  // A batch that could never fit gets a clear error here, not std::bad_alloc (or minutes of
  // drawing starts into an overcommitted vector) later.
  int64_t bytes = 0;
  const bool overflow = __builtin_mul_overflow(batch, context, &bytes) ||
                        __builtin_mul_overflow(bytes, int64_t{16}, &bytes) ||
                        __builtin_add_overflow(bytes, batch * int64_t{8}, &bytes);
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const double ram = pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0.0;
  if (overflow || (ram > 0 && static_cast<double>(bytes) > ram))
    throw ConfigError(fmt::format(
        "text {}: {} of {} windows of context {} needs {} of int64 inputs and targets, more "
        "than this machine's {:.1f} GiB of memory; lower --batch or --context",
        name_, op, batch, context,
        overflow ? std::string("more than 2^63 bytes")
                 : fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1u << 30)),
        ram / (1u << 30)));
}

namespace {

TextBatch make_batch(std::string_view src, const std::vector<int64_t>& starts, int64_t t) {
  const int64_t b = static_cast<int64_t>(starts.size());
  TextBatch out{Tensor::empty({b, t}, DType::i64), Tensor::empty({b, t}, DType::i64)};
  int64_t* in = out.inputs.data<int64_t>();
  int64_t* tg = out.targets.data<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const auto* p = reinterpret_cast<const unsigned char*>(src.data() + starts[r]);
    for (int64_t i = 0; i < t; ++i) {
      in[r * t + i] = p[i];
      tg[r * t + i] = p[i + 1];
    }
  }
  return out;
}

}  // namespace

TextBatch ByteTextData::sample(TextSplit split, int64_t batch, int64_t context, Rng& rng) const {
  check_window(split, batch, context, "sample");
  const std::string_view src = bytes(split);
  // Starts in [0, n - T - 1]: n - T choices, each window T + 1 bytes long.
  const uint64_t choices = static_cast<uint64_t>(static_cast<int64_t>(src.size()) - context);
  std::vector<int64_t> starts(static_cast<size_t>(batch));
  for (auto& s : starts) s = static_cast<int64_t>(rng.below(choices));
  return make_batch(src, starts, context);
}

int64_t ByteTextData::num_windows(TextSplit split, int64_t context) const {
  if (context < 1) return 0;
  const int64_t n = size(split);
  return context >= n ? 0 : (n - 1) / context;
}

TextBatch ByteTextData::windows(TextSplit split, int64_t first, int64_t count,
                                int64_t context) const {
  check_window(split, count, context, "windows");
  const int64_t total = num_windows(split, context);
  // count > total - first, not first + count > total: both may be any int64 (count >= 1 here).
  if (first < 0 || first > total || count > total - first)
    throw ConfigError(
        fmt::format("text {}: {} windows from {} out of range: the {} split has {} "
                    "windows of context {}",
                    name_, count, first, text_split_name(split), total, context));
  std::vector<int64_t> starts(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) starts[k] = (first + k) * context;
  return make_batch(bytes(split), starts, context);
}

}  // namespace mixtrain
