// isa: scalar avx2 avx512
// The fused optimizer update pass, written once as a template over (rule, gradient dtype,
// where the parameter lives) and built per level (cpu/optimizer.h). Every function carries the
// level's target attribute explicitly; everything has internal linkage.
//
// Loops are branch-free so they vectorise: the bf16 roundings are integer arithmetic,
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

// ---- element load/store (branch-free, bit-exact with dtype.h's RNE) -------------------------

MT_INLINE uint16_t bf16_rne(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t q = (u >> 16) | 0x40u;  // NaN: quiet, keep the sign and top payload
  // mask = all ones for NaN (|u| > 0x7f800000), computed without a compare-and-branch.
  const uint32_t nan = 0u - ((0x7f800000u - (u & 0x7fffffffu)) >> 31);
  return static_cast<uint16_t>((q & nan) | (r & ~nan));
}

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

// ---- update rules: torch.optim's operation order --------------------------------------------
// pre(i, g, p): applies weight decay to g or p, updates the state, returns the radicand.
// post(i, g, p, root): the new parameter value.
// Every option that changes the loop's shape is a template parameter, so the loops have no
// branches left (the vectoriser needs that; GCC's unswitching gives up on the larger bodies).

template <bool Decoupled>
struct AdamK {
  static constexpr bool kSqrt = true;
  float beta1, beta2, omb1, omb2, step_size, bc2_sqrt, eps, wd, decay;
  explicit AdamK(const AdamWHyper& h) {
    const double t = static_cast<double>(h.step);
    const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), t);
    const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), t);
    // torch computes these scalars in double (Python floats) and the kernel uses them as
    // fp32; doing the same keeps us within an ulp of torch.optim.
    beta1 = h.beta1;
    beta2 = h.beta2;
    omb1 = static_cast<float>(1.0 - h.beta1);
    omb2 = static_cast<float>(1.0 - h.beta2);
    step_size = static_cast<float>(h.lr / bc1);
    bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    eps = h.eps;
    wd = h.weight_decay;
    decay = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);
  }
  MT_INLINE float pre(float* __restrict m, float* __restrict v, float*, int64_t i, float& g,
                      float& p) const {
    if constexpr (Decoupled)
      p = p * decay;
    else
      g = g + wd * p;
    m[i] = m[i] * beta1 + omb1 * g;
    const float vi = v[i] * beta2 + omb2 * (g * g);
    v[i] = vi;
    return vi;
  }
  MT_INLINE float post(float* __restrict m, float*, float*, int64_t i, float, float p,
                       float root) const {
    const float denom = root / bc2_sqrt + eps;
    return p - step_size * (m[i] / denom);
  }
};

template <bool Momentum, bool Nesterov>
struct SgdK {
  static constexpr bool kSqrt = false;
  float lr, mom, omd, wd, nest;
  explicit SgdK(const SgdHyper& h)
      : lr(h.lr),
        // First step: torch sets buf = d; buf * 0 + 1 * d is exactly d (buf is finite).
        mom(h.first_step ? 0.0f : h.momentum),
        omd(h.first_step ? 1.0f : 1.0f - h.dampening),
        wd(h.weight_decay),
        nest(h.momentum) {}
  MT_INLINE float pre(float*, float*, float*, int64_t, float& g, float& p) const {
    g = g + wd * p;
    return 0.0f;
  }
  MT_INLINE float post(float* __restrict buf, float*, float*, int64_t i, float d, float p,
                       float) const {
    if constexpr (Momentum) {
      const float b = buf[i] * mom + omd * d;
      buf[i] = b;
      if constexpr (Nesterov)
        d = d + nest * b;
      else
        d = b;
    }
    return p - lr * d;
  }
};

template <bool Centered, bool Momentum>
struct RmsK {
  static constexpr bool kSqrt = true;
  float lr, alpha, oma, eps, wd, momentum;
  explicit RmsK(const RMSPropHyper& h)
      : lr(h.lr),
        alpha(h.alpha),
        oma(1.0f - h.alpha),
        eps(h.eps),
        wd(h.weight_decay),
        momentum(h.momentum) {}
  MT_INLINE float pre(float* __restrict sq, float* __restrict ga, float*, int64_t i, float& g,
                      float& p) const {
    g = g + wd * p;
    const float s = sq[i] * alpha + oma * (g * g);
    sq[i] = s;
    if constexpr (Centered) {
      const float a = ga[i] * alpha + oma * g;
      ga[i] = a;
      return s - a * a;
    } else {
      return s;
    }
  }
  MT_INLINE float post(float*, float*, float* __restrict buf, int64_t i, float g, float p,
                       float root) const {
    const float avg = root + eps;
    if constexpr (Momentum) {
      const float b = buf[i] * momentum + g / avg;
      buf[i] = b;
      return p - lr * b;
    } else {
      return p - lr * (g / avg);
    }
  }
};

// ---- where the parameter lives ------------------------------------------------------------

enum class Home { f32, f32_copy_bf16, f32_copy_f32, stochastic, kahan, split16 };

// Gradients come in as fp32 or as bf16 bit patterns (uint16_t: a plain integer load the
// vectoriser handles); fp16 gradients are widened per block by the F16C bulk converter.
MT_INLINE float ldg(const float* g, int64_t i) { return g[i]; }
MT_INLINE float ldg(const uint16_t* g, int64_t i) {
  return std::bit_cast<float>(static_cast<uint32_t>(g[i]) << 16);
}
MT_INLINE float bf16_value(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

// One block (at most kBlock elements, all pointers already offset to it): pass 1 loads the
// parameter and gradient and runs pre(); the roots; pass 2 runs post() and stores.
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
    float p;
    if constexpr (H == Home::f32 || H == Home::f32_copy_bf16 || H == Home::f32_copy_f32)
      p = master[i];
    else if constexpr (H == Home::split16)
      p = std::bit_cast<float>(
          (static_cast<uint32_t>(w16[i]) << 16) +
          static_cast<uint32_t>(static_cast<int32_t>(static_cast<int16_t>(aux[i]))));
    else
      p = bf16_value(w16[i]);
    float g = ldg(grad, i) * mult;
    tr[i] = rule.pre(s0, s1, s2, i, g, p);
    tp[i] = p;
    tg[i] = g;
  }
  if constexpr (RuleK::kSqrt) sqrt_block(tr, n);
  if constexpr (H == Home::stochastic)
    for (int64_t i = 0; i < n; ++i)
      rnd[i] =
          static_cast<uint32_t>(random_bits(a.seed, a.counter + static_cast<uint64_t>(i)) >> 32);
  for (int64_t i = 0; i < n; ++i) {
    const float p = rule.post(s0, s1, s2, i, tg[i], tp[i], tr[i]);
    if constexpr (H == Home::f32 || H == Home::f32_copy_bf16 || H == Home::f32_copy_f32) {
      master[i] = p;
      if constexpr (H == Home::f32_copy_bf16) w16[i] = bf16_rne(p);
      if constexpr (H == Home::f32_copy_f32) wf[i] = p;
    } else if constexpr (H == Home::split16) {
      const uint32_t u = std::bit_cast<uint32_t>(p);
      w16[i] = static_cast<uint16_t>((u + 0x8000u) >> 16);
      aux[i] = static_cast<uint16_t>(u);
    } else if constexpr (H == Home::stochastic) {
      const uint32_t u = std::bit_cast<uint32_t>(p);
      // bf16::round_stochastic, branch-free: add 16 random bits to the magnitude, truncate;
      // Inf/NaN (exponent all ones) round as RNE does.
      const uint32_t sr = (u + (rnd[i] & 0xffffu)) >> 16;
      const uint32_t special = 0u - ((((u >> 23) & 0xffu) + 1u) >> 8);  // all ones: Inf/NaN
      const uint32_t rne = bf16_rne(p);
      w16[i] = static_cast<uint16_t>((rne & special) | (sr & ~special));
    } else {  // kahan
      const float w = bf16_value(w16[i]);
      const float c = bf16_value(aux[i]);
      // Kahan: the change this step wanted (exact in fp32 by Sterbenz while p is within 2x
      // of w) plus what earlier steps lost; what rounding to bf16 loses now is carried on.
      const float y = (p - w) + c;
      const uint16_t wn = bf16_rne(w + y);
      w16[i] = wn;
      aux[i] = bf16_rne(y - (bf16_value(wn) - w));
    }
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
      if (r.adam.decoupled) return by_grad(AdamK<true>(r.adam), a);
      return by_grad(AdamK<false>(r.adam), a);
    case Rule::Kind::sgd:
      if (r.sgd.momentum == 0.0f) return by_grad(SgdK<false, false>(r.sgd), a);
      if (r.sgd.nesterov) return by_grad(SgdK<true, true>(r.sgd), a);
      return by_grad(SgdK<true, false>(r.sgd), a);
    case Rule::Kind::rmsprop: {
      const bool mom = r.rms.momentum > 0.0f;
      if (r.rms.centered)
        return mom ? by_grad(RmsK<true, true>(r.rms), a) : by_grad(RmsK<true, false>(r.rms), a);
      return mom ? by_grad(RmsK<false, true>(r.rms), a) : by_grad(RmsK<false, false>(r.rms), a);
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
