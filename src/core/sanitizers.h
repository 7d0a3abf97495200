// Whether this build runs under AddressSanitizer (g++ defines __SANITIZE_ADDRESS__, clang has
// __has_feature): the storage cache is off there, so a use after free is still reported, step
// plans poison their arena's free bytes, and tests that measure memory returned to the system
// skip (ASan's quarantine keeps it).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define MIXTRAIN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MIXTRAIN_ASAN 1
#endif
#endif

namespace mixtrain {

#if defined(MIXTRAIN_ASAN)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace mixtrain
