// isa: avx2 avx512 avx512bf16
// Fused attention kernels (cpu/attention_fused.h): one (batch, head) per task; every product
// runs in a small register-tiled kernel on operands packed once into L2-sized per-thread
// buffers, so a step makes no GEMM calls for attention, writes no score tensors and reads each
// head's Q, K, V once.
//
// Element kinds share one driver (the Kind template):
//   Bf16Kind (avx512bf16): bf16 operands as pairs, vdpbf16ps (pairs multiplied exactly and
//            summed into fp32); P and dS rounded to bf16 for the products that use them
//            (FlashAttention's choice, as the GEMM path's bf16).
//   F32Kind  (every build): operands widened to fp32 when packed (fp16 and bf16: exact), fp32
//            FMAs, P and dS kept fp32. AVX-512 tiles are 8×32 in 16 zmm accumulators; AVX2
//            blocks are 6 rows, run as 6×16 tiles (12 ymm accumulators: AVX2 has 16 registers).
// Scores are scaled once and the softmax runs in fp32 from the logsumexp the forward saves;
// only summation order (and, for bf16 on F32Kind, P and dS not being rounded) differs from
// the GEMM path. Causal rows skip the tiles above the diagonal.
#include "cpu/isa_target.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/attention.h"
#include "cpu/convert.h"
#include "cpu/rows.h"
#include "cpu/vmath.h"

namespace mixtrain::cpu {

namespace {

// Rows per kernel call: 8 on AVX-512 (8×32 tiles in 16 of 32 zmm); 6 on AVX2, whose 6×16 tiles
// keep 12 accumulators in its 16 registers (12 independent FMA chains; a 4×16 tile's 8 just
// cover two pipes' latency and measured 20-30% slower: 56-67 against 72-85 GFLOP/s a thread).
constexpr int64_t kMR = MT_ISA >= 2 ? kAttnRows : kAttnRowsAvx2;
constexpr int64_t kNR = kAttnCols;  // columns per tile (two zmm of 16 fp32, four ymm of 8)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Row t of a [T, D] view with row stride ld (elements) of dtype dt.
inline const char* row_of(const char* base, DType dt, int64_t ld, int64_t t) {
  return base + t * ld * static_cast<int64_t>(dtype_size(dt));
}

// A head's rows lie a whole packed projection apart ([B, T, 3C]: 2304 bytes in bf16 at C = 384),
// a new page every row or two, where the hardware prefetchers stop: without a software prefetch
// each row was a demand miss (the widening took 16% of bf16 attention on AVX2, waiting on its
// loads). The packs ask for the row kAhead ahead (the AVX-512 ones too: same layout, not
// measured there).
constexpr int64_t kAhead = 16;
inline void prefetch_bytes(const char* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}
inline void prefetch_row(const char* base, DType dt, int64_t ld, int64_t t, int64_t T, int64_t D) {
  if (t < T) prefetch_bytes(row_of(base, dt, ld, t), D * static_cast<int64_t>(dtype_size(dt)));
}
// The same for the output rows [t0, t0 + n) (row stride rs bytes, T rows of `bytes`), asked
// for one block before they are written.
inline void prefetch_out(const char* base, int64_t rs, int64_t t0, int64_t n, int64_t T,
                         int64_t bytes) {
  for (int64_t t = t0; t < std::min(T, t0 + n); ++t) prefetch_bytes(base + t * rs, bytes);
}

#if MT_ISA >= 2
#if MT_ISA == 3
// n fp32 values rounded (RNE) into bf16 codes, then zeros up to n_zero.
MT_TARGET void to_bf16_row(const float* src, int64_t n, uint16_t* dst, int64_t n_zero) {
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
#endif

// The 8×32 fp32 accumulator tile every kernel below keeps in registers.
using Tile = __m512[kMR][2];
MT_INLINE void zero_tile(Tile& acc) {
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
}
MT_INLINE void store_tile(const Tile& acc, float* C, int64_t ldc) {
  for (int r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(C + r * ldc, acc[r][0]);
    _mm512_storeu_ps(C + r * ldc + 16, acc[r][1]);
  }
}

#if MT_ISA == 3
// ---- bf16: a uint32 unit is a pair of bf16 codes along the reduction dim ----
struct Bf16Kind {
  using U = uint32_t;  // operand unit
  using P = uint16_t;  // storage of P and dS
  static constexpr int64_t kPer = 2;
  static constexpr bool kInPlace = false;  // scores are fp32, P and dS bf16: stored rounded

  // C[r][c] = Σ_{k < K} A[r·lda + k] ⊙ B[k·ldb + c] for r < 8, c < n (a multiple of 32), ⊙ a
  // pair's dot product in fp32. 16 accumulators stay in registers over the K loop.
  MT_TARGET static void kernel(const U* A, int64_t lda, const U* B, int64_t ldb, int64_t K,
                               int64_t n, float* C, int64_t ldc) {
    for (int64_t c0 = 0; c0 < n; c0 += kNR) {
      Tile acc;
      zero_tile(acc);
      const U* b = B + c0;
      for (int64_t k = 0; k < K; ++k) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * ldb);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16);
        for (int r = 0; r < kMR; ++r) {
          const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[r * lda + k]));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
      }
      store_tile(acc, C + c0, ldc);
    }
  }

  // The same with A read transposed from row-major P or dS: A[r][k] = (M[2k][r], M[2k+1][r])
  // (ldm in elements): each step interleaves two 8-element rows into 8 pairs.
  MT_TARGET static void kernel_ta(const P* M, int64_t ldm, const U* B, int64_t ldb, int64_t K,
                                  int64_t n, float* C, int64_t ldc) {
    for (int64_t c0 = 0; c0 < n; c0 += kNR) {
      Tile acc;
      zero_tile(acc);
      const U* b = B + c0;
      alignas(32) uint32_t a8[kMR];
      for (int64_t k = 0; k < K; ++k) {
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(M + 2 * k * ldm));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(M + (2 * k + 1) * ldm));
        _mm256_store_si256(
            reinterpret_cast<__m256i*>(a8),
            _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi)));
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * ldb);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16);
        for (int r = 0; r < kMR; ++r) {
          const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(a8[r]));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
      }
      store_tile(acc, C + c0, ldc);
    }
  }

  // [T][D] rows -> [Tp][D] bf16 codes (read as [Tp][D/2] pairs), rows >= T zero.
  static void pack_rows(const char* src, DType, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                        U* dst) {
    auto* d = reinterpret_cast<uint16_t*>(dst);
    for (int64_t t = 0; t < kAhead; ++t) prefetch_row(src, DType::bf16, ld, t, T, D);
    for (int64_t t = 0; t < T; ++t) {
      prefetch_row(src, DType::bf16, ld, t + kAhead, T, D);
      std::memcpy(d + t * D, row_of(src, DType::bf16, ld, t), D * 2);
    }
    std::memset(d + T * D, 0, (Tp - T) * D * 2);
  }

  // [T][D] -> [D/2][Tp]: dst[d2][t] = (src[t][2·d2], src[t][2·d2 + 1]); t >= T zero. The B
  // operand of a product over d (Q·Kᵀ, dO·Vᵀ).
  static void pack_by_col(const char* src, DType, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                          U* dst) {
    const int64_t D2 = D / 2;
    for (int64_t d2 = 0; d2 < D2; ++d2) std::memset(dst + d2 * Tp + T, 0, (Tp - T) * 4);
    for (int64_t t = 0; t < kAhead; ++t) prefetch_row(src, DType::bf16, ld, t, T, D);
    for (int64_t t = 0; t < T; ++t) {
      prefetch_row(src, DType::bf16, ld, t + kAhead, T, D);
      uint32_t row[512];
      std::memcpy(row, row_of(src, DType::bf16, ld, t), D * 2);
      for (int64_t d2 = 0; d2 < D2; ++d2) dst[d2 * Tp + t] = row[d2];
    }
  }

  // [T][D] -> [Tp/2][D]: dst[t2][d] = (src[2·t2][d], src[2·t2 + 1][d]); rows >= T zero. The B
  // operand of a product over t (P·V, dS·K, Pᵀ·dO, dSᵀ·Q).
  MT_TARGET static void pack_by_row(const char* src, DType, int64_t ld, int64_t T, int64_t D,
                                    int64_t Tp, U* dst) {
    for (int64_t t = 0; t < kAhead; ++t) prefetch_row(src, DType::bf16, ld, t, T, D);
    for (int64_t t2 = 0; t2 < Tp / 2; ++t2) {
      const int64_t t0 = 2 * t2, t1 = 2 * t2 + 1;
      prefetch_row(src, DType::bf16, ld, t0 + kAhead, T, D);
      prefetch_row(src, DType::bf16, ld, t1 + kAhead, T, D);
      U* o = dst + t2 * D;
      if (t0 >= T) {
        std::memset(o, 0, D * 4);
        continue;
      }
      const auto* r0 = reinterpret_cast<const uint16_t*>(row_of(src, DType::bf16, ld, t0));
      const auto* r1 =
          t1 < T ? reinterpret_cast<const uint16_t*>(row_of(src, DType::bf16, ld, t1)) : nullptr;
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

  // A row of P or dS: n values rounded to bf16, zeros up to n_zero.
  static void store_p(const float* src, int64_t n, P* dst, int64_t n_zero) {
    to_bf16_row(src, n, dst, n_zero);
  }
};

#endif  // MT_ISA == 3
#endif  // MT_ISA >= 2

// ---- fp32 (fp16 and bf16 widened when packed): a unit is one fp32 value ----
struct F32Kind {
  using U = float;
  using P = float;
  static constexpr int64_t kPer = 1;
  // Scores become P and dS where the kernels write them (no copy rows).
  static constexpr bool kInPlace = true;

  // C[r][c] = Σ_k A(r, k)·B[k·ldb + c] for r < 8, c < n (a multiple of 32), with A(r, k) at
  // A[r·a_rs + k·a_ks]: rows of Q or dO (a_ks = 1), or P and dS read transposed (a_rs = 1).
#if MT_ISA >= 2
  MT_TARGET static void tile_kernel(const float* A, int64_t a_rs, int64_t a_ks, const U* B,
                                    int64_t ldb, int64_t K, int64_t n, float* C, int64_t ldc) {
    for (int64_t c0 = 0; c0 < n; c0 += kNR) {
      Tile acc;
      zero_tile(acc);
      const U* b = B + c0;
      for (int64_t k = 0; k < K; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b + k * ldb), b1 = _mm512_loadu_ps(b + k * ldb + 16);
        for (int r = 0; r < kMR; ++r) {
          const __m512 a = _mm512_set1_ps(A[r * a_rs + k * a_ks]);
          acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
      }
      store_tile(acc, C + c0, ldc);
    }
  }
#else
  // kMR (6) rows × 16 columns at a time: 12 accumulators, two B vectors and a broadcast.
  MT_TARGET static void tile_kernel(const float* A, int64_t a_rs, int64_t a_ks, const U* B,
                                    int64_t ldb, int64_t K, int64_t n, float* C, int64_t ldc) {
    for (int64_t c0 = 0; c0 < n; c0 += 16) {
      __m256 acc[kMR][2];
      for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      const U* b = B + c0;
      for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
        for (int r = 0; r < kMR; ++r) {
          const __m256 av = _mm256_broadcast_ss(A + r * a_rs + k * a_ks);
          acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
      }
      for (int r = 0; r < kMR; ++r) {
        _mm256_storeu_ps(C + r * ldc + c0, acc[r][0]);
        _mm256_storeu_ps(C + r * ldc + c0 + 8, acc[r][1]);
      }
    }
  }
#endif
  static void kernel(const U* A, int64_t lda, const U* B, int64_t ldb, int64_t K, int64_t n,
                     float* C, int64_t ldc) {
    tile_kernel(A, lda, 1, B, ldb, K, n, C, ldc);
  }
  // A[r][k] = M[k][r].
  static void kernel_ta(const P* M, int64_t ldm, const U* B, int64_t ldb, int64_t K, int64_t n,
                        float* C, int64_t ldc) {
    tile_kernel(M, 1, ldm, B, ldb, K, n, C, ldc);
  }

  // [T][D] rows of dtype dt -> [Tp][D] fp32, rows >= T zero.
  static void pack_rows(const char* src, DType dt, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                        U* dst) {
    const RowConverter widen(dt, DType::f32);
    for (int64_t t = 0; t < kAhead; ++t) prefetch_row(src, dt, ld, t, T, D);
    for (int64_t t = 0; t < T; ++t) {
      prefetch_row(src, dt, ld, t + kAhead, T, D);
      widen(row_of(src, dt, ld, t), dst + t * D, D);
    }
    std::memset(dst + T * D, 0, (Tp - T) * D * 4);
  }

  // [T][D] -> [D][Tp] fp32 (the transpose), t >= T zero. Eight rows at a time by 8×8 AVX2
  // register transposes (a scalar scatter took a tenth of the attention time); fp32 rows are
  // read where they lie, 16-bit ones widened first.
  MT_TARGET static void pack_by_col(const char* src, DType dt, int64_t ld, int64_t T, int64_t D,
                                    int64_t Tp, U* dst) {
    for (int64_t d = 0; d < D; ++d) std::memset(dst + d * Tp + T, 0, (Tp - T) * 4);
    std::vector<float> wide(dt == DType::f32 ? 0 : 8 * D);
    const RowConverter widen(dt, DType::f32);
    int64_t t0 = 0;
    for (int64_t t = 0; t < kAhead; ++t) prefetch_row(src, dt, ld, t, T, D);
    for (; t0 + 8 <= T; t0 += 8) {
      for (int64_t t = t0 + kAhead; t < t0 + kAhead + 8; ++t) prefetch_row(src, dt, ld, t, T, D);
      const float* r[8];
      for (int i = 0; i < 8; ++i) {
        if (dt == DType::f32) {
          r[i] = reinterpret_cast<const float*>(row_of(src, dt, ld, t0 + i));
        } else {
          widen(row_of(src, dt, ld, t0 + i), wide.data() + i * D, D);
          r[i] = wide.data() + i * D;
        }
      }
      for (int64_t d0 = 0; d0 < D; d0 += 8) {
        __m256 x[8];
        for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(r[i] + d0);
        transpose8(x);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (d0 + i) * Tp + t0, x[i]);
      }
    }
    for (int64_t t = t0; t < T; ++t) {
      float row[1024];
      widen(row_of(src, dt, ld, t), row, D);
      for (int64_t d = 0; d < D; ++d) dst[d * Tp + t] = row[d];
    }
  }

  // x[i][j] <- x[j][i] for an 8×8 block held in eight registers.
  MT_TARGET static void transpose8(__m256 (&x)[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
      x[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      x[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }

  // [T][D] -> [Tp][D] fp32: the rows as they are (padded).
  static void pack_by_row(const char* src, DType dt, int64_t ld, int64_t T, int64_t D, int64_t Tp,
                          U* dst) {
    pack_rows(src, dt, ld, T, D, Tp, dst);
  }
};

const char* base_of(const Tensor& t4, int64_t b, int64_t h) {
  const Shape& st = t4.strides();
  return static_cast<const char*>(t4.raw_data()) +
         (b * st[0] + h * st[1]) * static_cast<int64_t>(t4.element_size());
}

char* out_ptr(const Tensor& t4, int64_t b, int64_t h) {
  return const_cast<char*>(base_of(t4, b, h));
}

// An fp32 row of D values into a row of dtype dt (bf16 inline on AVX512-BF16, others by
// `narrow`, the fp32 -> dt row kernel).
template <class K>
void store_out(const float* src, int64_t D, char* dst, DType dt, const RowConverter& narrow) {
#if MT_ISA == 3
  if constexpr (std::is_same_v<K, Bf16Kind>)  // the bf16 kernels imply the ISA
    if (dt == DType::bf16) return to_bf16_row(src, D, reinterpret_cast<uint16_t*>(dst), D);
#endif
  narrow(src, dst, D);
}

struct Sizes {
  int64_t Tq, Tk, D, Tqp, Tkp;
  bool causal;
  float scale;
};

Sizes sizes(const Tensor& q4, const Tensor& k4, bool causal, float scale) {
  const int64_t Tq = q4.size(2), Tk = k4.size(2), D = q4.size(3);
  // Keys padded to whole tiles, and to whole row blocks too: backward reads P and dS by key
  // block (kMR columns at a time), which must stay inside a row.
  return {Tq, Tk, D, round_up(Tq, kMR), round_up(round_up(Tk, kMR), kNR), causal, scale};
}

// The column step of a score product: AVX2's tiles go 16 columns at a time, so a causal block's
// keys round up to 16 there (less of the diagonal's last tile computed), 32 on AVX-512.
constexpr int64_t kColStep = MT_ISA >= 2 ? kNR : 16;

// Keys row block i0 sees: [0, keys) (padded to a tile: the kernel's columns).
int64_t block_keys(const Sizes& z, int64_t i0) {
  return z.causal ? std::min(z.Tk, i0 + kMR) : z.Tk;
}

// The drivers carry the level's target too: their row loops (scale, softmax sums, dS) and the
// inlined row helpers use its vector width.
template <class K>
MT_TARGET void forward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& o4,
                       float* lse, bool causal, float scale) {
  using U = typename K::U;
  using P = typename K::P;
  constexpr int64_t kPer = K::kPer;
  constexpr bool kInPlace = K::kInPlace;
  const Sizes z = sizes(q4, k4, causal, scale);
  const RowConverter to_o(DType::f32, o4.dtype());
  const int64_t B = q4.size(0), H = q4.size(1), D = z.D, Du = D / kPer;
  const int64_t o_rs = o4.strides()[2] * static_cast<int64_t>(o4.element_size());
#pragma omp parallel
  {
    std::vector<U> qa(z.Tqp * Du), kp(Du * z.Tkp), vq(z.Tkp / kPer * D);
    std::vector<P> p(kMR * z.Tkp);
    std::vector<float> s(kInPlace ? 0 : kMR * z.Tkp), o(kMR * D);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      K::pack_rows(base_of(q4, b, h), q4.dtype(), q4.strides()[2], z.Tq, D, z.Tqp, qa.data());
      K::pack_by_col(base_of(k4, b, h), k4.dtype(), k4.strides()[2], z.Tk, D, z.Tkp, kp.data());
      K::pack_by_row(base_of(v4, b, h), v4.dtype(), v4.strides()[2], z.Tk, D, z.Tkp, vq.data());
      float* lh = lse + bh * z.Tq;
      char* ob = out_ptr(o4, b, h);
      const int64_t o_bytes = D * static_cast<int64_t>(o4.element_size());
      for (int64_t i0 = 0; i0 < z.Tq; i0 += kMR) {
        prefetch_out(ob, o_rs, i0 + kMR, kMR, z.Tq, o_bytes);
        const int64_t nkp = round_up(block_keys(z, i0), kColStep);
        // fp32 units: the scores become P where they are written.
        float* sc = kInPlace ? reinterpret_cast<float*>(p.data()) : s.data();
        K::kernel(qa.data() + i0 * Du, Du, kp.data(), z.Tkp, Du, nkp, sc, z.Tkp);
        for (int64_t r = 0; r < kMR; ++r) {
          const int64_t i = i0 + r;
          P* pr = p.data() + r * z.Tkp;
          if (i >= z.Tq) {
            std::memset(pr, 0, nkp * sizeof(P));
            continue;
          }
          float* row = sc + r * z.Tkp;
          const int64_t jn = z.causal ? i + 1 : z.Tk;
          for (int64_t j = 0; j < jn; ++j) row[j] *= z.scale;
          lh[i] = softmax_row_lse(row, jn);
          if constexpr (kInPlace)
            std::memset(row + jn, 0, (nkp - jn) * sizeof(float));
          else
            K::store_p(row, jn, pr, nkp);
        }
        // O = P·V over the block's keys.
        K::kernel(reinterpret_cast<const U*>(p.data()), z.Tkp / kPer, vq.data(), D, nkp / kPer, D,
                  o.data(), D);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r)
          store_out<K>(o.data() + r * D, D, ob + (i0 + r) * o_rs, o4.dtype(), to_o);
      }
    }
  }
}

template <class K>
MT_TARGET void backward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                        const float* lse, bool causal, float scale, const Tensor& dq4,
                        const Tensor& dk4, const Tensor& dv4) {
  using U = typename K::U;
  using P = typename K::P;
  constexpr int64_t kPer = K::kPer;
  // In place: the row layout the products over t want is the plain one already packed for Q
  // and dO.
  constexpr bool kInPlace = K::kInPlace;
  const int64_t B = q4.size(0), H = q4.size(1);
  const Sizes z = sizes(q4, k4, causal, scale);
  const RowConverter to_dq(DType::f32, dq4.dtype()), to_dk(DType::f32, dk4.dtype()),
      to_dv(DType::f32, dv4.dtype());
  const int64_t D = z.D, Du = D / kPer, Tqu = z.Tqp / kPer;
  auto row_bytes = [](const Tensor& t) {
    return t.strides()[2] * static_cast<int64_t>(t.element_size());
  };
  const int64_t dq_rs = row_bytes(dq4), dk_rs = row_bytes(dk4), dv_rs = row_bytes(dv4);
  const int64_t dq_bytes = D * static_cast<int64_t>(dq4.element_size()),
                dk_bytes = D * static_cast<int64_t>(dk4.element_size()),
                dv_bytes = D * static_cast<int64_t>(dv4.element_size());
#pragma omp parallel
  {
    std::vector<U> qa(z.Tqp * Du), ga(z.Tqp * Du), kp(Du * z.Tkp), vp(Du * z.Tkp),
        kq(z.Tkp / kPer * D), qq(kInPlace ? 0 : Tqu * D), gq(kInPlace ? 0 : Tqu * D);
    std::vector<P> pf(z.Tqp * z.Tkp), dsf(z.Tqp * z.Tkp);
    std::vector<float> s(kInPlace ? 0 : kMR * z.Tkp), dp(kInPlace ? 0 : kMR * z.Tkp), acc(kMR * D);
    const U* qrows = kInPlace ? qa.data() : qq.data();
    const U* grows = kInPlace ? ga.data() : gq.data();
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const char *q = base_of(q4, b, h), *k = base_of(k4, b, h), *v = base_of(v4, b, h),
                 *g = base_of(g4, b, h);
      const int64_t qs = q4.strides()[2], ks = k4.strides()[2], vs = v4.strides()[2],
                    gs = g4.strides()[2];
      K::pack_rows(q, q4.dtype(), qs, z.Tq, D, z.Tqp, qa.data());
      K::pack_rows(g, g4.dtype(), gs, z.Tq, D, z.Tqp, ga.data());
      K::pack_by_col(v, v4.dtype(), vs, z.Tk, D, z.Tkp, vp.data());
      K::pack_by_row(k, k4.dtype(), ks, z.Tk, D, z.Tkp, kq.data());
      if constexpr (kInPlace)  // fp32 units: K's rows were just widened, transpose those
        K::pack_by_col(reinterpret_cast<const char*>(kq.data()), DType::f32, D, z.Tk, D, z.Tkp,
                       kp.data());
      else
        K::pack_by_col(k, k4.dtype(), ks, z.Tk, D, z.Tkp, kp.data());
      if constexpr (!kInPlace) {
        K::pack_by_row(q, q4.dtype(), qs, z.Tq, D, z.Tqp, qq.data());
        K::pack_by_row(g, g4.dtype(), gs, z.Tq, D, z.Tqp, gq.data());
      }
      // Rows past Tq stay zero (the dK, dV products read them); each row below is written up to
      // its block's last tile (zeros past its keys: the products read whole tiles, and no
      // product reads a row past the tiles of its block).
      std::memset(pf.data() + z.Tq * z.Tkp, 0, (z.Tqp - z.Tq) * z.Tkp * sizeof(P));
      std::memset(dsf.data() + z.Tq * z.Tkp, 0, (z.Tqp - z.Tq) * z.Tkp * sizeof(P));
      const float* lh = lse + bh * z.Tq;
      char* dqb = out_ptr(dq4, b, h);
      // By query block: P and dS (recomputed from lse), then dQ = dS·K.
      for (int64_t i0 = 0; i0 < z.Tq; i0 += kMR) {
        prefetch_out(dqb, dq_rs, i0 + kMR, kMR, z.Tq, dq_bytes);
        const int64_t nkp = round_up(block_keys(z, i0), kColStep);
        // (Rows past Tq come out zero: their Q and dO rows are.)
        float* sc = kInPlace ? reinterpret_cast<float*>(pf.data() + i0 * z.Tkp) : s.data();
        float* dc = kInPlace ? reinterpret_cast<float*>(dsf.data() + i0 * z.Tkp) : dp.data();
        K::kernel(qa.data() + i0 * Du, Du, kp.data(), z.Tkp, Du, nkp, sc, z.Tkp);
        K::kernel(ga.data() + i0 * Du, Du, vp.data(), z.Tkp, Du, nkp, dc, z.Tkp);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r) {
          const int64_t i = i0 + r;
          float* pr = sc + r * z.Tkp;
          float* dr = dc + r * z.Tkp;
          const int64_t jn = z.causal ? i + 1 : z.Tk;
          for (int64_t j = 0; j < jn; ++j) pr[j] *= z.scale;
          exp_shift(pr, jn, lh[i]);
          // dS = P ∘ (dP − Σₖ Pₖ dPₖ) · scale.
          const float di = dot_lanes(pr, dr, jn);
          for (int64_t j = 0; j < jn; ++j) dr[j] = pr[j] * (dr[j] - di) * z.scale;
          if constexpr (kInPlace) {
            std::memset(pr + jn, 0, (nkp - jn) * sizeof(float));
            std::memset(dr + jn, 0, (nkp - jn) * sizeof(float));
          } else {
            K::store_p(pr, jn, pf.data() + i * z.Tkp, z.Tkp);
            K::store_p(dr, jn, dsf.data() + i * z.Tkp, z.Tkp);
          }
        }
        K::kernel(reinterpret_cast<const U*>(dsf.data() + i0 * z.Tkp), z.Tkp / kPer, kq.data(), D,
                  nkp / kPer, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && i0 + r < z.Tq; ++r)
          store_out<K>(acc.data() + r * D, D, dqb + (i0 + r) * dq_rs, dq4.dtype(), to_dq);
      }
      // By key block: dV = Pᵀ·dO and dK = dSᵀ·Q over the query rows that see the block (causal:
      // rows from the block's first key on; P and dS are zero above the diagonal), reading P
      // and dS transposed.
      char* dkb = out_ptr(dk4, b, h);
      char* dvb = out_ptr(dv4, b, h);
      for (int64_t j0 = 0; j0 < z.Tk; j0 += kMR) {
        prefetch_out(dvb, dv_rs, j0 + kMR, kMR, z.Tk, dv_bytes);
        prefetch_out(dkb, dk_rs, j0 + kMR, kMR, z.Tk, dk_bytes);
        const int64_t k0 = z.causal ? std::min(j0, z.Tqp) / kPer : 0;  // first query unit
        const P* pj = pf.data() + kPer * k0 * z.Tkp + j0;
        const P* dsj = dsf.data() + kPer * k0 * z.Tkp + j0;
        K::kernel_ta(pj, z.Tkp, grows + k0 * D, D, Tqu - k0, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && j0 + r < z.Tk; ++r)
          store_out<K>(acc.data() + r * D, D, dvb + (j0 + r) * dv_rs, dv4.dtype(), to_dv);
        K::kernel_ta(dsj, z.Tkp, qrows + k0 * D, D, Tqu - k0, D, acc.data(), D);
        for (int64_t r = 0; r < kMR && j0 + r < z.Tk; ++r)
          store_out<K>(acc.data() + r * D, D, dkb + (j0 + r) * dk_rs, dk4.dtype(), to_dk);
      }
    }
  }
}

// The build's entry points: bf16 pairs where the level has them and the operands are bf16, fp32
// tiles otherwise.
void forward_entry(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& o4,
                   float* lse, bool causal, float scale) {
#if MT_ISA == 3
  if (q4.dtype() == DType::bf16) return forward<Bf16Kind>(q4, k4, v4, o4, lse, causal, scale);
#endif
  forward<F32Kind>(q4, k4, v4, o4, lse, causal, scale);
}

void backward_entry(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                    const float* lse, bool causal, float scale, const Tensor& dq4,
                    const Tensor& dk4, const Tensor& dv4) {
#if MT_ISA == 3
  if (q4.dtype() == DType::bf16 && g4.dtype() == DType::bf16)
    return backward<Bf16Kind>(q4, k4, v4, g4, lse, causal, scale, dq4, dk4, dv4);
#endif
  backward<F32Kind>(q4, k4, v4, g4, lse, causal, scale, dq4, dk4, dv4);
}

}  // namespace

template <>
const FusedAttentionKernels& attention_fused_kernels<kIsa>() {
  static constexpr FusedAttentionKernels k{forward_entry, backward_entry};
  return k;
}

}  // namespace mixtrain::cpu
