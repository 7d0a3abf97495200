// mixtrain umbrella header: everything a training program needs.
#pragma once

#include "mixtrain/autograd.h"
#include "mixtrain/cpu.h"
#include "mixtrain/dtype.h"
#include "mixtrain/error.h"
#include "mixtrain/tensor.h"
