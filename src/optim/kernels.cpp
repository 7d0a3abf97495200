// The fused optimizer update pass, written once as a template over (rule, gradient dtype,
// where the parameter lives) and compiled for three ISAs (baseline x86-64, AVX2+FMA,
// AVX-512), picked at run time by simd::active_level(). Loops are branch-free so they
// vectorise: the bf16 roundings are integer arithmetic, stochastic rounding's random bits
// are the counter-based random_bits() computed in-lane.
//
// Contraction is off: a*b+c is two roundings on every path, so the AVX-512 and baseline
// kernels give the same bits (reproducible across machines); the pass is memory-bound, FMA
// would not make it faster. math-errno is off so sqrt vectorises (its inputs are >= 0).
#pragma GCC optimize("fp-contract=off", "no-math-errno")
#include "mixtrain/optim/kernels.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "cpu/simd/convert.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"

namespace mixtrain::optim {
namespace {

#define MT_INLINE __attribute__((always_inline)) inline

// ---- element load/store (branch-free, bit-exact with dtype.h's RNE) -------------------------

MT_INLINE uint16_t bf16_rne(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t q = (u >> 16) | 0x40u;  // NaN: quiet, keep the sign and top payload
  // mask = all ones for NaN (|u| > 0x7f800000), computed without a compare-and-branch.
  const uint32_t nan = 0u - ((0x7f800000u - (u & 0x7fffffffu)) >> 31);
  return static_cast<uint16_t>((q & nan) | (r & ~nan));
}

// ---- update rules: p -> new p, state in place; torch.optim's operation order ------------
// Every option that changes the loop's shape is a template parameter, so the loops have no
// branches left (the vectoriser needs that; GCC's unswitching gives up on the larger bodies).

template <bool Decoupled>
struct AdamK {
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
  MT_INLINE float operator()(float* __restrict m, float* __restrict v, float*, int64_t i, float g,
                             float p) const {
    if constexpr (Decoupled)
      p = p * decay;
    else
      g = g + wd * p;
    const float mi = m[i] * beta1 + omb1 * g;
    const float vi = v[i] * beta2 + omb2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    return p - step_size * (mi / denom);
  }
};

template <bool Momentum, bool Nesterov>
struct SgdK {
  float lr, mom, omd, wd;
  explicit SgdK(const SgdHyper& h)
      : lr(h.lr),
        // First step: torch sets buf = d; buf * 0 + 1 * d is exactly d (buf is finite).
        mom(h.first_step ? 0.0f : h.momentum),
        omd(h.first_step ? 1.0f : 1.0f - h.dampening),
        wd(h.weight_decay),
        nest(h.momentum) {}
  float nest;
  MT_INLINE float operator()(float* __restrict buf, float*, float*, int64_t i, float g,
                             float p) const {
    float d = g + wd * p;
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
  float lr, alpha, oma, eps, wd, momentum;
  explicit RmsK(const RMSPropHyper& h)
      : lr(h.lr),
        alpha(h.alpha),
        oma(1.0f - h.alpha),
        eps(h.eps),
        wd(h.weight_decay),
        momentum(h.momentum) {}
  MT_INLINE float operator()(float* __restrict sq, float* __restrict ga, float* __restrict buf,
                             int64_t i, float g, float p) const {
    g = g + wd * p;
    const float s = sq[i] * alpha + oma * (g * g);
    sq[i] = s;
    float avg;
    if constexpr (Centered) {
      const float a = ga[i] * alpha + oma * g;
      ga[i] = a;
      avg = std::sqrt(s - a * a) + eps;
    } else {
      avg = std::sqrt(s) + eps;
    }
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

template <class RuleK, class G, Home H>
MT_INLINE void body(const RuleK& rule, const detail::UpdateArgs& a) {
  const G* __restrict grad = static_cast<const G*>(a.grad);
  float* __restrict s0 = a.s0;
  float* __restrict s1 = a.s1;
  float* __restrict s2 = a.s2;
  float* __restrict master = a.master;
  uint16_t* __restrict w16 = static_cast<uint16_t*>(a.weight);
  uint16_t* __restrict aux = a.aux;
  const float mult = a.grad_mult;
  const int64_t n = a.n;
  if constexpr (H == Home::f32 || H == Home::f32_copy_bf16 || H == Home::f32_copy_f32) {
    float* __restrict wf = static_cast<float*>(a.weight);
    for (int64_t i = 0; i < n; ++i) {
      const float p = rule(s0, s1, s2, i, ldg(grad, i) * mult, master[i]);
      master[i] = p;
      if constexpr (H == Home::f32_copy_bf16) w16[i] = bf16_rne(p);
      if constexpr (H == Home::f32_copy_f32) wf[i] = p;
    }
  } else if constexpr (H == Home::split16) {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u0 = (static_cast<uint32_t>(w16[i]) << 16) +
                          static_cast<uint32_t>(static_cast<int32_t>(static_cast<int16_t>(aux[i])));
      const float p = rule(s0, s1, s2, i, ldg(grad, i) * mult, std::bit_cast<float>(u0));
      const uint32_t u = std::bit_cast<uint32_t>(p);
      w16[i] = static_cast<uint16_t>((u + 0x8000u) >> 16);
      aux[i] = static_cast<uint16_t>(u);
    }
  } else if constexpr (H == Home::stochastic) {
    // The random bits are drawn per block into L1 first: the 64-bit hash and the 16-bit
    // weight stream vectorise separately, not in one loop.
    constexpr int64_t kBlock = 1024;
    alignas(64) uint32_t rnd[kBlock];
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
      const int64_t len = n - b0 < kBlock ? n - b0 : kBlock;
      const uint64_t ctr = a.counter + static_cast<uint64_t>(b0);
      for (int64_t j = 0; j < len; ++j)
        rnd[j] = static_cast<uint32_t>(random_bits(a.seed, ctr + static_cast<uint64_t>(j)) >> 32);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = b0 + j;
        const float w = std::bit_cast<float>(static_cast<uint32_t>(w16[i]) << 16);
        const float p = rule(s0, s1, s2, i, ldg(grad, i) * mult, w);
        const uint32_t u = std::bit_cast<uint32_t>(p);
        // bf16::round_stochastic, branch-free: add 16 random bits to the magnitude, truncate;
        // Inf/NaN (exponent all ones) round as RNE does.
        const uint32_t sr = (u + (rnd[j] & 0xffffu)) >> 16;
        const uint32_t special = 0u - ((((u >> 23) & 0xffu) + 1u) >> 8);  // all ones: Inf/NaN
        const uint32_t rne = bf16_rne(p);
        w16[i] = static_cast<uint16_t>((rne & special) | (sr & ~special));
      }
    }
  } else {  // kahan
    for (int64_t i = 0; i < n; ++i) {
      const float w = std::bit_cast<float>(static_cast<uint32_t>(w16[i]) << 16);
      const float c = std::bit_cast<float>(static_cast<uint32_t>(aux[i]) << 16);
      const float p = rule(s0, s1, s2, i, ldg(grad, i) * mult, w);
      // Kahan: the change this step wanted (exact in fp32 by Sterbenz while p is within 2x of
      // w) plus what earlier steps lost; what rounding to bf16 loses now is carried on.
      const float y = (p - w) + c;
      const uint16_t wn = bf16_rne(w + y);
      const float wnf = std::bit_cast<float>(static_cast<uint32_t>(wn) << 16);
      w16[i] = wn;
      aux[i] = bf16_rne(y - (wnf - w));
    }
  }
}

detail::UpdateArgs sub_args(const detail::UpdateArgs& a, int64_t b, int64_t len) {
  detail::UpdateArgs s = a;
  const size_t wsz = a.mode == MasterMode::fp32 ? dtype_size(a.weight_dtype) : 2;
  if (a.master) s.master += b;
  if (a.weight) s.weight = static_cast<char*>(a.weight) + b * static_cast<int64_t>(wsz);
  if (a.aux) s.aux += b;
  if (a.s0) s.s0 += b;
  if (a.s1) s.s1 += b;
  if (a.s2) s.s2 += b;
  s.grad = static_cast<const char*>(a.grad) + b * static_cast<int64_t>(dtype_size(a.grad_dtype));
  s.counter += static_cast<uint64_t>(b);
  s.n = len;
  return s;
}

template <class RuleK, class G>
MT_INLINE void by_home(const RuleK& rule, const detail::UpdateArgs& a) {
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
          constexpr int64_t kBlock = 1024;
          for (int64_t b = 0; b < a.n; b += kBlock) {
            const int64_t len = std::min(kBlock, a.n - b);
            detail::UpdateArgs s = sub_args(a, b, len);
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
      throw DTypeError(
          fmt::format("optimizer update: weight copy dtype {} (expected f32, bf16, f16)",
                      dtype_name(a.weight_dtype)));
    case MasterMode::bf16_stochastic:
      return body<RuleK, G, Home::stochastic>(rule, a);
    case MasterMode::bf16_kahan:
      return body<RuleK, G, Home::kahan>(rule, a);
    case MasterMode::split16:
      return body<RuleK, G, Home::split16>(rule, a);
  }
}

template <class RuleK>
MT_INLINE void by_grad(const RuleK& rule, const detail::UpdateArgs& a) {
  switch (a.grad_dtype) {
    case DType::f32:
      return by_home<RuleK, float>(rule, a);
    case DType::bf16:
      return by_home<RuleK, uint16_t>(rule, a);
    case DType::f16: {
      constexpr int64_t kBlock = 1024;
      alignas(64) float tmp[kBlock];
      for (int64_t b = 0; b < a.n; b += kBlock) {
        const int64_t len = std::min(kBlock, a.n - b);
        detail::UpdateArgs s = sub_args(a, b, len);
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
  throw DTypeError(fmt::format("optimizer update: gradient dtype {} (expected f32, bf16, f16)",
                               dtype_name(a.grad_dtype)));
}

MT_INLINE void dispatch_rule(const detail::Rule& r, const detail::UpdateArgs& a) {
  switch (r.kind) {
    case detail::Rule::Kind::adam:
      if (r.adam.decoupled) return by_grad(AdamK<true>(r.adam), a);
      return by_grad(AdamK<false>(r.adam), a);
    case detail::Rule::Kind::sgd:
      if (r.sgd.momentum == 0.0f) return by_grad(SgdK<false, false>(r.sgd), a);
      if (r.sgd.nesterov) return by_grad(SgdK<true, true>(r.sgd), a);
      return by_grad(SgdK<true, false>(r.sgd), a);
    case detail::Rule::Kind::rmsprop: {
      const bool mom = r.rms.momentum > 0.0f;
      if (r.rms.centered)
        return mom ? by_grad(RmsK<true, true>(r.rms), a) : by_grad(RmsK<true, false>(r.rms), a);
      return mom ? by_grad(RmsK<false, true>(r.rms), a) : by_grad(RmsK<false, false>(r.rms), a);
    }
  }
}

void run_baseline(const detail::Rule& r, const detail::UpdateArgs& a) { dispatch_rule(r, a); }
__attribute__((target("avx2,fma,f16c"))) void run_avx2(const detail::Rule& r,
                                                       const detail::UpdateArgs& a) {
  dispatch_rule(r, a);
}
// AVX-512DQ gives the 64-bit multiplies of random_bits() in-lane; every AVX-512 CPU that has
// BW and VL (Skylake-SP onwards, Zen 4) has DQ too, and we check it at run time regardless.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) void run_avx512(
    const detail::Rule& r, const detail::UpdateArgs& a) {
  dispatch_rule(r, a);
}

using RunFn = void (*)(const detail::Rule&, const detail::UpdateArgs&);
RunFn pick() {
  switch (simd::active_level()) {
    case simd::Level::avx512:
    case simd::Level::avx512bf16:
      if (__builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) return run_avx512;
      [[fallthrough]];
    case simd::Level::avx2:
      if (__builtin_cpu_supports("fma")) return run_avx2;
      [[fallthrough]];
    case simd::Level::scalar:
      break;
  }
  return run_baseline;
}

}  // namespace

namespace detail {
void run_update(const Rule& rule, const UpdateArgs& args) {
  static const RunFn fn = pick();
  fn(rule, args);
}
}  // namespace detail

template <class G, class W>
void adamw_update(const AdamWHyper& h, float grad_mult, float* master, float* m, float* v,
                  const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::adam;
  r.adam = h;
  detail::UpdateArgs a;
  a.grad_mult = grad_mult;
  a.master = master;
  a.weight = weight_copy;
  a.weight_dtype = dtype_of<W>();
  a.grad = grad;
  a.grad_dtype = dtype_of<G>();
  a.s0 = m;
  a.s1 = v;
  a.n = n;
  detail::run_update(r, a);
}

template <class G, class W>
void sgd_update(const SgdHyper& h, float grad_mult, float* master, float* momentum_buf,
                const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::sgd;
  r.sgd = h;
  detail::UpdateArgs a;
  a.grad_mult = grad_mult;
  a.master = master;
  a.weight = weight_copy;
  a.weight_dtype = dtype_of<W>();
  a.grad = grad;
  a.grad_dtype = dtype_of<G>();
  a.s0 = momentum_buf;
  a.n = n;
  detail::run_update(r, a);
}

template <class G, class W>
void rmsprop_update(const RMSPropHyper& h, float grad_mult, float* master, float* square_avg,
                    float* grad_avg, float* momentum_buf, const G* grad, W* weight_copy,
                    int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::rmsprop;
  r.rms = h;
  detail::UpdateArgs a;
  a.grad_mult = grad_mult;
  a.master = master;
  a.weight = weight_copy;
  a.weight_dtype = dtype_of<W>();
  a.grad = grad;
  a.grad_dtype = dtype_of<G>();
  a.s0 = square_avg;
  a.s1 = grad_avg;
  a.s2 = momentum_buf;
  a.n = n;
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
