// The CPU backend's data movement: fill and the strided, converting copy every layout change
// goes through (contiguous(), to(dtype), slices, concat, the GEMM's operand copies).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/backend.h"

namespace mixtrain::cpu {

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

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Shape& shape = dst.shape();
  if (src.is_contiguous() && dst.is_contiguous()) {
    convert(src.raw_data(), src.dtype(), dst.raw_data(), dst.dtype(), static_cast<size_t>(n));
    return;
  }
  if (src.dtype() == dst.dtype()) {
    strided_copy(static_cast<char*>(dst.raw_data()), dst.strides(),
                 static_cast<const char*>(src.raw_data()), src.strides(), shape,
                 dst.element_size());
    return;
  }
  // Strided with a dtype change: gather into a contiguous temporary of the source dtype,
  // convert, then scatter if the destination is strided too.
  const size_t es = src.element_size();
  std::vector<char> tmp(static_cast<size_t>(n) * es);
  strided_copy(tmp.data(), contiguous_strides(shape), static_cast<const char*>(src.raw_data()),
               src.strides(), shape, es);
  if (dst.is_contiguous()) {
    convert(tmp.data(), src.dtype(), dst.raw_data(), dst.dtype(), static_cast<size_t>(n));
    return;
  }
  const size_t ed = dst.element_size();
  std::vector<char> conv(static_cast<size_t>(n) * ed);
  convert(tmp.data(), src.dtype(), conv.data(), dst.dtype(), static_cast<size_t>(n));
  strided_copy(static_cast<char*>(dst.raw_data()), dst.strides(), conv.data(),
               contiguous_strides(shape), shape, ed);
}

void CpuBackend::fill(const Tensor& dst, float value) {
  // Convert once, then replicate the element's bytes; all-zero bytes (+0 in every dtype) in a
  // contiguous tensor are one memset.
  const size_t es = dst.element_size();
  char elem[8] = {};
  convert(&value, DType::f32, elem, dst.dtype(), 1);
  char* d = static_cast<char*>(dst.raw_data());
  const bool zero = std::all_of(elem, elem + es, [](char c) { return c == 0; });
  if (zero && dst.is_contiguous()) {
    std::memset(d, 0, dst.nbytes());
    return;
  }
  for_each_offset(dst.shape(), dst.strides(), [&](int64_t, int64_t off) {
    std::memcpy(d + off * static_cast<int64_t>(es), elem, es);
  });
}

}  // namespace mixtrain::cpu
