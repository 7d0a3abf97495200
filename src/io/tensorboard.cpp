// TensorBoard event files (include/mixtrain/io/tensorboard.h) and the protobuf and TFRecord
// encoding under them (src/io/protobuf.h). The field numbers are those of TensorBoard's
// tensorboard/compat/proto/{event,summary}.proto:
//   Event          wall_time=1 double, step=2 int64, file_version=3 string, summary=5,
//                  session_log=7 (SessionLog status=1 enum, START = 1)
//   Summary        value=1 (repeated Value)
//   Summary.Value  tag=1, simple_value=2 float, histo=5 HistogramProto, metadata=9
//   HistogramProto min=1 max=2 num=3 sum=4 sum_squares=5 doubles,
//                  bucket_limit=6 bucket=7 packed doubles
//   SummaryMetadata plugin_data=1 (PluginData plugin_name=1), display_name=2,
//                  summary_description=3
#include "mixtrain/io/tensorboard.h"

#include <unistd.h>

#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "io/protobuf.h"
#include "mixtrain/error.h"

namespace mixtrain::io {

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0u);
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int k = 0; k < bytes; ++k) out.push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void ProtoWriter::put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void ProtoWriter::varint_field(int field, uint64_t v) {
  tag(field, 0);
  put_varint(out_, v);
}

void ProtoWriter::double_field(int field, double v) {
  tag(field, 1);
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_le(out_, bits, 8);
}

void ProtoWriter::float_field(int field, float v) {
  tag(field, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_le(out_, bits, 4);
}

void ProtoWriter::bytes_field(int field, std::string_view v) {
  tag(field, 2);
  put_varint(out_, v.size());
  out_.append(v.data(), v.size());
}

void ProtoWriter::packed_doubles(int field, const std::vector<double>& v) {
  tag(field, 2);
  put_varint(out_, 8 * v.size());
  for (double x : v) {
    uint64_t bits;
    std::memcpy(&bits, &x, 8);
    put_le(out_, bits, 8);
  }
}

std::string tfrecord(std::string_view data) {
  std::string r;
  put_le(r, data.size(), 8);
  put_le(r, masked_crc32c(r.data(), 8), 4);
  r.append(data.data(), data.size());
  put_le(r, masked_crc32c(data.data(), data.size()), 4);
  return r;
}

EventWriter::EventWriter(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw IOError(fmt::format("{}: cannot create the TensorBoard folder: {}", dir, ec.message()));
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  const auto now = static_cast<long long>(wall_time());
  std::string base = fmt::format("events.out.tfevents.{}.{}", now, host);
  path_ = (fs::path(dir) / base).string();
  for (int k = 2; fs::exists(path_); ++k)  // a resume within the same second
    path_ = (fs::path(dir) / fmt::format("{}.{}", base, k)).string();
  out_.open(path_, std::ios::binary);
  if (!out_) throw IOError(fmt::format("{}: cannot create the TensorBoard event file", path_));
  ProtoWriter e;
  e.double_field(1, wall_time());
  e.varint_field(2, 0);
  e.bytes_field(3, "brain.Event:2");
  out_ << tfrecord(e.bytes());
  flush();
}

void EventWriter::write_event(int64_t step, const std::string& summary) {
  ProtoWriter e;
  e.double_field(1, wall_time());
  e.varint_field(2, static_cast<uint64_t>(step));
  e.bytes_field(5, summary);
  out_ << tfrecord(e.bytes());
}

void EventWriter::session_start(int64_t step) {
  ProtoWriter log;
  log.varint_field(1, 1);  // SessionLog.START
  ProtoWriter e;
  e.double_field(1, wall_time());
  e.varint_field(2, static_cast<uint64_t>(step));
  e.bytes_field(7, log.bytes());
  out_ << tfrecord(e.bytes());
  flush();
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value) {
  ProtoWriter v;
  v.bytes_field(1, tag);
  v.float_field(2, static_cast<float>(value));
  ProtoWriter s;
  s.bytes_field(1, v.bytes());
  write_event(step, s.bytes());
}

void EventWriter::histogram(const std::string& tag, int64_t step, const Histogram& h,
                            const std::string& description) {
  ProtoWriter hp;
  hp.double_field(1, h.min);
  hp.double_field(2, h.max);
  hp.double_field(3, h.num);
  hp.double_field(4, h.sum);
  hp.double_field(5, h.sum_squares);
  hp.packed_doubles(6, h.bucket_limit);
  hp.packed_doubles(7, h.bucket);
  ProtoWriter v;
  v.bytes_field(1, tag);
  v.bytes_field(5, hp.bytes());
  // SummaryMetadata: plugin_data (PluginData{plugin_name=1}) names the histograms plugin, as
  // TensorBoard's own migration of a `histo` value does; the description is the markdown.
  ProtoWriter plugin;
  plugin.bytes_field(1, "histograms");
  ProtoWriter md;
  md.bytes_field(1, plugin.bytes());
  if (!description.empty()) md.bytes_field(3, description);
  v.bytes_field(9, md.bytes());
  ProtoWriter s;
  s.bytes_field(1, v.bytes());
  write_event(step, s.bytes());
}

void EventWriter::flush() {
  out_.flush();
  if (!out_) throw IOError(fmt::format("{}: writing the TensorBoard event file failed", path_));
}

}  // namespace mixtrain::io
