// Data files as other tools write them, for tests: numpy's .npy and llm.c's token files.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "mixtrain/tensor.h"

namespace mixtrain::test {

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A .npy file as numpy writes it: magic, version, header length, the dict padded with spaces
// to a multiple of 64 bytes and ended by '\n', then the data.
inline std::string npy(const std::string& descr, const Shape& shape, const std::string& data,
                       int major = 1, bool fortran = false) {
  std::string dims;
  for (const int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(3, 4)" but "(3,)"
  if (shape.size() == 1) dims.resize(dims.size() - 1);
  // A structured dtype's descr is a list, written as is.
  const std::string d = descr.front() == '[' ? descr : "'" + descr + "'";
  std::string dict = "{'descr': " + d + ", 'fortran_order': " + (fortran ? "True" : "False") +
                     ", 'shape': (" + dims + "), }";
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const uint32_t len = static_cast<uint32_t>(dict.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>(len >> 8);
  if (major != 1) out += std::string("\0\0", 2);
  return out + dict + data;
}

// llm.c's token file: 256 int32 (magic, version, count), then the uint16 tokens.
inline std::string llmc(const std::vector<uint16_t>& tokens, int32_t version = 1,
                        int64_t count = -1) {
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = version;
  header[2] = static_cast<int32_t>(count < 0 ? static_cast<int64_t>(tokens.size()) : count);
  return bytes_of(header) + bytes_of(tokens);
}

}  // namespace mixtrain::test
