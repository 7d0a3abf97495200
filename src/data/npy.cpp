// NumPy .npy reader: the magic, the version (1.0, 2.0, 3.0), the header length and the header's
// Python dict literal ({'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }), then the
// array's bytes, whose length must match the shape exactly.
#include <fmt/format.h>
#include <cstring>

#include "data/formats.h"
#include "mixtrain/error.h"

namespace mixtrain::data {

namespace {

// Bytes as a message shows them: printable ASCII as is, others as \xNN.
std::string escaped(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 32 && u < 127 && c != '\\')
      out += c;
    else
      out += fmt::format("\\x{:02x}", u);
  }
  return out;
}

uint32_t le_u32(const char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// The fixed part before the dict: magic, version, header length. Needs at most 12 bytes.
struct Preamble {
  int major = 0, minor = 0;
  uint64_t dict_offset = 0, dict_bytes = 0;
};

Preamble parse_preamble(std::string_view head, const std::string& name, uint64_t file_size) {
  const std::string_view magic(kNpyMagic, sizeof kNpyMagic - 1);
  if (head.size() < magic.size() || head.substr(0, magic.size()) != magic)
    throw IOError(fmt::format(
        "npy {}: offset 0: not a .npy file: it starts with '{}', not the magic '\\x93NUMPY'", name,
        escaped(head.substr(0, std::min(head.size(), magic.size())))));
  if (head.size() < 8)
    throw IOError(fmt::format("npy {}: offset 6: the file ends inside the format version", name));
  Preamble p;
  p.major = static_cast<unsigned char>(head[6]);
  p.minor = static_cast<unsigned char>(head[7]);
  if (p.major < 1 || p.major > 3 || p.minor != 0)
    throw IOError(
        fmt::format("npy {}: offset 6: format version {}.{}; this reader knows 1.0, 2.0 and 3.0",
                    name, p.major, p.minor));
  const int len_bytes = p.major == 1 ? 2 : 4;  // 1.0: uint16; 2.0 and 3.0: uint32
  p.dict_offset = 8 + static_cast<uint64_t>(len_bytes);
  if (head.size() < p.dict_offset)
    throw IOError(fmt::format("npy {}: offset 8: the file ends inside the header length", name));
  p.dict_bytes = le_u32(head.data() + 8, len_bytes);
  if (p.dict_offset + p.dict_bytes > file_size)
    throw IOError(fmt::format(
        "npy {}: offset 8: a header of {} bytes from offset {} runs past the end of the {}-byte "
        "file",
        name, p.dict_bytes, p.dict_offset, file_size));
  return p;
}

// A value of the header dict: a string, a bool, a tuple of integers, or anything else as text.
struct PyValue {
  enum Kind { string, boolean, int_tuple, other } kind = other;
  std::string text;  // the string's contents, or the literal as written
  bool b = false;
  std::vector<int64_t> ints;
};

class DictParser {
 public:
  DictParser(std::string_view s, const std::string& name, uint64_t base)
      : s_(s), name_(name), base_(base) {}

  std::vector<std::pair<std::string, PyValue>> parse() {
    std::vector<std::pair<std::string, PyValue>> out;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const size_t key_at = i_;
      PyValue key = value();
      if (key.kind != PyValue::string) fail(key_at, "a key of the header dict is not a string");
      skip_ws();
      expect(':');
      skip_ws();
      out.emplace_back(key.text, value());
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != '}') fail(i_, "expected ',' or '}' in the header dict");
    }
    ++i_;
    skip_ws();
    if (i_ != s_.size()) fail(i_, "text after the header dict's closing '}'");
    return out;
  }

 private:
  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw IOError(fmt::format("npy {}: offset {}: {} (header: {})", name_, base_ + at, what,
                              escaped(s_.substr(0, 200))));
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(i_, fmt::format("expected '{}'", c));
    ++i_;
  }

  PyValue value() {
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::string;
      v.text = string_literal();
      return v;
    }
    const size_t start = i_;
    if (c == '(' && int_tuple(v.ints)) {
      v.kind = PyValue::int_tuple;
      v.text = std::string(s_.substr(start, i_ - start));
      return v;
    }
    i_ = start;
    // Anything else (True, False, a list of fields, a number): up to the next ',' or '}' at
    // depth 0, strings skipped whole.
    int depth = 0;
    while (i_ < s_.size()) {
      const char d = s_[i_];
      if (d == '\'' || d == '"') {
        string_literal();
        continue;
      }
      if (depth == 0 && (d == ',' || d == '}')) break;
      if (d == '(' || d == '[' || d == '{') ++depth;
      if (d == ')' || d == ']' || d == '}') --depth;
      ++i_;
    }
    v.text = std::string(s_.substr(start, i_ - start));
    while (!v.text.empty() && (v.text.back() == ' ' || v.text.back() == '\n')) v.text.pop_back();
    if (v.text.empty()) fail(start, "a value is missing");
    if (v.text == "True" || v.text == "False") {
      v.kind = PyValue::boolean;
      v.b = v.text == "True";
    }
    return v;
  }

  std::string string_literal() {
    const size_t start = i_;
    const char q = s_[i_++];
    std::string out;
    while (i_ < s_.size() && s_[i_] != q) {
      if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
      out += s_[i_++];
    }
    if (i_ >= s_.size()) fail(start, "a string is not closed");
    ++i_;
    return out;
  }

  // "(3, 4)", "(3,)", "()", Python 2's "(3L, 4L)". False (i_ left anywhere) if not that.
  bool int_tuple(std::vector<int64_t>& out) {
    ++i_;  // '('
    for (;;) {
      skip_ws();
      if (peek() == ')') {
        ++i_;
        return true;
      }
      if (peek() < '0' || peek() > '9') return false;
      uint64_t x = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (x > (uint64_t{1} << 62)) fail(i_, "a dimension is too large");
        x = x * 10 + static_cast<uint64_t>(peek() - '0');
        ++i_;
      }
      if (peek() == 'L') ++i_;
      out.push_back(static_cast<int64_t>(x));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') return false;
    }
  }

  std::string_view s_;
  const std::string& name_;
  uint64_t base_;
  size_t i_ = 0;
};

}  // namespace

NpyHeader parse_npy_header(std::string_view head, const std::string& name, uint64_t file_size) {
  const Preamble p = parse_preamble(head, name, file_size);
  if (head.size() < p.dict_offset + p.dict_bytes)
    throw IOError(fmt::format("npy {}: offset {}: the file ends inside the {}-byte header", name,
                              p.dict_offset, p.dict_bytes));
  NpyHeader h;
  h.major = p.major;
  h.minor = p.minor;
  h.data_offset = p.dict_offset + p.dict_bytes;
  const auto entries =
      DictParser(head.substr(p.dict_offset, p.dict_bytes), name, p.dict_offset).parse();
  bool have_descr = false, have_order = false, have_shape = false;
  for (const auto& [key, v] : entries) {
    if (key == "descr") {
      have_descr = true;
      h.descr = v.text;
      // "<f4": byte order, kind, item size. Anything else (a structured dtype's list,
      // "<M8[ns]") keeps byte_order 0 and is refused by the caller as an unsupported dtype.
      const std::string& d = v.text;
      if (v.kind == PyValue::string && d.size() >= 3 &&
          std::string_view("<>|=").find(d[0]) != std::string_view::npos &&
          d.find_first_not_of("0123456789", 2) == std::string::npos && d.size() <= 6) {
        h.byte_order = d[0];
        h.kind = d[1];
        h.itemsize = std::stoll(d.substr(2));
      } else if (v.kind == PyValue::string && d.size() >= 2) {
        h.kind = d[1];
      }
    } else if (key == "fortran_order") {
      have_order = true;
      if (v.kind != PyValue::boolean)
        throw IOError(
            fmt::format("npy {}: 'fortran_order' is {}, not True or False", name, v.text));
      h.fortran_order = v.b;
    } else if (key == "shape") {
      have_shape = true;
      if (v.kind != PyValue::int_tuple)
        throw IOError(
            fmt::format("npy {}: 'shape' is {}, not a tuple of integers", name, escaped(v.text)));
      h.shape = v.ints;
    }
  }
  for (const auto& [have, key] :
       {std::pair{have_descr, "descr"}, std::pair{have_order, "fortran_order"},
        std::pair{have_shape, "shape"}})
    if (!have)
      throw IOError(
          fmt::format("npy {}: offset {}: the header has no '{}'", name, p.dict_offset, key));
  if (h.itemsize > 0) {
    uint64_t bytes = static_cast<uint64_t>(h.itemsize);
    for (const int64_t d : h.shape)
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes))
        throw IOError(fmt::format("npy {}: shape {} of '{}' is more than 2^64 bytes", name,
                                  shape_str(h.shape), h.descr));
    h.data_bytes = bytes;
  }
  return h;
}

NpyFile::NpyFile(const std::string& path) : file_(path, "npy") {
  char pre[12];
  const size_t got = file_.read_at(0, pre, sizeof pre);
  const Preamble p = parse_preamble(std::string_view(pre, got), path, file_.size());
  std::string head(static_cast<size_t>(p.dict_offset + p.dict_bytes), '\0');
  file_.read_exact(0, head.data(), head.size(), "the header");
  header_ = parse_npy_header(head, path, file_.size());
}

void NpyFile::check_length() const {
  const NpyHeader& h = header_;
  const uint64_t have = file_.size() - h.data_offset;
  if (have != h.data_bytes)
    throw IOError(fmt::format(
        "npy {}: {}: shape {} of '{}' needs {} bytes of data from offset {}, the file holds {}",
        path(), have < h.data_bytes ? "truncated" : "trailing bytes", shape_str(h.shape), h.descr,
        h.data_bytes, h.data_offset, have));
}

void NpyFile::read_data(void* dst) const {
  check_length();
  file_.read_exact(header_.data_offset, dst, static_cast<size_t>(header_.data_bytes), "the array");
}

}  // namespace mixtrain::data
