// Tensor views and storage (whose bytes come from core/memory.cpp); filling, copying and moving
// between devices go through the device's backend.
#include "mixtrain/tensor.h"

#include <fmt/format.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "core/memory.h"

namespace mixtrain {

namespace {

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  if (d < -ndim || d >= ndim)
    throw ShapeError(fmt::format("{}: dimension {} out of range for a {}-d tensor", op, d, ndim));
  return d < 0 ? d + ndim : d;
}

}  // namespace

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Device parse_device(std::string_view name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  throw ConfigError(fmt::format("unknown device '{}' (expected cpu or cuda)", name));
}

DeviceSpec parse_device_spec(std::string_view spec) {
  DeviceSpec d;
  if (spec == "cpu") return d;
  if (spec.substr(0, 4) != "cuda")
    throw ConfigError(fmt::format("unknown device '{}' (expected cpu, cuda or cuda:N)", spec));
  d.device = Device::cuda;
  if (spec.size() == 4) return d;
  const std::string_view n = spec.substr(5);
  bool digits = spec[4] == ':' && !n.empty() && n.size() <= 4;
  for (char c : n) digits = digits && c >= '0' && c <= '9';
  if (!digits)
    throw ConfigError(fmt::format(
        "unknown device '{}' (expected cpu, cuda or cuda:N with N the GPU's index)", spec));
  d.index = std::stoi(std::string(n));
  return d;
}

std::string device_spec_str(const DeviceSpec& spec) {
  if (spec.device == Device::cuda && spec.index >= 0) return fmt::format("cuda:{}", spec.index);
  return device_name(spec.device);
}

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  // Checked: a shape from a file or a flag may claim more elements than int64 holds (signed
  // overflow is undefined behaviour, and a wrapped count would pass size checks).
  for (int64_t e : s)
    if (__builtin_mul_overflow(n, e, &n))
      throw ShapeError(
          fmt::format("shape {} has more elements than int64 can count", shape_str(s)));
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Storage::Storage(size_t nbytes, DType dtype, Device device)
    : nbytes_(nbytes), dtype_(dtype), device_(device) {
  data_ = memory::allocate(nbytes, dtype, device);
}

Storage::~Storage() {
  if (!released_) memory::deallocate(data_, nbytes_, dtype_, device_);
}

void Storage::release() {
  if (released_) return;
  memory::deallocate(data_, nbytes_, dtype_, device_);
  data_ = nullptr;
  released_ = true;
}

void Storage::materialize() {
  if (!released_) return;
  data_ = memory::allocate(nbytes_, dtype_, device_);
  released_ = false;
}

// ---- Tensor ----

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t e : shape)
    if (e < 0)
      throw ShapeError(fmt::format("empty: negative extent in shape {}", shape_str(shape)));
  // The strides are suffix products over every extent and the byte count is numel * size: both
  // fit int64 when the product of the non-zero extents times the element size does (a zero
  // extent makes numel 0 but not the strides: [0, 2^62, 2^62] would still wrap).
  int64_t span = static_cast<int64_t>(dtype_size(dtype));
  for (int64_t e : shape)
    if (e > 0 && __builtin_mul_overflow(span, e, &span))
      throw ShapeError(fmt::format("empty: shape {} {} overflows 64-bit sizes", shape_str(shape),
                                   dtype_name(dtype)));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), dtype, device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype,
                           Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw ShapeError(fmt::format("from_vector: {} values do not fill shape {}", values.size(),
                                 shape_str(shape)));
  Tensor t = empty(shape, dtype);
  convert(values.data(), DType::f32, t.raw_data(), dtype, values.size());
  return t.to(device);
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device) {
  // Borrowed memory: a zero-byte Storage keeps defined() true; raw_data() uses the pointer.
  Tensor t;
  t.storage_ = std::make_shared<Storage>(0, dtype, device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.borrowed_ = data;
  return t;
}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expect) return false;
    expect *= shape_[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor{} {}", shape_str(shape_), dtype_name(dtype_));
}

void* Tensor::raw_data() const {
  if (!defined()) throw Error("raw_data: tensor is undefined");
  if (!borrowed_ && !storage_->resident())
    throw Error(fmt::format(
        "{}: its storage is released (a sharded parameter read outside its unit's forward or "
        "backward, where its weights are gathered)",
        str()));
  char* base = static_cast<char*>(borrowed_ ? borrowed_ : storage_->data());
  return base + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

void Tensor::check_dtype(DType expected, const char* op) const {
  if (dtype_ != expected)
    throw DTypeError(fmt::format("{}: expected dtype {}, got {}", op, dtype_name(expected), str()));
}

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous())
    throw ShapeError(fmt::format("view: {} is not contiguous (use reshape)", str()));
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0)
        throw ShapeError(fmt::format("view: more than one -1 in {}", shape_str(shape)));
      infer = static_cast<int64_t>(i);
    } else if (s[i] < 0) {
      throw ShapeError(fmt::format("view: negative extent in {}", shape_str(shape)));
    } else if (__builtin_mul_overflow(known, s[i], &known)) {
      throw ShapeError(fmt::format("view: cannot view {} as {} (overflows 64-bit sizes)", str(),
                                   shape_str(shape)));
    }
  }
  if (infer >= 0) s[infer] = known == 0 ? 0 : numel() / known;
  if (shape_numel(s) != numel())
    throw ShapeError(fmt::format("view: cannot view {} as {}", str(), shape_str(shape)));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : contiguous().view(shape);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  Tensor t = *this;
  std::swap(t.shape_[d0], t.shape_[d1]);
  std::swap(t.strides_[d0], t.strides_[d1]);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  const int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  if (start < 0 || end > n || start > end)
    throw ShapeError(
        fmt::format("slice: range [{}, {}) out of bounds for dim {} of {}", start, end, d, str()));
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  if (shape.size() != strides.size())
    throw ShapeError(fmt::format("as_strided: shape {} and strides {} differ in rank",
                                 shape_str(shape), shape_str(strides)));
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = strides;
  t.offset_ = offset_ + offset;
  // The lowest and highest elements the view touches must lie inside the storage (borrowed
  // memory, Tensor::wrap, has no recorded size and is the caller's to keep in range).
  int64_t lo = t.offset_, hi = t.offset_;
  const bool empty = shape_numel(shape) == 0;
  for (size_t i = 0; i < shape.size() && !empty; ++i) {
    const int64_t reach = (shape[i] - 1) * strides[i];
    (reach < 0 ? lo : hi) += reach;
  }
  const int64_t cap = static_cast<int64_t>(storage_->nbytes() / element_size());
  if (!empty && (lo < 0 || (storage_->nbytes() > 0 && hi >= cap)))
    throw ShapeError(fmt::format("as_strided: shape {} strides {} offset {} reaches outside {}",
                                 shape_str(shape), shape_str(strides), offset, str()));
  return t;
}

Tensor Tensor::view_bytes(int64_t byte_offset, const Shape& shape, DType dtype) const {
  if (!is_contiguous()) throw ShapeError(fmt::format("view_bytes: {} is not contiguous", str()));
  const auto es = static_cast<int64_t>(dtype_size(dtype));
  const int64_t start = offset_ * static_cast<int64_t>(element_size()) + byte_offset;
  const int64_t len = shape_numel(shape) * es;
  if (byte_offset < 0 || start % es != 0 || byte_offset + len > static_cast<int64_t>(nbytes()))
    throw ShapeError(fmt::format("view_bytes: {} {} at byte {} does not fit {}", dtype_name(dtype),
                                 shape_str(shape), byte_offset, str()));
  Tensor t = *this;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.offset_ = start / es;
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device_);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype, device_);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_)
    throw ShapeError(fmt::format("copy_from: {} into {}", src.str(), str()));
  if (numel() == 0) return;
  if (src.device_ == device_) return backend_for(device_).copy(src, *this);
  // Across devices: the bytes move contiguous and in this tensor's dtype, converted on the
  // side that has them (so a host-side conversion never sees device memory).
  const Tensor s = src.to(dtype_).contiguous();
  Tensor d = is_contiguous() ? *this : empty(shape_, dtype_, device_);
  if (device_ == Device::cpu)
    backend_for(s.device_).download(s.raw_data(), d.raw_data(), d.nbytes());
  else
    backend_for(device_).upload(s.raw_data(), d.raw_data(), d.nbytes());
  if (!is_contiguous()) backend_for(device_).copy(d, *this);
}

void Tensor::fill(float value) {
  if (numel() == 0) return;
  backend_for(device_).fill(*this, value);
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  if (out.empty()) return out;
  const Tensor c = device_ == Device::cpu ? contiguous() : to(Device::cpu);
  convert(c.raw_data(), dtype_, out.data(), DType::f32, out.size());
  return out;
}

float Tensor::item() const {
  if (numel() != 1)
    throw ShapeError(fmt::format("item: {} has {} elements, not 1", str(), numel()));
  return to_vector()[0];
}

}  // namespace mixtrain
