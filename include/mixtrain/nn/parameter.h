// A trainable parameter: the fp32 master (owned by the optimizer's world) and the
// compute-dtype copy that forward and backward read. The copy is refreshed by the optimizer
// step in the same pass that updates the master, so weights are cast once per step, never
// once per use. When compute dtype == master dtype the two share storage.
#pragma once

#include <string>

#include "mixtrain/autograd.h"

namespace mixtrain::nn {

struct Parameter {
  std::string name;
  /// param dtype (fp32 by default): what the optimizer updates. Undefined when released:
  /// under ZeRO-1 with a 16-bit compute dtype each rank keeps only its shard of the masters.
  Tensor master;
  Variable weight;  ///< compute dtype: a leaf that requires grad; grad accumulates in grad_dtype
  /// fp32 by default: sums over micro-batches and the optimizer see unrounded gradients. The
  /// compute dtype saves 2 bytes per parameter (its measured cost is in the README).
  DType grad_dtype = DType::f32;

  Parameter() = default;
  /// Takes `init` (any float dtype) as the master in `master_dtype` and makes the working copy.
  Parameter(std::string name, const Tensor& init, DType compute_dtype = DType::f32,
            DType master_dtype = DType::f32);

  DType compute_dtype() const { return weight.dtype(); }
  /// Re-makes the working copy in `dt` from the master (shares storage when dt == master).
  void set_compute_dtype(DType dt);
  /// The dtype the gradient accumulates in (drops any accumulated gradient).
  void set_grad_dtype(DType dt);
  /// Moves the master, the working copy and any accumulated gradient to `device` (values
  /// unchanged: the copy moves the bytes). A released master stays released.
  void to(Device device);
  Device device() const { return master.defined() ? master.device() : weight.data().device(); }
  /// Copies master -> working copy (after loading a checkpoint, say); nothing to copy when
  /// the master was released.
  void refresh();
  /// True when the working copy is the master itself (no separate copy in memory).
  bool shares_master() const { return weight.data().storage() == master.storage(); }
  /// The accumulated gradient (fp32 unless set otherwise); undefined before any backward.
  const Tensor& grad() const { return weight.grad(); }
  void zero_grad() { weight.zero_grad(); }
  int64_t numel() const { return master.defined() ? master.numel() : weight.numel(); }
};

}  // namespace mixtrain::nn
