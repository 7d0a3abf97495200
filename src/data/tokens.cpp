// uint16 token files: llm.c's (a 1024-byte header of 256 little-endian int32: magic 20240520,
// version 1, the token count) and headerless nanoGPT ones (the whole file is tokens).
#include <fmt/format.h>
#include <bit>
#include <cstring>

#include "data/formats.h"
#include "mixtrain/error.h"

namespace mixtrain::data {

namespace {

int32_t le_i32(const unsigned char* p) {
  return static_cast<int32_t>(uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                              (uint32_t{p[3]} << 24));
}

}  // namespace

TokenFile read_token_file(const std::string& path) {
  const InputFile f(path, "tokens");
  const uint64_t size = f.size();
  unsigned char first[4] = {};
  const size_t got = f.read_at(0, first, sizeof first);
  TokenFile out;
  uint64_t count = 0;
  if (got == 4 && le_i32(first) == kLlmcMagic) {
    constexpr uint64_t kHeaderBytes = kLlmcHeaderInts * 4;
    if (size < kHeaderBytes)
      throw IOError(fmt::format(
          "tokens {}: starts with llm.c's magic {} but holds {} bytes, less than its {}-byte "
          "header",
          path, kLlmcMagic, size, kHeaderBytes));
    unsigned char header[kHeaderBytes];
    f.read_exact(0, header, sizeof header, "the header");
    const int32_t version = le_i32(header + 4);
    if (version != kLlmcVersion)
      throw IOError(fmt::format(
          "tokens {}: offset 4: version {}; this reader knows llm.c's version {} (uint16 tokens{})",
          path, version, kLlmcVersion, version == 2 ? "; version 2 holds uint32 tokens" : ""));
    const int32_t n = le_i32(header + 8);
    if (n < 0)
      throw IOError(fmt::format("tokens {}: offset 8: token count {} is negative", path, n));
    count = static_cast<uint64_t>(n);
    const uint64_t expect = kHeaderBytes + 2 * count;
    if (size != expect)
      throw IOError(fmt::format(
          "tokens {}: {}: the header (offset 8) counts {} tokens, {} bytes with the header, but "
          "the file holds {} bytes",
          path, size < expect ? "truncated" : "trailing bytes", count, expect, size));
    out.header_bytes = kHeaderBytes;
  } else {
    if (size % 2 != 0)
      throw IOError(fmt::format(
          "tokens {}: {} bytes, an odd length: a headerless token file is uint16 tokens (and "
          "the file does not start with llm.c's magic {})",
          path, size, kLlmcMagic));
    count = size / 2;
  }
  if (count == 0) throw IOError(fmt::format("tokens {}: the file holds no tokens", path));
  out.tokens.resize(static_cast<size_t>(count));
  f.read_exact(out.header_bytes, out.tokens.data(), static_cast<size_t>(2 * count), "the tokens");
  if constexpr (std::endian::native == std::endian::big)
    for (uint16_t& t : out.tokens) t = static_cast<uint16_t>((t >> 8) | (t << 8));
  return out;
}

}  // namespace mixtrain::data
