// isa: scalar avx2 avx512
// The fused optimizer update pass, written once as a template over (rule, gradient dtype,
// where the parameter lives) and built per level (cpu/optimizer.h). Every function carries the
// level's target attribute explicitly; everything has internal linkage.
//
// The per-element math (the rules, the homes' loads and stores, the roundings) is
// mixtrain/detail/update_math.h, which the CUDA update kernel runs too; here it is arranged in
// passes that vectorise. Loops are branch-free: the bf16 roundings are integer arithmetic,
// stochastic rounding's random bits are the counter-based random_bits() computed in-lane.
//
// Contraction is off: a*b+c is two roundings on every path, so the AVX-512 and scalar
// kernels give the same bits (reproducible across machines); the pass is memory-bound, FMA
// would not make it faster.
#include "cpu/isa_target.h"

#include <immintrin.h>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "cpu/optimizer.h"
#include "mixtrain/detail/update_math.h"
#include "mixtrain/random.h"

#if defined(__clang__)
// clang has no optimize attribute; its own pragma turns contraction off for the whole file.
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
// GCC 12 reports its own _mm512_undefined_*() placeholders inside the sqrt intrinsic as "may
// be used uninitialized" once inlined (a known false positive; convert_avx512.cpp says the same).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The pragma above is not inherited by functions with a target attribute (GCC resets their
// optimisation options), so every kernel function repeats it, with this file's ISA.
#if defined(__clang__)
#define MT_NO_CONTRACT  // the file-wide pragma above
#else
#define MT_NO_CONTRACT optimize("fp-contract=off"),
#endif
// (The avx512 level includes AVX-512DQ, which gives the 64-bit multiplies of random_bits()
// in-lane.)
#define MT_FLAGS MT_NO_CONTRACT MT_TARGET_LIST
#undef MT_INLINE
#define MT_INLINE __attribute__((always_inline, MT_FLAGS)) inline

namespace mixtrain::cpu {
namespace {

using optim::AdamWHyper;
using optim::MasterMode;
using optim::RMSPropHyper;
using optim::SgdHyper;
using optim::detail::Rule;
using optim::detail::UpdateArgs;

// ---- square roots -------------------------------------------------------------------------
// std::sqrt keeps a libm call for negative inputs (errno), which stops GCC from vectorising
// any loop holding it, and -fno-math-errno can not be set per function (GCC 12 fixes the
// builtins' errno semantics at start-up). So rules split around the root: a vectorised pass
// computes the radicands of a block, this takes their roots with the ISA's correctly rounded
// vector sqrt (bit-identical to std::sqrt), a second pass finishes.
__attribute__((MT_FLAGS)) void sqrt_block(float* x, int64_t n) {
  int64_t i = 0;
#if MT_ISA >= 2
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
#elif MT_ISA == 1
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#else
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) _mm_store_ss(x + i, _mm_sqrt_ss(_mm_load_ss(x + i)));
}

// ---- update rules (mixtrain/detail/update_math.h), made from the hyper-parameters ----------

template <bool Decoupled>
mixtrain::detail::AdamRule<Decoupled> adam_rule(const AdamWHyper& h) {
  return mixtrain::detail::AdamRule<Decoupled>(
      mixtrain::detail::adam_consts(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step));
}
template <bool Momentum, bool Nesterov>
mixtrain::detail::SgdRule<Momentum, Nesterov> sgd_rule(const SgdHyper& h) {
  return mixtrain::detail::SgdRule<Momentum, Nesterov>(
      mixtrain::detail::sgd_consts(h.lr, h.momentum, h.dampening, h.weight_decay, h.first_step));
}
template <bool Centered, bool Momentum>
mixtrain::detail::RmsRule<Centered, Momentum> rms_rule(const RMSPropHyper& h) {
  return mixtrain::detail::RmsRule<Centered, Momentum>(
      mixtrain::detail::rms_consts(h.lr, h.alpha, h.eps, h.weight_decay, h.momentum));
}

// ---- where the parameter lives (mixtrain/detail/update_math.h's Home) ---------------------

using mixtrain::detail::Home;

// Gradients come in as fp32 or as bf16 bit patterns (uint16_t: a plain integer load the
// vectoriser handles); fp16 gradients are widened per block by the F16C bulk converter.
MT_INLINE float ldg(const float* g, int64_t i) { return g[i]; }
MT_INLINE float ldg(const uint16_t* g, int64_t i) {
  return mixtrain::detail::bf16_bits_to_f32(g[i]);
}

// One block (at most kBlock elements, all pointers already offset to it): pass 1 loads the
// parameter and gradient and runs pre(); the roots; pass 2 runs post() and stores. Per element
// the steps of mixtrain::detail::update_element(), in its order.
template <class RuleK, class G, Home H>
MT_INLINE void block(const RuleK& rule, const UpdateArgs& a, int64_t n) {
  const G* __restrict grad = static_cast<const G*>(a.grad);
  float* __restrict s0 = a.s0;
  float* __restrict s1 = a.s1;
  float* __restrict s2 = a.s2;
  float* __restrict master = a.master;
  uint16_t* __restrict w16 = static_cast<uint16_t*>(a.weight);
  float* __restrict wf = static_cast<float*>(a.weight);
  uint16_t* __restrict aux = a.aux;
  const float mult = a.grad_mult;
  alignas(64) float tp[kUpdateBlock], tg[kUpdateBlock], tr[kUpdateBlock];
  alignas(64) uint32_t rnd[kUpdateBlock];
  for (int64_t i = 0; i < n; ++i) {
    float p = mixtrain::detail::load_param<H>(master, w16, aux, i);
    float g = ldg(grad, i) * mult;
    tr[i] = rule.pre(s0, s1, s2, i, g, p);
    tp[i] = p;
    tg[i] = g;
  }
  if constexpr (RuleK::kSqrt) sqrt_block(tr, n);
  if constexpr (H == Home::stochastic)
    for (int64_t i = 0; i < n; ++i) rnd[i] = mixtrain::detail::update_random(a.seed, a.counter, i);
  for (int64_t i = 0; i < n; ++i) {
    const float p = rule.post(s0, s1, s2, i, tg[i], tp[i], tr[i]);
    mixtrain::detail::store_param<H>(master, w16, wf, aux, i, p,
                                     H == Home::stochastic ? rnd[i] : 0u);
  }
}

// One whole pass for one (rule, gradient type, home): a real function, not inlined into the
// dispatch. That keeps each instantiation a separately optimised function of moderate size
// (the compiler's passes are superlinear in function size), and the paths that re-enter it
// block by block (fp16 gradients, fp16 weight copies) call it instead of carrying copies.
template <class RuleK, class G, Home H>
__attribute__((noinline, MT_FLAGS)) void body(const RuleK& rule, const UpdateArgs& a) {
  for (int64_t b = 0; b < a.n; b += kUpdateBlock) {
    const int64_t len = std::min(kUpdateBlock, a.n - b);
    block<RuleK, G, H>(rule, sub_args(a, b, len), len);
  }
}

template <class RuleK, class G>
MT_INLINE void by_home(const RuleK& rule, const UpdateArgs& a) {
  switch (a.mode) {
    case MasterMode::fp32:
      if (!a.weight) return body<RuleK, G, Home::f32>(rule, a);
      switch (a.weight_dtype) {
        case DType::bf16:
          return body<RuleK, G, Home::f32_copy_bf16>(rule, a);
        case DType::f32:
          return body<RuleK, G, Home::f32_copy_f32>(rule, a);
        case DType::f16: {
          // fp16 encoding has no branch-free form here: the update runs vectorised on a
          // block, then the F16C bulk converter (bit-exact RNE) writes the copy while the
          // block is still in L1.
          for (int64_t b = 0; b < a.n; b += kUpdateBlock) {
            const int64_t len = std::min(kUpdateBlock, a.n - b);
            UpdateArgs s = sub_args(a, b, len);
            void* copy = s.weight;
            s.weight = nullptr;
            body<RuleK, G, Home::f32>(rule, s);
            convert(s.master, DType::f32, copy, DType::f16, static_cast<size_t>(len));
          }
          return;
        }
        default:
          break;
      }
      bad_update_dtype("weight copy", a.weight_dtype);
    case MasterMode::bf16_stochastic:
      return body<RuleK, G, Home::stochastic>(rule, a);
    case MasterMode::bf16_kahan:
      return body<RuleK, G, Home::kahan>(rule, a);
    case MasterMode::split16:
      return body<RuleK, G, Home::split16>(rule, a);
  }
}

template <class RuleK>
MT_INLINE void by_grad(const RuleK& rule, const UpdateArgs& a) {
  switch (a.grad_dtype) {
    case DType::f32:
      return by_home<RuleK, float>(rule, a);
    case DType::bf16:
      return by_home<RuleK, uint16_t>(rule, a);
    case DType::f16: {
      alignas(64) float tmp[kUpdateBlock];  // fp16 gradients widened
      for (int64_t b = 0; b < a.n; b += kUpdateBlock) {
        const int64_t len = std::min(kUpdateBlock, a.n - b);
        UpdateArgs s = sub_args(a, b, len);
        convert(s.grad, DType::f16, tmp, DType::f32, static_cast<size_t>(len));
        s.grad = tmp;
        s.grad_dtype = DType::f32;
        by_home<RuleK, float>(rule, s);
      }
      return;
    }
    default:
      break;
  }
  bad_update_dtype("gradient", a.grad_dtype);
}

__attribute__((MT_FLAGS)) void run(const Rule& r, const UpdateArgs& a) {
  switch (r.kind) {
    case Rule::Kind::adam:
      if (r.adam.decoupled) return by_grad(adam_rule<true>(r.adam), a);
      return by_grad(adam_rule<false>(r.adam), a);
    case Rule::Kind::sgd:
      if (r.sgd.momentum == 0.0f) return by_grad(sgd_rule<false, false>(r.sgd), a);
      if (r.sgd.nesterov) return by_grad(sgd_rule<true, true>(r.sgd), a);
      return by_grad(sgd_rule<true, false>(r.sgd), a);
    case Rule::Kind::rmsprop: {
      const bool mom = r.rms.momentum > 0.0f;
      if (r.rms.centered)
        return mom ? by_grad(rms_rule<true, true>(r.rms), a)
                   : by_grad(rms_rule<true, false>(r.rms), a);
      return mom ? by_grad(rms_rule<false, true>(r.rms), a)
                 : by_grad(rms_rule<false, false>(r.rms), a);
    }
  }
}

}  // namespace

template <>
const UpdateKernel& update_kernel<kIsa>() {
  static constexpr UpdateKernel k = run;
  return k;
}

}  // namespace mixtrain::cpu
