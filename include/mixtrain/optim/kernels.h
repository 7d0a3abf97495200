// The fused optimizer update kernels: one pass per parameter range reads the gradient
// (f32/bf16/f16), multiplies it by the folded unscale x clip factor, updates the parameter
// and its fp32 moments, and writes the compute-dtype copy of the weight, all in one loop.
#pragma once

#include <cstdint>

#include "mixtrain/detail/update_math.h"
#include "mixtrain/dtype.h"

namespace mixtrain::optim {

/// Where the parameter's value lives (bytes per parameter: see bytes_per_parameter()).
///  fp32             fp32 master + compute-dtype copy (the default; the copy is skipped when it
///                   shares the master's storage).
///  bf16_stochastic  only the bf16 weight; updates rounded stochastically (unbiased).
///  bf16_kahan       bf16 weight + bf16 Kahan compensation buffer.
///  split16          bf16 weight + the 16 low bits of the fp32 master: together exactly the
///                   fp32 master, so results are bit-identical to `fp32` (lossless).
enum class MasterMode : uint8_t { fp32, bf16_stochastic, bf16_kahan, split16 };

/// "fp32", "bf16-sr", "bf16-kahan", "split16" (the CLI's --master names).
const char* master_mode_name(MasterMode m);
/// Accepts the names above (and "bf16_stochastic", "bf16_kahan"); throws ConfigError.
MasterMode parse_master_mode(const char* name);
/// What `--master auto` (the default) picks: split16 when every weight computes in bf16 from an
/// fp32 master (the same fp32 bits, 2 bytes per parameter fewer: no separate bf16 copy, and one
/// optimizer pass that moves 28 bytes per parameter instead of 30), fp32 otherwise.
MasterMode auto_master_mode(DType param, DType compute, bool every_weight_computes_in_compute);

/// torch.optim.Adam / AdamW for one step t (t >= 1, counted over applied steps only).
struct AdamWHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  bool decoupled = true;  ///< AdamW (param *= 1 - lr*wd); false: Adam's L2 (grad += wd*param)
  int64_t step = 1;
};
/// torch.optim.SGD. `first_step` makes the momentum buffer start as the first gradient.
struct SgdHyper {
  float lr = 1e-2f, momentum = 0.0f, dampening = 0.0f, weight_decay = 0.0f;
  bool nesterov = false;
  bool first_step = true;
};
/// torch.optim.RMSprop.
struct RMSPropHyper {
  float lr = 1e-2f, alpha = 0.99f, eps = 1e-8f, weight_decay = 0.0f, momentum = 0.0f;
  bool centered = false;
};

// fp32-master kernels with the precision roles in the signature, on host memory. They run on
// the calling thread (vectorised, the CPU's best level, see simd_level()); Optimizer runs the
// same pass through its tensors' backend, split across threads.
// G, W: float, bf16 or fp16. weight_copy may be nullptr (no separate copy to refresh).

/// AdamW / Adam: master, m, v fp32; grad in G; writes the compute copy in W.
template <class G, class W>
void adamw_update(const AdamWHyper& h, float grad_mult, float* master, float* m, float* v,
                  const G* grad, W* weight_copy, int64_t n);
/// SGD: `momentum_buf` may be nullptr when momentum == 0.
template <class G, class W>
void sgd_update(const SgdHyper& h, float grad_mult, float* master, float* momentum_buf,
                const G* grad, W* weight_copy, int64_t n);
/// RMSProp: `grad_avg` (centered) and `momentum_buf` (momentum > 0) may be nullptr otherwise.
template <class G, class W>
void rmsprop_update(const RMSPropHyper& h, float grad_mult, float* master, float* square_avg,
                    float* grad_avg, float* momentum_buf, const G* grad, W* weight_copy, int64_t n);

namespace detail {

/// One update rule with its hyper-parameters (what the type-erased kernel runs).
struct Rule {
  enum class Kind : uint8_t { sgd, adam, rmsprop } kind = Kind::adam;
  AdamWHyper adam;
  SgdHyper sgd;
  RMSPropHyper rms;
};

/// Type-erased arguments of one fused pass over elements [0, n) of one tensor (pointers into
/// the memory of the tensor's device).
struct UpdateArgs {
  MasterMode mode = MasterMode::fp32;
  float grad_mult = 1.0f;
  float* master = nullptr;          ///< fp32 mode
  void* weight = nullptr;           ///< compute copy (fp32 mode, may be null) or the bf16 weight
  DType weight_dtype = DType::f32;  ///< f32/bf16/f16 in fp32 mode; bf16 otherwise
  uint16_t* aux = nullptr;          ///< split16: low 16 bits; kahan: bf16 compensation bits
  uint64_t seed = 0;                ///< stochastic rounding: element i draws
  uint64_t counter = 0;             ///<   random_bits(seed, counter + i)
  const void* grad = nullptr;
  DType grad_dtype = DType::f32;
  float* s0 = nullptr;  ///< adam m | sgd momentum | rmsprop square_avg
  float* s1 = nullptr;  ///< adam v | rmsprop grad_avg
  float* s2 = nullptr;  ///< rmsprop momentum
  int64_t n = 0;
};

/// The split16 encoding (mixtrain/detail/update_math.h, shared with the device): `hi` is the
/// bf16 weight (fp32 bits rounded half-up in magnitude, so each bf16 value owns exactly 2^16
/// fp32 patterns) and `lo` the low 16 bits of the fp32 bits; split16_decode reassembles them.
using mixtrain::detail::split16_decode;
using mixtrain::detail::split16_encode;

}  // namespace detail
}  // namespace mixtrain::optim
