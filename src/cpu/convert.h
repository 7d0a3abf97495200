// Bulk fp32 <-> bf16/fp16 conversion of host memory: the kernels per ISA level (convert.isa.cpp),
// the OpenMP split every bulk host pass uses, and a per-row converter for kernels that convert
// many short rows. mixtrain::convert (dtype.h) is the entry point; this is what is behind it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/isa.h"
#include "mixtrain/dtype.h"

namespace mixtrain::cpu {

/// One level's four kernels; n is any count (tails are handled inside). Every level gives the
/// same bits as the scalar conversions in dtype.h.
struct ConvertKernels {
  void (*f32_to_bf16)(const float* src, uint16_t* dst, size_t n);
  void (*bf16_to_f32)(const uint16_t* src, float* dst, size_t n);
  void (*f32_to_f16)(const float* src, uint16_t* dst, size_t n);
  void (*f16_to_f32)(const uint16_t* src, float* dst, size_t n);
};
template <Isa>
const ConvertKernels& convert_kernels();  // built for scalar, avx2, avx512, avx512bf16
/// The kernels of the level in use.
const ConvertKernels& convert_kernels();
/// The kernels of `level` (a CPU that lacks it must not run them): for tests that check every
/// level side by side.
const ConvertKernels& convert_kernels_at(Isa level);

/// Whether (src, dst) is one of the four pairs above.
inline bool is_fast_pair(DType sd, DType dd) {
  return (sd == DType::f32 && (dd == DType::bf16 || dd == DType::f16)) ||
         (dd == DType::f32 && (sd == DType::bf16 || sd == DType::f16));
}

/// One dtype pair's kernel at the level in use, called directly on the calling thread: for
/// loops over many short rows (attention packs rows of 64 values), where convert()'s dispatch
/// per call costs more than converting the row. fp32 <-> bf16/fp16, or a copy when the dtypes
/// are equal; other pairs throw DTypeError. Bit-identical to convert().
class RowConverter {
 public:
  RowConverter(DType src, DType dst);
  void operator()(const void* src, void* dst, size_t n) const {
    if (narrow_)
      narrow_(static_cast<const float*>(src), static_cast<uint16_t*>(dst), n);
    else if (widen_)
      widen_(static_cast<const uint16_t*>(src), static_cast<float*>(dst), n);
    else if (n > 0)  // memcpy's pointers must not be null even for no bytes
      std::memcpy(dst, src, n * copy_size_);
  }

 private:
  void (*narrow_)(const float*, uint16_t*, size_t) = nullptr;
  void (*widen_)(const uint16_t*, float*, size_t) = nullptr;
  size_t copy_size_ = 0;
};

/// Calls fn(begin, end) over [0, n) split across OpenMP threads when n is large enough to pay
/// for the fork (otherwise once, on the calling thread). Used by every bulk conversion.
void parallel_ranges(size_t n, void (*fn)(size_t begin, size_t end, void* ctx), void* ctx);

/// parallel_ranges with a callable.
template <class F>
void parallel_for(size_t n, F&& f) {
  parallel_ranges(
      n, [](size_t b, size_t e, void* c) { (*static_cast<std::remove_reference_t<F>*>(c))(b, e); },
      &f);
}

}  // namespace mixtrain::cpu
