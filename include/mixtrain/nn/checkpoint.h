// Activation checkpointing (recompute in backward): a checkpointed piece of the forward keeps
// only its input on the tape; the backward pass re-runs it, with the tape on, under the same
// precision policy and from the same RNG state (so dropout draws the same mask), then walks
// its graph. Same kernels in the same order, so gradients are bit-identical to the run
// without checkpointing; the memory of its intermediate activations is traded for one more
// forward of it.
//
//   block.set_checkpoint(true);                       // a module whose forward opts in, or:
//   Variable y = nn::checkpoint([&](const Variable& v, Rng& r) { return f(v, r); }, x, rng,
//                               params);              // any function of x and the params
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "mixtrain/autograd.h"
#include "mixtrain/nn/module.h"
#include "mixtrain/random.h"

namespace mixtrain::nn {

/// A checkpointable piece of forward: y = fn(x, rng). It may draw from rng (dropout) and read
/// any parameter, but must not depend on other tape variables than x and `params` (their
/// gradients would not flow).
using CheckpointFn = std::function<Variable(const Variable& x, Rng& rng)>;

/// Runs fn(x, rng) now without recording its ops (rng advances as it would without
/// checkpointing) and returns its output as one tape node over x and `params`. The backward
/// pass re-runs fn on x's data from a copy of rng's state at entry, under the policy current
/// at entry, back-propagates through that graph (parameter gradients accumulate into the
/// parameters as usual) and hands x its gradient, in x's dtype. Each parameter must belong to
/// one checkpointed call per backward (its gradient is complete when that call's backward
/// ends). With the tape off (inference) this is fn(x, rng) itself.
Variable checkpoint(CheckpointFn fn, const Variable& x, Rng& rng, std::vector<Variable> params);

/// A function without randomness.
Variable checkpoint(const std::function<Variable(const Variable&)>& fn, const Variable& x,
                    std::vector<Variable> params);

/// Module form, for a module's forward: checkpoint(fn, x, rng, m.parameter_variables()) when
/// m.checkpointed(), otherwise fn(x, rng) itself.
Variable checkpoint(const Module& m, const Variable& x, Rng& rng, const CheckpointFn& fn);

/// A --checkpoint-activations value: what a GPT computes again in backward instead of keeping.
struct ActivationCheckpointing {
  /// Whole blocks: 0 none; N: blocks 0, N, 2N, ... (GPT::set_checkpoint_every).
  int64_t every = 0;
  /// Only each block's GELU output, its MLP's largest activation (GPT::set_recompute_gelu).
  bool gelu = false;
  bool any() const { return every > 0 || gelu; }
};
/// Parses "none", "gelu", "blocks" (every block) or "every:N" (N >= 1). Throws ConfigError
/// naming the value.
ActivationCheckpointing parse_activation_checkpointing(std::string_view spec);

}  // namespace mixtrain::nn
