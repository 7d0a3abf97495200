// The mixtrain command-line trainer. Built only on the public API.
#include <cstdio>

#include "mixtrain/mixtrain.h"

int main(int argc, char** argv) {
  const auto& f = mixtrain::cpu_features();
  std::printf("cpu: %s\navx2 %d f16c %d avx512f %d avx512_bf16 %d avx512_fp16 %d\n", f.brand.c_str(),
              f.avx2, f.f16c, f.avx512f, f.avx512_bf16, f.avx512_fp16);
  return 0;
}
