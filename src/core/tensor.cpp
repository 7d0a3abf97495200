// Tensor views and storage (whose bytes come from core/memory.cpp).
#include "mixtrain/tensor.h"

#include <fmt/format.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/dispatch.h"
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
  if (device != Device::cpu)
    throw BackendError("this build of mixtrain has no CUDA backend (configure with MIXTRAIN_CUDA)");
  data_ = memory::allocate(nbytes, dtype);
}

Storage::~Storage() { memory::deallocate(data_, nbytes_, dtype_); }

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
  std::memset(t.raw_data(), 0, t.nbytes());  // all-zero bits is +0 in every dtype
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw ShapeError(fmt::format("from_vector: {} values do not fill shape {}", values.size(),
                                 shape_str(shape)));
  Tensor t = empty(shape, dtype);
  convert(values.data(), DType::f32, t.raw_data(), dtype, values.size());
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype) {
  // Borrowed memory: a zero-byte Storage keeps defined() true; raw_data() uses the pointer.
  Tensor t;
  t.storage_ = std::make_shared<Storage>(0, dtype, Device::cpu);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
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

namespace {
// Visits every element of a strided view in row-major order: f(linear_index, element_offset).
template <class F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& f) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const size_t nd = shape.size();
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (size_t k = nd; k-- > 0;) {
      if (++idx[k] < shape[k]) {
        off += strides[k];
        break;
      }
      off -= strides[k] * (shape[k] - 1);
      idx[k] = 0;
    }
  }
}
}  // namespace

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

namespace {

// Merges adjacent dims that are contiguous with each other in both views (and drops size-1
// dims), so a transposed-heads copy becomes a few long runs instead of one call per element.
void collapse_dims(Shape& shape, Shape& sa, Shape& sb) {
  Shape s2, a2, b2;
  for (size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] == 1) continue;
    if (!s2.empty() && a2.back() == sa[k] * shape[k] && b2.back() == sb[k] * shape[k]) {
      s2.back() *= shape[k];
      a2.back() = sa[k];
      b2.back() = sb[k];
    } else {
      s2.push_back(shape[k]);
      a2.push_back(sa[k]);
      b2.push_back(sb[k]);
    }
  }
  if (s2.empty()) s2 = {1}, a2 = {1}, b2 = {1};
  shape = s2, sa = a2, sb = b2;
}

template <class E>
void copy_run(char* d, int64_t ds, const char* s, int64_t ss, int64_t n) {
  E* dp = reinterpret_cast<E*>(d);
  const E* sp = reinterpret_cast<const E*>(s);
  for (int64_t j = 0; j < n; ++j) dp[j * ds] = sp[j * ss];
}

// The last two dims of a copy where one side runs along dim -1 and the other along dim -2 (a
// transpose().contiguous(), say), by 32×32 tiles through an L1 buffer: the tile is read as 32
// contiguous runs of the source and written as 32 contiguous runs of the destination, where
// element by element every access of the strided side touched a new cache line (and strides of
// 4 KiB alias one L1 set): a bf16 2048×2048 transpose took 11 ms. Outer dims are batches.
template <class E>
void tiled_transpose_copy(char* dst, const Shape& ds, const char* src, const Shape& ss,
                          const Shape& shape) {
  constexpr int64_t kT = 32;
  const size_t nd = shape.size();
  const int64_t R = shape[nd - 2], C = shape[nd - 1];
  const int64_t dr = ds[nd - 2], dc = ds[nd - 1], sr = ss[nd - 2], sc = ss[nd - 1];
  const bool src_rows = sc == 1;  // the source runs along c (so the destination along r)
  const int64_t batches = shape_numel(shape) / (R * C);
  const int64_t tr = (R + kT - 1) / kT, tc = (C + kT - 1) / kT;
#pragma omp parallel for schedule(static) if (R * C * batches * int64_t{sizeof(E)} > \
                                              (int64_t{1} << 18))
  for (int64_t t = 0; t < batches * tr * tc; ++t) {
    int64_t rem = t / (tr * tc), doff = 0, soff = 0;
    for (size_t k = nd - 2; k-- > 0;) {
      const int64_t i = rem % shape[k];
      rem /= shape[k];
      doff += i * ds[k];
      soff += i * ss[k];
    }
    const int64_t r0 = (t / tc) % tr * kT, c0 = t % tc * kT;
    const int64_t rn = std::min(kT, R - r0), cn = std::min(kT, C - c0);
    E* d = reinterpret_cast<E*>(dst) + doff + r0 * dr + c0 * dc;
    const E* sp = reinterpret_cast<const E*>(src) + soff + r0 * sr + c0 * sc;
    E buf[kT][kT];   // buf[r][c]
    if (src_rows) {  // read rows of the source, write columns (runs along r) of the destination
      for (int64_t r = 0; r < rn; ++r)
        for (int64_t c = 0; c < cn; ++c) buf[r][c] = sp[r * sr + c];
      for (int64_t c = 0; c < cn; ++c)
        for (int64_t r = 0; r < rn; ++r) d[r + c * dc] = buf[r][c];
    } else {  // read columns of the source, write rows of the destination
      for (int64_t c = 0; c < cn; ++c)
        for (int64_t r = 0; r < rn; ++r) buf[r][c] = sp[r + c * sc];
      for (int64_t r = 0; r < rn; ++r)
        for (int64_t c = 0; c < cn; ++c) d[r * dr + c] = buf[r][c];
    }
  }
}

// dst[view] = src[view] for two same-shape strided views of one element size: the innermost
// dim is a memcpy when unit-stride on both sides, else a typed loop; the outer rows are split
// over threads when there is enough to move. Transposed last dims go by tiles.
void strided_copy(char* dst, Shape dst_strides, const char* src, Shape src_strides, Shape shape,
                  size_t es) {
  collapse_dims(shape, dst_strides, src_strides);
  const size_t nd = shape.size();
  if (nd >= 2 && shape[nd - 1] >= 16 && shape[nd - 2] >= 16 &&
      ((dst_strides[nd - 1] == 1 && src_strides[nd - 2] == 1) ||
       (src_strides[nd - 1] == 1 && dst_strides[nd - 2] == 1))) {
    switch (es) {
      case 2:
        return tiled_transpose_copy<uint16_t>(dst, dst_strides, src, src_strides, shape);
      case 4:
        return tiled_transpose_copy<uint32_t>(dst, dst_strides, src, src_strides, shape);
      case 8:
        return tiled_transpose_copy<uint64_t>(dst, dst_strides, src, src_strides, shape);
      default:
        break;
    }
  }
  const int64_t inner = shape[nd - 1], di = dst_strides[nd - 1], si = src_strides[nd - 1];
  const int64_t rows = shape_numel(shape) / std::max<int64_t>(inner, 1);
  const int64_t esz = static_cast<int64_t>(es);
#pragma omp parallel for schedule(static) if (rows * inner * esz > (int64_t{1} << 18) && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, doff = 0, soff = 0;
    for (size_t k = nd - 1; k-- > 0;) {
      const int64_t i = rem % shape[k];
      rem /= shape[k];
      doff += i * dst_strides[k];
      soff += i * src_strides[k];
    }
    char* d = dst + doff * esz;
    const char* s = src + soff * esz;
    if (di == 1 && si == 1) {
      std::memcpy(d, s, static_cast<size_t>(inner * esz));
      continue;
    }
    switch (es) {
      case 1:
        copy_run<uint8_t>(d, di, s, si, inner);
        break;
      case 2:
        copy_run<uint16_t>(d, di, s, si, inner);
        break;
      case 4:
        copy_run<uint32_t>(d, di, s, si, inner);
        break;
      case 8:
        copy_run<uint64_t>(d, di, s, si, inner);
        break;
      default:
        for (int64_t j = 0; j < inner; ++j) std::memcpy(d + j * di * esz, s + j * si * esz, es);
    }
  }
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_)
    throw ShapeError(fmt::format("copy_from: {} into {}", src.str(), str()));
  if (numel() == 0) return;
  if (src.is_contiguous() && is_contiguous()) {
    convert(src.raw_data(), src.dtype_, raw_data(), dtype_, static_cast<size_t>(numel()));
    return;
  }
  if (src.dtype_ == dtype_) {
    strided_copy(static_cast<char*>(raw_data()), strides_, static_cast<const char*>(src.raw_data()),
                 src.strides_, shape_, element_size());
    return;
  }
  // Strided with a dtype change: gather into a contiguous temporary of the source dtype,
  // convert, then scatter if the destination is strided too.
  const size_t es = src.element_size();
  std::vector<char> tmp(static_cast<size_t>(numel()) * es);
  strided_copy(tmp.data(), contiguous_strides(shape_), static_cast<const char*>(src.raw_data()),
               src.strides_, shape_, es);
  if (is_contiguous()) {
    convert(tmp.data(), src.dtype_, raw_data(), dtype_, static_cast<size_t>(numel()));
    return;
  }
  const size_t ed = element_size();
  std::vector<char> conv(static_cast<size_t>(numel()) * ed);
  convert(tmp.data(), src.dtype_, conv.data(), dtype_, static_cast<size_t>(numel()));
  strided_copy(static_cast<char*>(raw_data()), strides_, conv.data(), contiguous_strides(shape_),
               shape_, ed);
}

void Tensor::fill(float value) {
  Tensor one = empty({1}, DType::f32);
  *one.data<float>() = value;
  // Convert once, then replicate the element's bytes.
  const size_t es = element_size();
  char elem[8];
  convert(one.raw_data(), DType::f32, elem, dtype_, 1);
  char* d = static_cast<char*>(raw_data());
  for_each_offset(shape_, strides_, [&](int64_t, int64_t off) {
    std::memcpy(d + off * static_cast<int64_t>(es), elem, es);
  });
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  Tensor c = contiguous();
  convert(c.raw_data(), dtype_, out.data(), DType::f32, out.size());
  return out;
}

float Tensor::item() const {
  if (numel() != 1)
    throw ShapeError(fmt::format("item: {} has {} elements, not 1", str(), numel()));
  return to_vector()[0];
}

}  // namespace mixtrain
