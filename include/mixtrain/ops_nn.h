// Neural-network ops on Variables: embedding, layer norm, softmax, log-softmax,
// cross-entropy, causal attention. Included by ops.h.
#pragma once

#include "mixtrain/autograd.h"

namespace mixtrain {

// (declarations to be filled in)

}  // namespace mixtrain
