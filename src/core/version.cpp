// MIXTRAIN_VERSION comes from CMakeLists.txt's project(VERSION).
#include "mixtrain/version.h"

namespace mixtrain {

const char* version() { return MIXTRAIN_VERSION; }

}  // namespace mixtrain
