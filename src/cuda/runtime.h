// The CUDA backend's process-wide state: the stream every kernel, copy and library call of the
// backend is ordered on, and the error check. One stream keeps the backend's work in program
// order (as the CPU's is) without a device-wide sync; the host waits only where it reads device
// memory (download) or a result the step's control flow needs (the found-Inf flag).
#pragma once

#include <cuda_runtime_api.h>

namespace mixtrain::cuda {

/// The backend's stream on the current device, created on first use; non-blocking with respect
/// to the legacy default stream, so other libraries' work on stream 0 does not serialise with it.
cudaStream_t stream();
/// The GPU stream() was created on; -1 before its first use (select_device checks that it
/// comes before any work).
int stream_device();

/// Throws BackendError "cuda: <what>: <message> (<error name>)" unless e is cudaSuccess.
void check(cudaError_t e, const char* what);

}  // namespace mixtrain::cuda
