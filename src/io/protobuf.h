// The few protobuf wire-format pieces TensorBoard's event files need (varints, fixed-width
// doubles and floats, length-delimited fields, packed doubles), and the CRC32C that frames each
// record. Private to the library; tests check the bytes against hand-computed ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mixtrain::io {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord frames use it.
uint32_t crc32c(const void* data, size_t n);
/// TFRecord's masked form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

/// Appends protobuf fields to a byte string (proto3 wire format).
class ProtoWriter {
 public:
  void varint_field(int field, uint64_t v);         // wire type 0 (int64 as two's complement)
  void double_field(int field, double v);           // wire type 1, little-endian
  void float_field(int field, float v);             // wire type 5, little-endian
  void bytes_field(int field, std::string_view v);  // wire type 2 (string, bytes, messages)
  void packed_doubles(int field, const std::vector<double>& v);  // wire type 2, 8 bytes each
  const std::string& bytes() const { return out_; }

  static void put_varint(std::string& out, uint64_t v);

 private:
  void tag(int field, int wire_type) { put_varint(out_, (uint64_t(field) << 3) | wire_type); }
  std::string out_;
};

/// One TFRecord: uint64 length (LE), masked CRC of those 8 bytes, the data, masked CRC of it.
std::string tfrecord(std::string_view data);

}  // namespace mixtrain::io
