// The CUDA backend's neural-network and reduction kernels (nn_kernels.cu, embedding_backward.cu,
// attention.cu) behind plain launchers: dropout, sum, softmax, the index scan, the fused
// cross-entropy, layer norm, embedding and flash-style attention. Host-side header, no CUDA
// types: pointers are device memory, dtypes are mixtrain::DType's values, and every launcher
// returns the launch's cudaError_t as an int (0: success; -1: a case it does not handle, which
// the caller reports). Every kernel runs on cuda::stream(). Scratch buffers are the caller's
// (nn_ops.cpp allocates them as tensors through the library's allocator), sized by the
// *_scratch functions. The semantics are Backend's (backend/backend.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/kernels.h"

namespace mixtrain::cuda {

/// y = x · (u_i >= p ? scale : 0), u_i = uniform24(random_bits(seed, base + i)), i the row-major
/// index (mixtrain/detail/random_bits.h): the CPU's mask, bit for bit.
int launch_dropout(const View& x, const View& y, uint64_t seed, uint64_t base, float p,
                   float scale);

/// out[o, i] (f32) = scale · Σ_r x[o, r, i] over a contiguous x viewed as [O, R, I], in fp32
/// over fixed chunks of rows, the chunk partials added in chunk order in double: the order
/// depends on (O, R, I) only. `scratch` holds sum_scratch_floats(O, R, I) floats.
int64_t sum_scratch_floats(int64_t O, int64_t R, int64_t I);
int launch_sum(const void* x, int dt, int64_t O, int64_t R, int64_t I, float scale, float* out,
               float* scratch);

/// y = softmax (or log_softmax) of a contiguous x viewed as [outer, n, inner] along n; y and x
/// of dtype dt. The backward: dx from y and g (all dtype dt, contiguous).
int launch_softmax(const void* x, int dt, int64_t outer, int64_t n, int64_t inner, bool log,
                   void* y);
int launch_softmax_backward(const void* y, const void* g, int dt, int64_t outer, int64_t n,
                            int64_t inner, bool log, void* dx);

/// The index scan of an i32/i64 view into result[3] (device int64): the first position whose
/// index is outside [0, n) and not `ignore` (UINT64_MAX as a bit pattern when none), how many
/// elements before it (all when none) are not `ignore`, and the bad value.
int launch_scan_indices(const View& ids, int64_t n, bool has_ignore, int64_t ignore,
                        int64_t* result);

/// Fused cross-entropy over contiguous logits [N, V] (dtype xdt) and targets [N] (i32/i64):
/// lse [N] each counted row's logsumexp (0 for ignored rows), loss (0-d, dtype loss_dt) the mean
/// of the row losses, summed in double by one block (`row_loss`: N doubles of scratch).
int launch_cross_entropy(const void* x, int xdt, const void* targets, int tdt, int64_t N, int64_t V,
                         int64_t ignore, int64_t count, float* lse, double* row_loss, void* loss,
                         int loss_dt);
/// dx [N, V] (dtype dxdt) = g / count · (softmax - onehot) for counted rows, 0 for ignored ones;
/// g a 0-d device tensor of dtype gdt, read on the device.
int launch_cross_entropy_backward(const void* x, int xdt, const void* targets, int tdt, int64_t N,
                                  int64_t V, int64_t ignore, int64_t count, const float* lse,
                                  const void* g, int gdt, void* dx, int dxdt);

/// Layer norm over rows of C of a contiguous x [N, C]: y (dtype ydt), mean and rstd [N].
int launch_layer_norm(const void* x, int xdt, const float* w, const float* b, int64_t N, int64_t C,
                      float eps, void* y, int ydt, float* mean, float* rstd);
/// dx (dtype dxdt), and dw, db [C] summed over the CPU's fixed row blocks (partials in
/// `scratch`, layer_norm_backward_scratch_floats(N, C) floats, then added in block order).
int64_t layer_norm_backward_scratch_floats(int64_t N, int64_t C);
int launch_layer_norm_backward(const void* x, int xdt, const float* w, const void* g, int gdt,
                               const float* mean, const float* rstd, int64_t N, int64_t C, void* dx,
                               int dxdt, float* dw, float* db, float* scratch);

/// out [N, C] (dtype odt) = table [V, C] (dtype tdt) rows at ids [N] (i32/i64, in range).
int launch_embedding(const void* ids, int idt, int64_t N, const void* table, int tdt, int64_t C,
                     void* out, int odt);
/// dtable [V, C] f32 = Σ of g [N, C] rows into rows ids, each row's terms added in id order
/// (a stable sort of the positions by id, then one thread per table element): every element
/// of dtable is written, no atomics. `scratch` of embedding_backward_scratch_bytes(N, V) bytes;
/// -1 when N or V does not fit 32 bits.
size_t embedding_backward_scratch_bytes(int64_t N, int64_t V);
int launch_embedding_backward(const void* ids, int idt, int64_t N, const void* g, int gdt,
                              int64_t V, int64_t C, float* dtable, void* scratch,
                              size_t scratch_bytes);

/// One operand of attention: a [B, H, T, D] view with element strides sb, sh, st (D
/// unit-stride).
struct AttnOperand {
  void* data = nullptr;
  int dtype = 0;
  int64_t sb = 0, sh = 0, st = 0;
};
struct AttnDims {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0, D = 0;
  bool causal = false;
  float scale = 1.0f;
};
/// The largest head size the attention kernels take.
constexpr int64_t kAttnMaxHeadDim = 128;
/// o = softmax(scale·q·kᵀ, causal mask)·v and lse [B·H, Tq] (contiguous f32); -1 when D >
/// kAttnMaxHeadDim.
int launch_attention(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k,
                     const AttnOperand& v, const AttnOperand& o, float* lse);
/// dq, dk, dv from q, k, v, the output gradient g and lse; `di` is scratch of B·H·Tq floats
/// (each query row's Σ_j P·dP). -1 when D > kAttnMaxHeadDim.
int launch_attention_backward(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k,
                              const AttnOperand& v, const AttnOperand& g, const float* lse,
                              const AttnOperand& dq, const AttnOperand& dk, const AttnOperand& dv,
                              float* di);

}  // namespace mixtrain::cuda
