// The optimizer kernels' public entry points and the run-time ISA choice. The fused update
// pass itself is one template (kernels_impl.h) compiled once per ISA in its own translation
// unit (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp), so the three compile in
// parallel; this file only picks one, once, with simd::active_level().
#include "mixtrain/optim/kernels.h"

#include <fmt/format.h>

#include "cpu/simd/convert.h"
#include "mixtrain/error.h"
#include "optim/kernels_isa.h"

namespace mixtrain::optim {

namespace detail {
void bad_update_dtype(const char* role, DType dt) {
  throw DTypeError(
      fmt::format("optimizer update: {} dtype {} (expected f32, bf16, f16)", role, dtype_name(dt)));
}
}  // namespace detail

namespace {

using RunFn = void (*)(const detail::Rule&, const detail::UpdateArgs&);
RunFn pick() {
  switch (simd::active_level()) {
    case simd::Level::avx512:
    case simd::Level::avx512bf16:
      if (__builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return detail::run_update_avx512;
      [[fallthrough]];
    case simd::Level::avx2:
      if (__builtin_cpu_supports("fma")) return detail::run_update_avx2;
      [[fallthrough]];
    case simd::Level::scalar:
      break;
  }
  return detail::run_update_scalar;
}

}  // namespace

namespace detail {
void run_update(const Rule& rule, const UpdateArgs& args) {
  static const RunFn fn = pick();
  fn(rule, args);
}
}  // namespace detail

namespace {

// The arguments every rule shares; the caller adds its state arrays.
template <class G, class W>
detail::UpdateArgs common_args(float grad_mult, float* master, const G* grad, W* weight_copy,
                               int64_t n) {
  detail::UpdateArgs a;
  a.grad_mult = grad_mult;
  a.master = master;
  a.weight = weight_copy;
  a.weight_dtype = dtype_of<W>();
  a.grad = grad;
  a.grad_dtype = dtype_of<G>();
  a.n = n;
  return a;
}

}  // namespace

template <class G, class W>
void adamw_update(const AdamWHyper& h, float grad_mult, float* master, float* m, float* v,
                  const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::adam;
  r.adam = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = m;
  a.s1 = v;
  detail::run_update(r, a);
}

template <class G, class W>
void sgd_update(const SgdHyper& h, float grad_mult, float* master, float* momentum_buf,
                const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::sgd;
  r.sgd = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = momentum_buf;
  detail::run_update(r, a);
}

template <class G, class W>
void rmsprop_update(const RMSPropHyper& h, float grad_mult, float* master, float* square_avg,
                    float* grad_avg, float* momentum_buf, const G* grad, W* weight_copy,
                    int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::rmsprop;
  r.rms = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = square_avg;
  a.s1 = grad_avg;
  a.s2 = momentum_buf;
  detail::run_update(r, a);
}

#define MT_INST(G, W)                                                                              \
  template void adamw_update<G, W>(const AdamWHyper&, float, float*, float*, float*, const G*, W*, \
                                   int64_t);                                                       \
  template void sgd_update<G, W>(const SgdHyper&, float, float*, float*, const G*, W*, int64_t);   \
  template void rmsprop_update<G, W>(const RMSPropHyper&, float, float*, float*, float*, float*,   \
                                     const G*, W*, int64_t);
#define MT_INST_G(G) MT_INST(G, float) MT_INST(G, bf16) MT_INST(G, fp16)
MT_INST_G(float)
MT_INST_G(bf16)
MT_INST_G(fp16)

}  // namespace mixtrain::optim
