// FP8 training (`--precision fp8`): the inputs of every Linear's GEMMs are quantized to fp8 with
// scales, E4M3 for activations and weights and E5M2 for output gradients (Transformer Engine's
// HYBRID format), and the products accumulate in fp32; everything else runs as bf16 mixed
// precision. Three recipes set the scales, after Transformer Engine's:
//
//   delayed  per tensor, from a history of amaxes of earlier steps:
//            scale = (fmt_max / amax_h) / 2^margin, amax_h the history's max (or latest);
//            while the history is empty (the first step) the tensor's own amax, as `current`
//            (Transformer Engine starts at scale 1, which flushes most gradients to zero)
//   current  per tensor, from this tensor's own amax, now
//   mxfp8    per block of 32 values along the GEMM's reduction dim, an E8M0 power of two
//            rounded up so that no value saturates
//
// On the CPU an fp8 GEMM is emulated exactly: an fp8 value has at most 4 significant bits, so it
// is exact in bf16, a bf16 GEMM with fp32 accumulation forms the products of the fp8 values
// exactly, and the per-tensor scales multiply the fp32 result (what a Hopper FP8 GEMM with
// scale pointers computes, up to summation order). MXFP8's power-of-two block scales are folded
// into the bf16 operands, exactly. So the emulation runs at bf16 GEMM speed; it answers whether
// a model trains in fp8, not how fast.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mixtrain/dtype.h"
#include "mixtrain/tensor.h"

namespace mixtrain::amp {

enum class Fp8Recipe : uint8_t { delayed, current, mxfp8 };
/// How delayed scaling reduces its amax history: the window's max, or the latest step's.
enum class AmaxReduce : uint8_t { max, most_recent };

const char* fp8_recipe_name(Fp8Recipe r);           ///< "delayed", "current", "mxfp8"
Fp8Recipe parse_fp8_recipe(std::string_view name);  ///< throws ConfigError naming the choices
const char* amax_reduce_name(AmaxReduce r);         ///< "max", "most_recent"
AmaxReduce parse_amax_reduce(std::string_view name);

struct Fp8Options {
  Fp8Recipe recipe = Fp8Recipe::delayed;
  int64_t amax_history = 1024;  ///< delayed: steps the history holds (>= 1)
  AmaxReduce reduce = AmaxReduce::max;
  int margin = 0;  ///< delayed and current: scales are divided by 2^margin (headroom)
  /// "delayed (amax history 1024, max, margin 0)", "mxfp8 (E8M0 scales per 32 values)".
  std::string str() const;
};

/// The inputs of a Linear's GEMMs, each with its own scale: activations and weights in E4M3,
/// output gradients in E5M2.
enum class Fp8Role : uint8_t { input, weight, grad };
const char* fp8_role_name(Fp8Role r);  ///< "input", "weight", "grad"
DType fp8_format(Fp8Role r);
/// The largest finite value of e4m3 (448) or e5m2 (57344).
float fp8_max(DType fmt);

/// The per-tensor scale for an amax: (fmt_max / amax) / 2^margin (FLT_MAX where that overflows,
/// for a tiny amax). An amax of 0 gives 1 (nothing to scale); an Inf or NaN amax keeps
/// `previous` (the caller reports it).
float fp8_scale(float amax, float fmt_max, int margin, float previous);

/// The last `length` amaxes of one tensor, oldest first once full (a ring).
class AmaxHistory {
 public:
  explicit AmaxHistory(int64_t length = 1024);
  void push(float amax);
  /// The window's max (NaN when the window holds one), or its latest amax; 0 when empty.
  float reduced(AmaxReduce how) const;
  int64_t length() const { return static_cast<int64_t>(ring_.size()); }
  int64_t filled() const { return filled_; }
  /// The amaxes held, oldest first.
  std::vector<float> values() const;
  /// Replaces the contents with `oldest_first` (at most length() values).
  void assign(const std::vector<float>& oldest_first);

 private:
  std::vector<float> ring_;
  int64_t next_ = 0, filled_ = 0;
};

/// One GEMM input's scaling state. `scale` is what this step's quantization multiplies by;
/// `step_amax` collects the amax of every use this step (micro-batches, a checkpointed block's
/// recompute), and end_step() folds it into the history and sets the next scale.
struct Fp8TensorMeta {
  explicit Fp8TensorMeta(int64_t history = 1024) : history(history) {}
  float scale = 1.0f;
  AmaxHistory history;
  float step_amax = 0.0f;
  bool seen = false;       ///< used this step
  int64_t nonfinite = 0;   ///< steps whose amax was Inf or NaN (the scale was kept)
  float last_amax = 0.0f;  ///< the latest step's amax, for logs
  /// Records one use's amax (NaN wins over every number, as in the history).
  void observe(float amax);
  /// Delayed scaling, at the end of a step in which it was used: the step's amax into the
  /// history, the next scale from the history. Returns false when that amax was not finite.
  bool end_step(const Fp8Options& o, DType fmt);
};

/// A Linear's scaling state: its input, its weight and the gradient of its output.
struct Fp8LinearState {
  explicit Fp8LinearState(int64_t history = 1024)
      : input(history), weight(history), grad(history) {}
  Fp8TensorMeta input, weight, grad;
  Fp8TensorMeta& operator[](Fp8Role r) {
    return r == Fp8Role::input ? input : r == Fp8Role::weight ? weight : grad;
  }
};

/// Makes `state` the one the linear ops of this thread use (nests); `record` (a module in
/// training mode) says whether their amaxes count towards the step.
class Fp8StateScope {
 public:
  Fp8StateScope(Fp8LinearState* state, bool record);
  ~Fp8StateScope();
  Fp8StateScope(const Fp8StateScope&) = delete;
  Fp8StateScope& operator=(const Fp8StateScope&) = delete;

 private:
  Fp8LinearState* prev_;
  bool prev_record_;
};
/// The current state (nullptr outside a Linear module: a bare linear() then uses current
/// scaling) and whether uses are recorded.
Fp8LinearState* current_fp8_state();
bool fp8_recording();

/// Sees every GEMM input of the linears that run with a scaling state while it is set (the
/// doctor's fp32 steps): the linear's state (its identity), the role, and the tensor as the
/// GEMM reads it (x flattened to [N, in], w [out, in], the output gradient [N, out]).
using Fp8Probe = std::function<void(const Fp8LinearState*, Fp8Role, const Tensor&)>;
class Fp8ProbeScope {
 public:
  explicit Fp8ProbeScope(Fp8Probe probe);
  ~Fp8ProbeScope();
  Fp8ProbeScope(const Fp8ProbeScope&) = delete;
  Fp8ProbeScope& operator=(const Fp8ProbeScope&) = delete;

 private:
  Fp8Probe probe_;
  const Fp8Probe* prev_;
};
/// The probe in effect on this thread, or nullptr.
const Fp8Probe* fp8_probe();

/// A model's scaling states by module name (nn::fp8_states).
using Fp8States = std::vector<std::pair<std::string, Fp8LinearState*>>;

/// What one fp8_end_step() did.
struct Fp8StepReport {
  int64_t tensors = 0;          ///< GEMM inputs used this step
  int64_t nonfinite = 0;        ///< of them, with an Inf or NaN amax (delayed: scale kept)
  std::string first_nonfinite;  ///< "blocks.0.fc.grad"
};

/// The end of a training step: under delayed scaling every GEMM input used this step gets its
/// amax, the max over the data-parallel ranks (one collective for the whole model), into its
/// history, and the scale of the next step; under the other recipes the step's amaxes are kept
/// for logs (last_amax). Every rank must call it.
Fp8StepReport fp8_end_step(const Fp8States& states, const Fp8Options& o);

/// The states as checkpoint tensors: "fp8.<module>.<role>" f32 [2 + n] = the scale, the count
/// of non-finite steps, then the n amaxes of the history, oldest first.
std::vector<std::pair<std::string, Tensor>> fp8_state_tensors(const Fp8States& states);
/// Restores what fp8_state_tensors saved (tensors with other names are ignored); throws
/// IOError naming a state that has no tensor or one that does not fit its history.
void load_fp8_state(const Fp8States& states,
                    const std::vector<std::pair<std::string, Tensor>>& tensors);

}  // namespace mixtrain::amp
