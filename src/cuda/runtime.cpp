#include "cuda/runtime.h"

#include <fmt/format.h>

#include <atomic>

#include "mixtrain/error.h"

namespace mixtrain::cuda {

namespace {
std::atomic<int> g_stream_device{-1};
}  // namespace

cudaStream_t stream() {
  // Created once per process: a process drives one GPU (--device cuda:N selects it before the
  // first tensor is made), and the stream lives until exit, as the backend does.
  static cudaStream_t s = [] {
    cudaStream_t made = nullptr;
    check(cudaStreamCreateWithFlags(&made, cudaStreamNonBlocking), "creating the backend's stream");
    int dev = 0;
    check(cudaGetDevice(&dev), "creating the backend's stream");
    g_stream_device.store(dev);
    return made;
  }();
  return s;
}

int stream_device() { return g_stream_device.load(); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw BackendError(
        fmt::format("cuda: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

}  // namespace mixtrain::cuda
