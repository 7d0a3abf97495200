// Whether this build runs under AddressSanitizer (g++ defines __SANITIZE_ADDRESS__, clang has
// __has_feature): the storage cache is off there, so a use after free is still reported, and
// tests that measure memory returned to the system skip (ASan's quarantine keeps it).
#pragma once

namespace mixtrain {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace mixtrain
