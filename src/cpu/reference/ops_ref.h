// Scalar fp32 reference implementations of the tensor ops (plain loops, no SIMD, no threads,
// no oneDNN): the oracle every backend's kernels are tested against. Inputs of any float
// dtype are read as fp32; outputs are fp32. Sums accumulate in double, so the reference is
// the exact result rounded once to fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "mixtrain/tensor.h"

namespace mixtrain::ref {

/// a [M, K] · b [K, N]; a [Bt, M, K] · b [Bt, K, N] or shared b [K, N].
Tensor matmul(const Tensor& a, const Tensor& b);
/// x [..., in] · wᵀ (w [out, in]) + bias [out] (bias may be undefined).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);

enum class Bin { add, sub, mul, div };
/// Elementwise with numpy broadcasting.
Tensor binary(const Tensor& a, const Tensor& b, Bin op);
Tensor add_scalar(const Tensor& x, float s);
Tensor mul_scalar(const Tensor& x, float s);

Tensor relu(const Tensor& x);
/// torch's tanh approximation, evaluated in double.
Tensor gelu(const Tensor& x);
/// d gelu / dx, in double (the derivative the backward must match).
Tensor gelu_grad(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);

/// Sum / mean over axes (empty: all), keepdim as torch.
Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim);

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);

/// Inverted dropout with the mask of counters [base, base + n) of `seed`: element i kept when
/// (random_bits(seed, base + i) >> 40) / 2^24 >= p, then scaled by 1/(1-p).
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t base);

}  // namespace mixtrain::ref
