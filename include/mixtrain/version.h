// The library's version (the CMake project version it was built as).
#pragma once

namespace mixtrain {

/// "0.2.0"
const char* version();

}  // namespace mixtrain
