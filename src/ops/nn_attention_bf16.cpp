// Fused bf16 attention for CPUs with AVX512-BF16 (vdpbf16ps: bf16 pairs multiplied exactly and
// summed into fp32). One (batch, head) per task; every product runs in a small register-tiled
// kernel on operands packed into L2-sized per-thread buffers, so a step makes no GEMM calls for
// attention, writes no fp32 score tensors and reads each head's Q, K, V once.
//
// Same numerics as the GEMM path for bf16 (nn_attention.cpp): scores are exact products summed
// in fp32 and scaled once; softmax in fp32; P rounded to bf16 for P·V; backward recomputes P
// from the saved logsumexp, and P and dS are rounded to bf16 for dQ, dK and dV (FlashAttention's
// choice); every sum is fp32. Only summation order differs. Causal attention skips the tiles
// above the diagonal.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/simd/vmath.h"
#include "ops/nn_attention_bf16.h"
#include "ops/nn_common.h"

namespace mixtrain::nn_detail {

namespace {

#define MT_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

constexpr int64_t kMR = 8;   // rows per kernel call
constexpr int64_t kNR = 32;  // columns per register tile (two vectors of 16 fp32)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[r][c] = Σ_{k < K2} A[r·lda + k] ⊙ B[k·ldb + c] for r < 8, c < n (n a multiple of 32), where
// each uint32 holds a bf16 pair and ⊙ is the pair's dot product in fp32 (vdpbf16ps). 16
// accumulators stay in registers over the whole K loop.
MT_BF16 void kernel8(const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, int64_t K2,
                     int64_t n, float* C, int64_t ldc) {
  for (int64_t c0 = 0; c0 < n; c0 += kNR) {
    __m512 acc[kMR][2];
    for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t* b = B + c0;
    for (int64_t k = 0; k < K2; ++k) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * ldb);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16);
      for (int r = 0; r < kMR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[r * lda + k]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    for (int r = 0; r < kMR; ++r) {
      _mm512_storeu_ps(C + r * ldc + c0, acc[r][0]);
      _mm512_storeu_ps(C + r * ldc + c0 + 16, acc[r][1]);
    }
  }
}

// The same product with A read transposed from a row-major bf16 matrix M: A[r][k] is the pair
// (M[2k][c0 + r], M[2k + 1][c0 + r]) (ldm in elements). For dV = Pᵀ·dO and dK = dSᵀ·Q straight
// from P and dS: each k step interleaves two 8-element rows into 8 pairs and broadcasts them.
MT_BF16 void kernel8_ta(const uint16_t* M, int64_t ldm, const uint32_t* B, int64_t ldb, int64_t K2,
                        int64_t n, float* C, int64_t ldc) {
  for (int64_t c0 = 0; c0 < n; c0 += kNR) {
    __m512 acc[kMR][2];
    for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t* b = B + c0;
    alignas(32) uint32_t a8[kMR];
    for (int64_t k = 0; k < K2; ++k) {
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(M + 2 * k * ldm));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(M + (2 * k + 1) * ldm));
      _mm256_store_si256(reinterpret_cast<__m256i*>(a8),
                         _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi)));
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * ldb);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16);
      for (int r = 0; r < kMR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(a8[r]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    for (int r = 0; r < kMR; ++r) {
      _mm512_storeu_ps(C + r * ldc + c0, acc[r][0]);
      _mm512_storeu_ps(C + r * ldc + c0 + 16, acc[r][1]);
    }
  }
}

// n fp32 values rounded (RNE) into bf16 codes, then zeros up to n_zero: the rows of P and dS.
MT_BF16 void to_bf16_row(const float* src, int64_t n, uint16_t* dst, int64_t n_zero) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1);
    _mm256_mask_storeu_epi16(dst + j, m,
                             (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + j)));
  }
  std::memset(dst + n, 0, (n_zero - n) * 2);
}

// ---- packing (16-bit codes; a uint32 is a pair) ----

// rows [T][D] (row stride ld) -> dst [Tp][D] contiguous, rows >= T zero. Read as [Tp][D/2] pairs.
void pack_rows(const uint16_t* src, int64_t ld, int64_t T, int64_t D, int64_t Tp, uint16_t* dst) {
  for (int64_t t = 0; t < T; ++t) std::memcpy(dst + t * D, src + t * ld, D * 2);
  std::memset(dst + T * D, 0, (Tp - T) * D * 2);
}

// rows [T][D] -> dst [D/2][Tp]: dst[d2][t] = (src[t][2·d2], src[t][2·d2 + 1]); t >= T zero.
// The B operand of a product over d (Q·Kᵀ, dO·Vᵀ).
void pack_pairs_by_col(const uint16_t* src, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                       uint32_t* dst) {
  const int64_t D2 = D / 2;
  for (int64_t d2 = 0; d2 < D2; ++d2) std::memset(dst + d2 * Tp + T, 0, (Tp - T) * 4);
  for (int64_t t = 0; t < T; ++t) {
    uint32_t row[512];
    std::memcpy(row, src + t * ld, D * 2);
    for (int64_t d2 = 0; d2 < D2; ++d2) dst[d2 * Tp + t] = row[d2];
  }
}

// rows [T][D] -> dst [Tp/2][D]: dst[t2][d] = (src[2·t2][d], src[2·t2 + 1][d]); rows >= T zero.
// The B operand of a product over t (P·V, dS·K, Pᵀ·dO, dSᵀ·Q).
MT_BF16 void pack_pairs_by_row(const uint16_t* src, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                               uint32_t* dst) {
  for (int64_t t2 = 0; t2 < Tp / 2; ++t2) {
    const int64_t t0 = 2 * t2, t1 = 2 * t2 + 1;
    uint32_t* o = dst + t2 * D;
    if (t0 >= T) {
      std::memset(o, 0, D * 4);
      continue;
    }
    const uint16_t* r0 = src + t0 * ld;
    const uint16_t* r1 = t1 < T ? src + t1 * ld : nullptr;
    // (maskz forms with a full mask: g++ 12 warns about the plain forms' undefined source.)
    for (int64_t d = 0; d < D; d += 16) {  // D is a multiple of 32
      const __m512i lo = _mm512_maskz_cvtepu16_epi32(
          0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + d)));
      const __m512i hi =
          r1 ? _mm512_maskz_cvtepu16_epi32(
                   0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + d)))
             : _mm512_setzero_si512();
      _mm512_storeu_si512(o + d, _mm512_or_si512(lo, _mm512_maskz_slli_epi32(0xffff, hi, 16)));
    }
  }
}

const uint16_t* codes(const Tensor& t4, int64_t b, int64_t h) {
  const Shape& st = t4.strides();
  return static_cast<const uint16_t*>(t4.raw_data()) + b * st[0] + h * st[1];
}

char* out_ptr(const Tensor& t4, int64_t b, int64_t h) {
  const Shape& st = t4.strides();
  return static_cast<char*>(const_cast<void*>(t4.raw_data())) +
         (b * st[0] + h * st[1]) * static_cast<int64_t>(t4.element_size());
}

// An fp32 row of D values into a row of any float dtype (bf16 inline, others via convert).
void store_out(const float* src, int64_t D, char* dst, DType dt) {
  if (dt == DType::bf16)
    to_bf16_row(src, D, reinterpret_cast<uint16_t*>(dst), D);
  else
    store_row(src, D, dst, dt);
}

struct Sizes {
  int64_t Tq, Tk, D, Tqp, Tkp;
  bool causal;
  float scale;
};

Sizes sizes(const Tensor& q4, const Tensor& k4, bool causal, float scale) {
  const int64_t Tq = q4.size(2), Tk = k4.size(2), D = q4.size(3);
  return {Tq, Tk, D, round_up(Tq, kMR), round_up(Tk, kNR), causal, scale};
}

// Keys row block i0 sees: [0, keys) (padded to a tile: the kernel's columns).
int64_t block_keys(const Sizes& z, int64_t i0) {
  return z.causal ? std::min(z.Tk, i0 + kMR) : z.Tk;
}

}  // namespace

bool attention_bf16_fused_ok(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk, int64_t D) {
  static const bool isa = std::string(simd_level()) == "avx512bf16";
  return isa && qkv_dt == DType::bf16 && g_dt == DType::bf16 && D % kNR == 0 && D <= 1024 &&
         Tq > 0 && Tk > 0 && Tq <= 8192 && Tk <= 8192;
}

void attention_forward_bf16_fused(const Tensor& q4, const Tensor& k4, const Tensor& v4,
                                  const Tensor& o4, float* lse, bool causal, float scale) {
  const int64_t B = q4.size(0), H = q4.size(1);
  const Sizes z = sizes(q4, k4, causal, scale);
  const int64_t D = z.D, D2 = D / 2;
  const DType odt = o4.dtype();
  const int64_t oes = static_cast<int64_t>(o4.element_size()), ors = q4.strides()[2];
  (void)ors;
#pragma omp parallel
  {
    std::vector<uint16_t> qa(z.Tqp * D), p(kMR * z.Tkp);
    std::vector<uint32_t> kp(D2 * z.Tkp), vq(z.Tkp / 2 * D);
    std::vector<float> s(kMR * z.Tkp), o(kMR * D);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      pack_rows(codes(q4, b, h), q4.strides()[2], z.Tq, D, z.Tqp, qa.data());
      pack_pairs_by_col(codes(k4, b, h), k4.strides()[2], z.Tk, D, z.Tkp, kp.data());
      pack_pairs_by_row(codes(v4, b, h), v4.strides()[2], z.Tk, D, z.Tkp, vq.data());
      const auto* qa32 = reinterpret_cast<const uint32_t*>(qa.data());
      float* lh = lse + bh * z.Tq;
      char* ob = out_ptr(o4, b, h);
      const int64_t o_rs = o4.strides()[2] * oes;
      for (int64_t i0 = 0; i0 < z.Tq; i0 += kMR) {
        const int64_t nkp = round_up(block_keys(z, i0), kNR);
        kernel8(qa32 + i0 * D2, D2, kp.data(), z.Tkp, D2, nkp, s.data(), z.Tkp);
        for (int64_t r = 0; r < kMR; ++r) {
          const int64_t i = i0 + r;
          uint16_t* pr = p.data() + r * z.Tkp;
          if (i >= z.Tq) {
            std::memset(pr, 0, nkp * 2);
            continue;
          }
          float* row = s.data() + r * z.Tkp;
          const int64_t jn = z.causal ? i + 1 : z.Tk;
          for (int64_t j = 0; j < jn; ++j) row[j] *= z.scale;
          const float m = max_row(row, jn);
          simd::exp_shift(row, jn, m);
          const float l = sum_lanes(row, jn);
          lh[i] = m + std::log(l);
          const float inv = 1.0f / l;
          for (int64_t j = 0; j < jn; ++j) row[j] *= inv;
          to_bf16_row(row, jn, pr, nkp);
        }
        // O = P·V over the block's keys.
        kernel8(reinterpret_cast<const uint32_t*>(p.data()), z.Tkp / 2, vq.data(), D, nkp / 2, D,
                o.data(), D);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r)
          store_out(o.data() + r * D, D, ob + (i0 + r) * o_rs, odt);
      }
    }
  }
}

void attention_backward_bf16_fused(const Tensor& q4, const Tensor& k4, const Tensor& v4,
                                   const Tensor& g4, const float* lse, bool causal, float scale,
                                   const Tensor& dq4, const Tensor& dk4, const Tensor& dv4) {
  const int64_t B = q4.size(0), H = q4.size(1);
  const Sizes z = sizes(q4, k4, causal, scale);
  const int64_t D = z.D, D2 = D / 2, Tq2 = z.Tqp / 2;
#pragma omp parallel
  {
    std::vector<uint16_t> qa(z.Tqp * D), ga(z.Tqp * D), pf(z.Tqp * z.Tkp), dsf(z.Tqp * z.Tkp);
    std::vector<uint32_t> kp(D2 * z.Tkp), vp(D2 * z.Tkp), kq(z.Tkp / 2 * D), qq(Tq2 * D),
        gq(Tq2 * D);
    std::vector<float> s(kMR * z.Tkp), dp(kMR * z.Tkp), acc(kMR * D);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const uint16_t *q = codes(q4, b, h), *k = codes(k4, b, h), *v = codes(v4, b, h),
                     *g = codes(g4, b, h);
      const int64_t qs = q4.strides()[2], ks = k4.strides()[2], vs = v4.strides()[2],
                    gs = g4.strides()[2];
      pack_rows(q, qs, z.Tq, D, z.Tqp, qa.data());
      pack_rows(g, gs, z.Tq, D, z.Tqp, ga.data());
      pack_pairs_by_col(k, ks, z.Tk, D, z.Tkp, kp.data());
      pack_pairs_by_col(v, vs, z.Tk, D, z.Tkp, vp.data());
      pack_pairs_by_row(k, ks, z.Tk, D, z.Tkp, kq.data());
      pack_pairs_by_row(q, qs, z.Tq, D, z.Tqp, qq.data());
      pack_pairs_by_row(g, gs, z.Tq, D, z.Tqp, gq.data());
      // Rows past Tq stay zero (the dK, dV products read them); each row below is written to
      // the end (zeros past its keys: the products read whole tiles).
      std::memset(pf.data() + z.Tq * z.Tkp, 0, (z.Tqp - z.Tq) * z.Tkp * 2);
      std::memset(dsf.data() + z.Tq * z.Tkp, 0, (z.Tqp - z.Tq) * z.Tkp * 2);
      const float* lh = lse + bh * z.Tq;
      const auto* qa32 = reinterpret_cast<const uint32_t*>(qa.data());
      const auto* ga32 = reinterpret_cast<const uint32_t*>(ga.data());
      char* dqb = out_ptr(dq4, b, h);
      const int64_t dq_rs = dq4.strides()[2] * static_cast<int64_t>(dq4.element_size());
      // By query block: P and dS (recomputed from lse), then dQ = dS·K.
      for (int64_t i0 = 0; i0 < z.Tq; i0 += kMR) {
        const int64_t nkp = round_up(block_keys(z, i0), kNR);
        kernel8(qa32 + i0 * D2, D2, kp.data(), z.Tkp, D2, nkp, s.data(), z.Tkp);
        kernel8(ga32 + i0 * D2, D2, vp.data(), z.Tkp, D2, nkp, dp.data(), z.Tkp);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r) {
          const int64_t i = i0 + r;
          float* pr = s.data() + r * z.Tkp;
          float* dr = dp.data() + r * z.Tkp;
          const int64_t jn = z.causal ? i + 1 : z.Tk;
          for (int64_t j = 0; j < jn; ++j) pr[j] *= z.scale;
          simd::exp_shift(pr, jn, lh[i]);
          // dS = P ∘ (dP − Σₖ Pₖ dPₖ) · scale.
          const float di = dot_lanes(pr, dr, jn);
          for (int64_t j = 0; j < jn; ++j) dr[j] = pr[j] * (dr[j] - di) * z.scale;
          to_bf16_row(pr, jn, pf.data() + i * z.Tkp, z.Tkp);
          to_bf16_row(dr, jn, dsf.data() + i * z.Tkp, z.Tkp);
        }
        kernel8(reinterpret_cast<const uint32_t*>(dsf.data() + i0 * z.Tkp), z.Tkp / 2, kq.data(), D,
                nkp / 2, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r)
          store_out(acc.data() + r * D, D, dqb + (i0 + r) * dq_rs, dq4.dtype());
      }
      // By key block: dV = Pᵀ·dO and dK = dSᵀ·Q over the query rows that see the block (causal:
      // rows from the block's first key on; P and dS are zero above the diagonal).
      char* dkb = out_ptr(dk4, b, h);
      char* dvb = out_ptr(dv4, b, h);
      const int64_t dk_rs = dk4.strides()[2] * static_cast<int64_t>(dk4.element_size());
      const int64_t dv_rs = dv4.strides()[2] * static_cast<int64_t>(dv4.element_size());
      for (int64_t j0 = 0; j0 < z.Tk; j0 += kMR) {
        const int64_t k0 = z.causal ? std::min(j0, z.Tqp) / 2 : 0;  // first query pair
        const uint16_t* pj = pf.data() + 2 * k0 * z.Tkp + j0;
        const uint16_t* dsj = dsf.data() + 2 * k0 * z.Tkp + j0;
        kernel8_ta(pj, z.Tkp, gq.data() + k0 * D, D, Tq2 - k0, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && j0 + r < z.Tk; ++r)
          store_out(acc.data() + r * D, D, dvb + (j0 + r) * dv_rs, dv4.dtype());
        kernel8_ta(dsj, z.Tkp, qq.data() + k0 * D, D, Tq2 - k0, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && j0 + r < z.Tk; ++r)
          store_out(acc.data() + r * D, D, dkb + (j0 + r) * dk_rs, dk4.dtype());
      }
    }
  }
}

}  // namespace mixtrain::nn_detail
