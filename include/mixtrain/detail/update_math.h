// The fused optimizer update's per-element math, shared by every backend: the update rules
// (torch.optim's AdamW/Adam, SGD with momentum/Nesterov/dampening, RMSProp centered/momentum,
// each in torch's operation order), where the parameter lives (fp32 master, split16, bf16 with
// stochastic rounding, bf16 with Kahan compensation) and the split16 encoding. The CPU's update
// kernels (cpu/optimizer.isa.cpp, every ISA level) and the CUDA update kernel
// (cuda/multi_tensor.cu) are built from these functions; tests/update_math_test.cpp checks that
// update_element() below gives the CPU kernels' bits at every level this machine runs.
//
// Floating-point contraction must be off wherever these are compiled (a*b+c is two roundings):
// the CPU kernel file turns it off with a pragma, the CUDA file is compiled with -fmad=false,
// and clang (which contracts per expression, where it is written) is told so here. GCC
// contracts per function, after inlining, by the caller's flags: a host caller turns it off
// itself (#pragma GCC optimize("fp-contract=off"); baseline x86-64 has no FMA to contract to).
// Division and square root are IEEE (correctly rounded) on both sides; no flush to zero.
#pragma once

#include <cstdint>

#include "mixtrain/detail/scalar.h"
#include "mixtrain/random.h"

#include <cmath>

// Always inlined: the CPU's vectorised loops need the whole body in one function.
#if defined(__CUDACC__)
#define MIXTRAIN_HDI __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MIXTRAIN_HDI __attribute__((always_inline)) inline
#else
#define MIXTRAIN_HDI inline
#endif

#if defined(__clang__) && !defined(__CUDACC__)
#pragma float_control(push)
#pragma clang fp contract(off)
#endif

namespace mixtrain::detail {

/// Correctly rounded fp32 square root (the host's sqrtss, the device's __fsqrt_rn).
MIXTRAIN_HDI float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// ---- number formats of the parameter's home --------------------------------------------------

/// RNE fp32 -> bf16 bits, branch-free (it vectorises); the same bits as bf16_bits_rne().
MIXTRAIN_HDI uint16_t bf16_rne_bits_nobranch(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t q = (u >> 16) | 0x40u;  // NaN: quiet, keep the sign and top payload
  // mask = all ones for NaN (|u| > 0x7f800000), computed without a compare-and-branch.
  const uint32_t nan = 0u - ((0x7f800000u - (u & 0x7fffffffu)) >> 31);
  return static_cast<uint16_t>((q & nan) | (r & ~nan));
}

/// Stochastic rounding fp32 -> bf16 bits, branch-free, with the random bits `rnd` (their low
/// 16 decide): add them to the magnitude and truncate; Inf/NaN (exponent all ones) round as
/// RNE does. The same bits as bf16_bits_stochastic().
MIXTRAIN_HDI uint16_t bf16_stochastic_bits_nobranch(float f, uint32_t rnd) {
  const uint32_t u = f32_bits(f);
  const uint32_t sr = (u + (rnd & 0xffffu)) >> 16;
  const uint32_t special = 0u - ((((u >> 23) & 0xffu) + 1u) >> 8);  // all ones: Inf/NaN
  const uint32_t rne = bf16_rne_bits_nobranch(f);
  return static_cast<uint16_t>((rne & special) | (sr & ~special));
}

/// The stochastic-rounding draw of element i of a tensor whose update draws from (seed,
/// counter): the top 32 bits of random_bits(seed, counter + i).
MIXTRAIN_HDI uint32_t update_random(uint64_t seed, uint64_t counter, int64_t i) {
  return static_cast<uint32_t>(random_bits(seed, counter + static_cast<uint64_t>(i)) >> 32);
}

/// The split16 encoding: `hi` is the bf16 weight (fp32 bits rounded half-up in magnitude, so
/// each bf16 value owns exactly 2^16 fp32 patterns) and `lo` the low 16 bits of the fp32 bits.
MIXTRAIN_HDI void split16_encode(float f, uint16_t* hi, uint16_t* lo) {
  const uint32_t u = f32_bits(f);
  *hi = static_cast<uint16_t>((u + 0x8000u) >> 16);
  *lo = static_cast<uint16_t>(u);
}
MIXTRAIN_HDI float split16_decode(uint16_t hi, uint16_t lo) {
  const uint32_t u = (static_cast<uint32_t>(hi) << 16) +
                     static_cast<uint32_t>(static_cast<int32_t>(static_cast<int16_t>(lo)));
  return f32_from_bits(u);
}

/// One Kahan-compensated bf16 store: p the new fp32 value, *w and *c the bf16 weight and its
/// compensation (bits), both updated. The change this step wanted (exact in fp32 by Sterbenz
/// while p is within 2x of w) plus what earlier steps lost; what rounding to bf16 loses now is
/// carried on.
MIXTRAIN_HDI void kahan_store(float p, uint16_t* w16, uint16_t* c16) {
  const float w = bf16_bits_to_f32(*w16);
  const float c = bf16_bits_to_f32(*c16);
  const float y = (p - w) + c;
  const uint16_t wn = bf16_rne_bits_nobranch(w + y);
  *w16 = wn;
  *c16 = bf16_rne_bits_nobranch(y - (bf16_bits_to_f32(wn) - w));
}

/// Where the parameter lives during one update (optim::MasterMode, with the fp32 master's
/// compute copy split by dtype).
enum class Home : uint8_t {
  f32,            ///< fp32 master only (no separate copy)
  f32_copy_bf16,  ///< fp32 master + bf16 copy (RNE)
  f32_copy_f32,   ///< fp32 master + fp32 copy
  f32_copy_f16,   ///< fp32 master + fp16 copy (RNE); the CPU writes it with its bulk converter
  stochastic,     ///< bf16 weight, stochastic rounding
  kahan,          ///< bf16 weight + bf16 compensation
  split16,        ///< bf16 weight + the low 16 bits of the fp32 master
};

/// Element i's parameter lives in the master (fp32 homes), the weight bits w16, the auxiliary
/// bits aux (split16's low half, Kahan's compensation) and, for Home::f32_copy_f32, a copy wf;
/// pointers a home does not use may be null.
template <Home H>
MIXTRAIN_HDI float load_param(const float* __restrict master, const uint16_t* __restrict w16,
                              const uint16_t* __restrict aux, int64_t i) {
  if constexpr (H == Home::f32 || H == Home::f32_copy_bf16 || H == Home::f32_copy_f32 ||
                H == Home::f32_copy_f16)
    return master[i];
  else if constexpr (H == Home::split16)
    return split16_decode(w16[i], aux[i]);
  else
    return bf16_bits_to_f32(w16[i]);
}

/// Stores the updated value p of element i; rnd is its stochastic-rounding draw (read by
/// Home::stochastic only).
template <Home H>
MIXTRAIN_HDI void store_param(float* __restrict master, uint16_t* __restrict w16,
                              float* __restrict wf, uint16_t* __restrict aux, int64_t i, float p,
                              uint32_t rnd) {
  if constexpr (H == Home::f32 || H == Home::f32_copy_bf16 || H == Home::f32_copy_f32 ||
                H == Home::f32_copy_f16) {
    master[i] = p;
    if constexpr (H == Home::f32_copy_bf16) w16[i] = bf16_rne_bits_nobranch(p);
    if constexpr (H == Home::f32_copy_f32) wf[i] = p;
    if constexpr (H == Home::f32_copy_f16) w16[i] = f16_bits_rne(p);
  } else if constexpr (H == Home::split16) {
    split16_encode(p, &w16[i], &aux[i]);
  } else if constexpr (H == Home::stochastic) {
    w16[i] = bf16_stochastic_bits_nobranch(p, rnd);
  } else {  // kahan
    kahan_store(p, &w16[i], &aux[i]);
  }
}

// ---- update rules: torch.optim's operation order ---------------------------------------------
// pre(s0, s1, s2, i, g, p): applies weight decay to g or p, updates the state, returns the
// radicand (kSqrt rules; 0 otherwise). post(s0, s1, s2, i, g, p, root): the new parameter
// value, root = sqrt_rn(radicand). Every option that changes the loop's shape is a template
// parameter, so the CPU's loops have no branches left (the vectoriser needs that). The
// constants come from the host-side makers below (double-precision scalars as torch's).

struct AdamConsts {
  float beta1, beta2, omb1, omb2, step_size, bc2_sqrt, eps, wd, decay;
};
/// torch computes these scalars in double (Python floats) and the kernel uses them as fp32;
/// doing the same keeps us within an ulp of torch.optim. Host only.
inline AdamConsts adam_consts(float lr, float beta1, float beta2, float eps, float weight_decay,
                              int64_t step) {
  const double t = static_cast<double>(step);
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), t);
  AdamConsts c;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.omb1 = static_cast<float>(1.0 - beta1);
  c.omb2 = static_cast<float>(1.0 - beta2);
  c.step_size = static_cast<float>(lr / bc1);
  c.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  c.eps = eps;
  c.wd = weight_decay;
  c.decay = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay);
  return c;
}

template <bool Decoupled>
struct AdamRule : AdamConsts {
  static constexpr bool kSqrt = true;
  MIXTRAIN_HD explicit AdamRule(const AdamConsts& c) : AdamConsts(c) {}
  MIXTRAIN_HDI float pre(float* __restrict m, float* __restrict v, float*, int64_t i, float& g,
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
  MIXTRAIN_HDI float post(float* __restrict m, float*, float*, int64_t i, float, float p,
                          float root) const {
    const float denom = root / bc2_sqrt + eps;
    return p - step_size * (m[i] / denom);
  }
};

struct SgdConsts {
  float lr, mom, omd, wd, nest;
};
/// First step: torch sets buf = d; buf * 0 + 1 * d is exactly d (buf is finite). Host only.
inline SgdConsts sgd_consts(float lr, float momentum, float dampening, float weight_decay,
                            bool first_step) {
  SgdConsts c;
  c.lr = lr;
  c.mom = first_step ? 0.0f : momentum;
  c.omd = first_step ? 1.0f : 1.0f - dampening;
  c.wd = weight_decay;
  c.nest = momentum;
  return c;
}

template <bool Momentum, bool Nesterov>
struct SgdRule : SgdConsts {
  static constexpr bool kSqrt = false;
  MIXTRAIN_HD explicit SgdRule(const SgdConsts& c) : SgdConsts(c) {}
  MIXTRAIN_HDI float pre(float*, float*, float*, int64_t, float& g, float& p) const {
    g = g + wd * p;
    return 0.0f;
  }
  MIXTRAIN_HDI float post(float* __restrict buf, float*, float*, int64_t i, float d, float p,
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

struct RmsConsts {
  float lr, alpha, oma, eps, wd, momentum;
};
/// Host only.
inline RmsConsts rms_consts(float lr, float alpha, float eps, float weight_decay, float momentum) {
  RmsConsts c;
  c.lr = lr;
  c.alpha = alpha;
  c.oma = 1.0f - alpha;
  c.eps = eps;
  c.wd = weight_decay;
  c.momentum = momentum;
  return c;
}

template <bool Centered, bool Momentum>
struct RmsRule : RmsConsts {
  static constexpr bool kSqrt = true;
  MIXTRAIN_HD explicit RmsRule(const RmsConsts& c) : RmsConsts(c) {}
  MIXTRAIN_HDI float pre(float* __restrict sq, float* __restrict ga, float*, int64_t i, float& g,
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
  MIXTRAIN_HDI float post(float*, float*, float* __restrict buf, int64_t i, float g, float p,
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

/// One element's whole update: the gradient g (read as fp32) times grad_mult, the rule, the
/// parameter loaded from and stored to its home (rnd: its stochastic-rounding draw). What the
/// CUDA kernel runs per element; the CPU kernels run the same steps split in passes.
template <class Rule, Home H>
MIXTRAIN_HDI void update_element(const Rule& rule, float* master, uint16_t* w16, float* wf,
                                 uint16_t* aux, float* s0, float* s1, float* s2, int64_t i, float g,
                                 float grad_mult, uint32_t rnd) {
  float p = load_param<H>(master, w16, aux, i);
  g = g * grad_mult;
  const float rad = rule.pre(s0, s1, s2, i, g, p);
  const float root = Rule::kSqrt ? sqrt_rn(rad) : 0.0f;
  store_param<H>(master, w16, wf, aux, i, rule.post(s0, s1, s2, i, g, p, root), rnd);
}

}  // namespace mixtrain::detail

#if defined(__clang__) && !defined(__CUDACC__)
#pragma float_control(pop)
#endif
