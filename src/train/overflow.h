// fp16 forward-overflow diagnosis: when a step's loss is non-finite under fp16 compute, find
// the op on the tape whose fp16 output overflowed although its inputs were finite. The loss
// scale cannot fix such a step (it scales only the backward pass), so the trainer stops with
// this diagnosis instead of skipping steps until the scale collapses.
#pragma once

#include <map>
#include <string>

#include "mixtrain/autograd.h"

namespace mixtrain::train {

/// Walks the tape behind `loss` (call before backward). Returns "" when no fp16 op output
/// overflowed; otherwise a description naming the op, the parameters it reads (dotted names
/// from `param_names`, keyed by the working copy's VariableImpl), the output shape, how many
/// values overflowed, and the largest finite magnitudes of its output and inputs.
std::string find_fp16_forward_overflow(
    const Variable& loss, const std::map<const VariableImpl*, std::string>& param_names);

}  // namespace mixtrain::train
