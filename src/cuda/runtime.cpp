#include "cuda/runtime.h"

#include <fmt/format.h>

#include "mixtrain/error.h"

namespace mixtrain::cuda {

cudaStream_t stream() {
  // Created once per process: a process drives one GPU (--device cuda:N selects it before the
  // first tensor is made), and the stream lives until exit, as the backend does.
  static cudaStream_t s = [] {
    cudaStream_t made = nullptr;
    check(cudaStreamCreateWithFlags(&made, cudaStreamNonBlocking), "creating the backend's stream");
    return made;
  }();
  return s;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw BackendError(
        fmt::format("cuda: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

}  // namespace mixtrain::cuda
