// The seam between the library and a device. Ops (src/ops) check their arguments, choose dtypes
// by the precision policy, allocate their outputs on their inputs' device and record their
// backward; the tensor core moves and fills bytes; the optimizer, the loss scaler's gradient pass,
// the diagnostics and data parallelism read and write parameters, gradients and state. Every one
// of them reaches memory only through the Backend of the device the tensors live on: a backend is
// this interface implemented in a folder of its own (src/cpu; src/cuda), registered by
// backend_for(). docs/DESIGN.md, "Adding a backend", lists what a new one implements and passes.
//
// Conventions for every kernel below: all tensors are on this backend's device; outputs are
// allocated by the caller with the shape and dtype documented; inputs are f32, bf16 or f16
// unless stated, read as fp32 and computed with fp32 internals; an output is rounded once (RNE)
// into its dtype. Shapes have been checked by the caller: a kernel may assume them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/gemm.h"
#include "mixtrain/optim/kernels.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

/// The raw memory of one device, under the step planner and the buffer cache that every device
/// shares (core/memory.cpp).
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  /// `bytes` (whole 4 KiB pages, at least 64 KiB) of fresh memory; nullptr when out of memory.
  virtual void* map(size_t bytes) = 0;
  virtual void unmap(void* p, size_t bytes) = 0;
  /// A step plan's arena (its buffers are handed out by offset, see poison()); map's by default.
  virtual void* map_arena(size_t bytes) { return map(bytes); }
  virtual void unmap_arena(void* p, size_t bytes) { unmap(p, bytes); }
  /// A buffer under 64 KiB, 64-byte aligned; nullptr when out of memory.
  virtual void* alloc_small(size_t bytes) = 0;
  virtual void free_small(void* p, size_t bytes) = 0;
  /// Gives back the whole pages inside [p, p + bytes) of an arena while keeping the range
  /// mapped (an idle arena's free part); later use finds them zeroed. A device that cannot does
  /// nothing.
  virtual void discard(void* p, size_t bytes) {}
  /// Marks [p, p + bytes) as not to be touched (`off`) or usable again, for a memory checker
  /// (AddressSanitizer on the CPU); by default nothing.
  virtual void poison(void* p, size_t bytes, bool off) {}
  /// Gives back to the system what the device keeps beneath the library's allocator (the CUDA
  /// backend's memory pool keeps every freed block); release_cached_memory() calls it. By
  /// default nothing (the CPU's freed pages go back at once).
  virtual void release_cached() {}
};

/// The element-wise maps: out = f(in0, in1, in2) per element, the inputs broadcast (numpy rules)
/// to out's shape, any strides. `s` is the map's scalar argument. g is an output gradient, x the
/// op's saved input, y its saved output.
enum class MapOp : uint8_t {
  add,         ///< a + b
  sub,         ///< a - b
  mul,         ///< a · b
  div,         ///< a / b
  neg,         ///< -a
  add_scalar,  ///< a + s
  mul_scalar,  ///< a · s
  relu,        ///< a > 0 ? a : 0
  tanh,        ///< tanh(a)
  abs,         ///< |a|
  exp,         ///< exp(a)
  log,         ///< log(a)
  gelu,        ///< x·σ(2u), u = √(2/π)(x + 0.044715x³): torch's tanh approximation
  relu_grad,   ///< (g, y): y > 0 ? g : 0 (a select: g's Inf or NaN where y <= 0 gives 0)
  tanh_grad,   ///< (g, y): g · (1 - y²)
  abs_grad,    ///< (g, x): g · sign(x), 0 at x = 0
  exp_grad,    ///< (g, y): g · y
  log_grad,    ///< (g, x): g · (1 / x)
  gelu_grad,   ///< (g, x): g · gelu'(x)
  div_grad_b,  ///< (g, a, b): -g · a / (b · b), the divisor's gradient
};
/// How many inputs `op` reads.
int map_arity(MapOp op);
const char* map_op_name(MapOp op);

/// The first element of an index tensor outside [0, n) that is not `ignore` (when given), and
/// how many elements are not `ignore` (cross-entropy's row count).
struct IndexScan {
  int64_t bad_pos = -1;  ///< -1: every index is in range
  int64_t bad_value = 0;
  int64_t counted = 0;
};

/// One read of a list of gradients: the sum of squares of their finite values, whether any holds
/// Inf or NaN, and the first (in list order) that does.
struct GradScan {
  double sumsq = 0;
  bool found_inf = false, found_nan = false;
  int64_t first_bad = -1;      ///< index in the list; -1: all finite
  bool first_bad_nan = false;  ///< whether that tensor's first bad value is a NaN
};

/// A gradient's magnitude histogram (amp/diagnostics.h) and its first Inf/NaN.
struct HistogramScan {
  amp::GradHistogram hist;
  int64_t first_bad = -1;  ///< element index; -1: all finite
  bool first_bad_nan = false;
};

/// One tensor of a fused optimizer step: a parameter with its state, all of n elements,
/// contiguous, on the backend's device (the roles are optim::detail::UpdateArgs's).
using UpdateArgs = optim::detail::UpdateArgs;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  /// "cpu", "cuda".
  const char* name() const { return device_name(device()); }
  /// One line on what runs the kernels ("avx512bf16, oneDNN 2.6.3 avx512_core_amx, 2 threads").
  virtual std::string describe() const = 0;
  virtual DeviceMemory& memory() = 0;

  // ---- data movement ---------------------------------------------------------------------------
  /// Every element of dst (any layout, any dtype) set to `value` rounded to dst's dtype.
  virtual void fill(const Tensor& dst, float value) = 0;
  /// dst = src element by element (same shape, any layouts, any dtypes: converted with one
  /// rounding; integers as mixtrain::convert).
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  /// Between this device and host memory: `bytes` bytes of a contiguous tensor's storage.
  virtual void upload(const void* host, void* device_dst, size_t bytes) = 0;
  virtual void download(const void* device_src, void* host, size_t bytes) = 0;

  // ---- element-wise ----------------------------------------------------------------------------
  /// out = op(ins...) (MapOp), ins broadcast to out's shape.
  virtual void map(MapOp op, std::span<const Tensor> ins, float s, const Tensor& out) = 0;
  /// dst += src (same shape; dst contiguous): gradient accumulation, fp32 sum rounded once.
  virtual void add_into(const Tensor& dst, const Tensor& src) = 0;
  /// Inverted dropout: y = x · (u_i >= p ? scale : 0), u_i the top 24 bits of
  /// random_bits(seed, base + i) over 2^24, i the element's row-major index.
  virtual void dropout(const Tensor& x, uint64_t seed, uint64_t base, float p, float scale,
                       const Tensor& y) = 0;

  // ---- reductions ------------------------------------------------------------------------------
  /// out (f32, x's shape with `axes` set to 1) = scale · the sum of x over `axes` (sorted,
  /// unique). Deterministic: the summation order depends on the shape only.
  virtual void sum(const Tensor& x, const std::vector<int64_t>& axes, float scale,
                   const Tensor& out) = 0;

  // ---- GEMM ------------------------------------------------------------------------------------
  /// mixtrain::gemm_ex's contract (gemm.h), arguments already checked.
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    float alpha, float beta, const Tensor* bias, Epilogue epi) = 0;

  // ---- neural-network ops ----------------------------------------------------------------------
  /// y = softmax (or log_softmax) of x along `axis`; x contiguous, y x's shape and dtype.
  virtual void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& y) = 0;
  /// dx from the forward's output y and its gradient g (y's dtype, contiguous).
  virtual void softmax_backward(const Tensor& y, const Tensor& g, int64_t axis, bool log,
                                const Tensor& dx) = 0;
  /// See IndexScan; ids i32 or i64.
  virtual IndexScan scan_indices(const Tensor& ids, int64_t n, std::optional<int64_t> ignore) = 0;
  /// Mean NLL of targets (i32/i64 [N], rows equal to `ignore` skipped; `count` rows counted)
  /// under softmax(logits [N, V]): lse [N] f32 gets each row's logsumexp (0 for ignored rows),
  /// loss (0-d, any float dtype) the mean, row losses summed in double in row order.
  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore,
                             int64_t count, const Tensor& lse, const Tensor& loss) = 0;
  /// dlogits (logits' dtype) = g / count · (softmax - onehot) for counted rows, 0 for ignored
  /// ones; g a 0-d tensor (the loss's gradient).
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                                      int64_t count, const Tensor& lse, const Tensor& g,
                                      const Tensor& dlogits) = 0;
  /// Layer norm over the last dim C of x [N, C] (contiguous): y (x's dtype), and the fp32 row
  /// statistics mean [N] and rstd [N] = 1/sqrt(var + eps); w and b f32 [C].
  virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                          const Tensor& y, const Tensor& mean, const Tensor& rstd) = 0;
  /// dx (any float dtype) and fp32 dw, db [C] from g (contiguous), x, w and the saved statistics;
  /// dw and db are summed over fixed row blocks (the bits do not depend on the thread count).
  virtual void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& g,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                   const Tensor& dw, const Tensor& db) = 0;
  /// out [N, C] = table [V, C] rows at ids [N] (checked in range), converted to out's dtype.
  virtual void embedding(const Tensor& ids, const Tensor& table, const Tensor& out) = 0;
  /// dtable (f32 [V, C], zeroed here) = the scatter-sum of g [N, C] into rows ids, in id order.
  virtual void embedding_backward(const Tensor& ids, const Tensor& g, const Tensor& dtable) = 0;
  /// Attention per (batch, head) over 4-d [B, H, T, D] views (any strides, D unit-stride; q, k
  /// and v of one dtype): o = softmax(scale·q·kᵀ, causal mask)·v, o any float dtype; lse
  /// [B·H, Tq] f32 the rows' logsumexp, which the backward recomputes the scores from.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                         float scale, const Tensor& o, const Tensor& lse) = 0;
  /// dq, dk, dv (views as above, any float dtypes) from the output gradient g (a view as above).
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& g, const Tensor& lse, bool causal, float scale,
                                  const Tensor& dq, const Tensor& dk, const Tensor& dv) = 0;

  // ---- optimizer and gradient passes -----------------------------------------------------------
  /// One fused optimizer step over every tensor of `tensors` (optim/kernels.h: the gradient
  /// times grad_mult, the rule, fp32 state, the master and the compute copy in one pass).
  virtual void optimizer_update(const optim::detail::Rule& rule,
                                std::span<const UpdateArgs> tensors) = 0;
  /// One read of the gradients (contiguous f32/bf16/f16), GradScan; the sum of squares is
  /// accumulated in an order that depends on the sizes only (not the thread count).
  virtual GradScan grad_scan(std::span<const Tensor> grads) = 0;
  /// Per gradient (any layout), the histogram of its values · inv_carried, with the fp16
  /// fractions evaluated at values · to_fp16.
  virtual std::vector<HistogramScan> grad_histograms(std::span<const Tensor> grads,
                                                     float inv_carried, float to_fp16) = 0;
  /// split16: hi (the bf16 weight) and lo (bf16-typed, the low 16 bits) from an fp32 master;
  /// split16_join reassembles the fp32 values (optim/kernels.h, detail::split16_*).
  virtual void split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo) = 0;
  virtual void split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out) = 0;

  // ---- fp8 quantization (amp/fp8.h) ------------------------------------------------------------
  /// max |x| over a contiguous float tensor: NaN when x holds a NaN, else Inf when it holds an
  /// Inf; 0 when x is empty.
  virtual float amax(const Tensor& x) = 0;
  /// q = x · scale rounded onto fmt's grid (e4m3 or e5m2, saturating: detail::fp8_round), for
  /// contiguous x and q of one shape; q bf16 (which holds every fp8 value exactly) or fmt.
  virtual void fp8_quantize(const Tensor& x, float scale, DType fmt, const Tensor& q) = 0;
  /// MXFP8 over the rows of a contiguous x [R, K]: each block of 32 along K (the last one
  /// shorter when 32 does not divide K) gets the E8M0 code detail::e8m0_ceil_code(its amax,
  /// fmt's max) in scales (u8 [R, ceil(K / 32)]), and q (bf16, x's shape) each value rounded
  /// onto fmt's grid at its block's scale and multiplied back by it: exact in bf16, the operand
  /// of an emulated block-scaled GEMM. Returns max |x| (as amax()).
  virtual float mx_quantize(const Tensor& x, DType fmt, const Tensor& q, const Tensor& scales) = 0;

  // ---- native fp8 GEMM (amp/fp8.h) -------------------------------------------------------------
  /// Whether fp8_gemm multiplies natively on this backend's current device. By default false:
  /// the backend has no native fp8 GEMM and the caller emulates it (the fp8 codes held in bf16
  /// through gemm()). The CUDA backend: true on a device of compute capability 8.9 or above
  /// (cuBLASLt's FP8 GEMMs).
  virtual bool has_fp8_gemm() const { return false; }
  /// C = scale_a_inv · scale_b_inv · op(A) · op(B) (+ bias), fp32 accumulation, rounded once
  /// into C; op(A) [M, K], op(B) [K, N]. A and B are 2-d contiguous tensors of fp8 codes
  /// (DType::e4m3 or e5m2, not both e5m2), C a contiguous [M, N] bf16 or f32, bias (or null) a
  /// bf16 [N] with a bf16 C only (cuBLASLt's FP8 kernels have their own bias dtype rules for an
  /// fp32 output, which the caller does not need), added to the fp32 sums before the rounding. The
  /// factor is applied as the fp32 product scale_a_inv · scale_b_inv (the alpha the emulation
  /// passes to gemm()). Where has_fp8_gemm() is true, every product whose M, N and K are multiples
  /// of 16 runs (FP8 tensor-core GEMMs need 16-byte leading dims); otherwise, and always where
  /// has_fp8_gemm() is false (the default), it returns false and writes nothing, and the caller
  /// emulates the product.
  virtual bool fp8_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                        const Tensor& c, float scale_a_inv, float scale_b_inv, const Tensor* bias) {
    return false;
  }
};

/// The backend of a device; throws BackendError naming the device and the CMake option that
/// builds its backend when this build lacks it, or saying why it cannot run on this machine.
Backend& backend_for(Device d);
/// Whether backend_for(d) would succeed; `why` (may be null) gets the reason when not.
bool backend_available(Device d, std::string* why = nullptr);

/// The device every tensor of an op must share; throws BackendError naming the op and the
/// devices when they differ (undefined tensors are skipped).
Device common_device(const char* op, std::initializer_list<const Tensor*> tensors);

}  // namespace mixtrain
