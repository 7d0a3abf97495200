// The GEMM entry points of gemm.h: argument checks (shapes, dtypes, devices) and the profile's
// timing by shape; the product itself is the device's (CpuBackend::gemm: oneDNN).
#include <fmt/format.h>

#include <chrono>

#include "backend/backend.h"
#include "mixtrain/gemm.h"
#include "mixtrain/profile.h"

namespace mixtrain {

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::none:
      return "none";
    case Epilogue::relu:
      return "relu";
    case Epilogue::gelu:
      return "gelu";
  }
  return "?";
}

namespace {

bool is_compute(DType dt) { return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16; }

std::string operand_str(const Tensor& t, bool trans) {
  return fmt::format("{}{}", t.str(), trans ? "ᵀ" : "");
}

[[noreturn]] void shape_fail(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb,
                             const Tensor& c, const std::string& why) {
  throw ShapeError(fmt::format("{}: A {} · B {} -> C {}: {}", op, operand_str(a, ta),
                               operand_str(b, tb), c.str(), why));
}

// Every message names the op, the shapes (with ᵀ for a transposed operand) and the dtypes.
void check(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
           const Tensor* bias) {
  if (!a.defined() || !b.defined() || !c.defined())
    throw ShapeError(fmt::format("{}: A, B and C must be defined tensors", op));
  common_device(op, {&a, &b, &c, bias});
  if (!is_compute(a.dtype()) || a.dtype() != b.dtype() || !is_compute(c.dtype()))
    throw DTypeError(fmt::format(
        "{}: A {} · B {} -> C {}: A and B must share one of f32, bf16, f16 and C be one of them",
        op, a.str(), b.str(), c.str()));
  if (a.dim() < 2 || a.dim() > 3 || b.dim() < 2 || b.dim() > 3)
    shape_fail(op, a, ta, b, tb, c, "A and B must be 2-d [M, K] or 3-d [Bt, M, K]");
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t K2 = tb ? b.size(-1) : b.size(-2), N = tb ? b.size(-2) : b.size(-1);
  if (K != K2) shape_fail(op, a, ta, b, tb, c, fmt::format("inner dims {} != {}", K, K2));
  if (a.dim() == 3 && b.dim() == 3 && a.size(0) != b.size(0))
    shape_fail(op, a, ta, b, tb, c, fmt::format("batch dims {} != {}", a.size(0), b.size(0)));
  const int64_t bt = a.dim() == 3 ? a.size(0) : (b.dim() == 3 ? b.size(0) : 1);
  // Compared without building a Shape: a hit must not allocate.
  const bool c_ok = batched ? (c.dim() == 3 && c.size(0) == bt && c.size(1) == M && c.size(2) == N)
                            : (c.dim() == 2 && c.size(0) == M && c.size(1) == N);
  if (!c_ok)
    shape_fail(op, a, ta, b, tb, c,
               fmt::format("C must be {}", shape_str(batched ? Shape{bt, M, N} : Shape{M, N})));
  if (bias) {
    if (!bias->defined() || bias->dim() != 1 || bias->size(0) != N)
      shape_fail(op, a, ta, b, tb, c, fmt::format("bias {} must be 1-d [{}]", bias->str(), N));
    if (!is_compute(bias->dtype()))
      throw DTypeError(fmt::format("{}: bias {} must be f32, bf16 or f16", op, bias->str()));
  }
}

}  // namespace

// Checked, then run by the device's backend; timed by shape when the profile is on (profile.h).
static void gemm_impl(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                      float alpha, float beta, const Tensor* bias, Epilogue epi) {
  check(op, a, ta, b, tb, c, bias);
  Backend& be = backend_for(c.device());
  if (!profile::enabled()) return be.gemm(a, ta, b, tb, c, alpha, beta, bias, epi);
  const auto t0 = std::chrono::steady_clock::now();
  be.gemm(a, ta, b, tb, c, alpha, beta, bias, epi);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t M = c.size(-2), N = c.size(-1), K = ta ? a.size(-2) : a.size(-1);
  profile::add(fmt::format("gemm {}{}->{} {}{}x{}x{}{}", dtype_name(a.dtype()),
                           ta || tb ? fmt::format(" {}{}", ta ? "T" : "N", tb ? "T" : "N") : "",
                           dtype_name(c.dtype()), c.dim() == 3 ? fmt::format("{}*", c.size(0)) : "",
                           M, N, K, epi != Epilogue::none || bias ? " +epi" : ""),
               s);
}

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta) {
  gemm_impl("gemm", a, trans_a, b, trans_b, c, alpha, beta, nullptr, Epilogue::none);
}

void gemm_ex(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
             float beta, const Tensor* bias, Epilogue epi) {
  gemm_impl("gemm_ex", a, trans_a, b, trans_b, c, alpha, beta, bias, epi);
}

Tensor matmul_tensor(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                     DType out_dtype) {
  if (!a.defined() || !b.defined() || a.dim() < 2 || a.dim() > 3 || b.dim() < 2 || b.dim() > 3)
    throw ShapeError(
        fmt::format("matmul_tensor: A {} and B {}: need 2-d or 3-d operands", a.str(), b.str()));
  const int64_t M = trans_a ? a.size(-1) : a.size(-2);
  const int64_t N = trans_b ? b.size(-2) : b.size(-1);
  Shape shape{M, N};
  if (a.dim() == 3)
    shape.insert(shape.begin(), a.size(0));
  else if (b.dim() == 3)
    shape.insert(shape.begin(), b.size(0));
  Tensor c = Tensor::empty(shape, out_dtype, common_device("matmul_tensor", {&a, &b}));
  gemm_impl("matmul_tensor", a, trans_a, b, trans_b, c, 1.0f, 0.0f, nullptr, Epilogue::none);
  return c;
}

}  // namespace mixtrain
