// Which fused attention build takes a problem, and the calls into it.
#include "ops/nn_attention_fused.h"

#include <string>

#include "mixtrain/cpu.h"

namespace mixtrain::nn_detail {

FusedAttention attention_fused_kind(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk, int64_t D) {
  static const std::string level = simd_level();
  // A head's P and dS live whole in each thread's buffers (dV and dK read them by key block): up to
  // 2^20 scores each (4 MiB in fp32, a little more with the tiles' padding); longer sequences
  // take the GEMM path, whose scores go by chunks.
  if (D % kAttnCols != 0 || D > 1024 || Tq <= 0 || Tk <= 0 || Tq > (1 << 20) || Tk > (1 << 20) ||
      Tq * Tk > (int64_t{1} << 20))
    return FusedAttention::none;
  auto is_float = [](DType d) { return d == DType::f32 || d == DType::bf16 || d == DType::f16; };
  if (!is_float(qkv_dt) || !is_float(g_dt)) return FusedAttention::none;
  if (level == "avx512bf16" && qkv_dt == DType::bf16 && g_dt == DType::bf16)
    return FusedAttention::bf16;
  if (level.rfind("avx512", 0) == 0) return FusedAttention::f32;
  if (level == "avx2") return FusedAttention::f32_avx2;
  return FusedAttention::none;
}

void attention_forward_fused(FusedAttention kind, const Tensor& q4, const Tensor& k4,
                             const Tensor& v4, const Tensor& o4, float* lse, bool causal,
                             float scale) {
  if (kind == FusedAttention::f32_avx2)
    return attention_forward_avx2(kind, q4, k4, v4, o4, lse, causal, scale);
  attention_forward_avx512(kind, q4, k4, v4, o4, lse, causal, scale);
}

void attention_backward_fused(FusedAttention kind, const Tensor& q4, const Tensor& k4,
                              const Tensor& v4, const Tensor& g4, const float* lse, bool causal,
                              float scale, const Tensor& dq4, const Tensor& dk4,
                              const Tensor& dv4) {
  if (kind == FusedAttention::f32_avx2)
    return attention_backward_avx2(kind, q4, k4, v4, g4, lse, causal, scale, dq4, dk4, dv4);
  attention_backward_avx512(kind, q4, k4, v4, g4, lse, causal, scale, dq4, dk4, dv4);
}

}  // namespace mixtrain::nn_detail
