// Which GPU the process drives (select_device's CUDA half, called from backend/registry.cpp)
// and its compute capability (--precision auto reads it). Compiled, not yet run on a GPU.
#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <string>

#include "cuda/runtime.h"

namespace mixtrain {

class Backend;
Backend* cuda_backend(std::string* why);

int cuda_select_device(int index, std::string* why) {
  auto fail = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return -1;
  };
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(fmt::format("cuda: no usable CUDA device ({}: {})", cudaGetErrorName(e),
                            cudaGetErrorString(e)));
  }
  if (count == 0) return fail("cuda: no CUDA device on this machine");
  if (index >= count)
    return fail(fmt::format("cuda:{}: this machine has {} GPU{} (cuda:0{})", index, count,
                            count == 1 ? "" : "s",
                            count == 1 ? "" : fmt::format(" to cuda:{}", count - 1)));
  // The backend's stream, memory pool and every tensor belong to the GPU current when the
  // first of them was made: switching afterwards would strand them.
  const int used = cuda::stream_device();
  if (used >= 0 && used != index)
    return fail(fmt::format(
        "cuda:{}: this process already works on cuda:{} (select the GPU before any CUDA work)",
        index, used));
  const cudaError_t s = cudaSetDevice(index);
  if (s != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(fmt::format("cuda:{}: cudaSetDevice failed ({}: {})", index, cudaGetErrorName(s),
                            cudaGetErrorString(s)));
  }
  if (!cuda_backend(why)) return -1;
  return index;
}

void cuda_synchronize() {
  // Only once the backend has work: its stream is made on first use.
  if (cuda::stream_device() >= 0)
    cuda::check(cudaStreamSynchronize(cuda::stream()), "waiting for the GPU");
}

int cuda_capability(std::string* name) {
  int count = 0, dev = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 ||
      cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (name) *name = prop.name;
  return prop.major * 10 + prop.minor;
}

}  // namespace mixtrain
