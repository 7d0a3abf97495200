// Differentiable ops on Variables. Each op consults the active precision policy
// (amp/policy.h) through its category, computes with fp32 internals, and records its backward
// (which sits beside the forward in src/ops/). Shapes use B, T, C, V, H, D (see tensor.h).
#pragma once

#include <vector>

#include "mixtrain/autograd.h"

namespace mixtrain {

// ---- owned by the tensor-ops work (src/ops/elementwise.cpp, reduce.cpp, shape.cpp, matmul.cpp)
// (declarations to be filled in)

}  // namespace mixtrain

#include "mixtrain/ops_nn.h"
