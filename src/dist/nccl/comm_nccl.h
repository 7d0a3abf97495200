// The NCCL path of the data collectives (comm_nccl.cpp), used by the MPI backend
// (dist/mpi/comm_mpi.cpp) when the run is on cuda and the build has MIXTRAIN_CUDA and
// MIXTRAIN_MPI (CMake then defines MIXTRAIN_NCCL). Buffers are device memory; every call is
// queued on cuda::stream(), after the kernels that wrote the buffers. No NCCL or CUDA types.
#pragma once

#include <cstdint>
#include <functional>

#include "mixtrain/dist/comm.h"

namespace mixtrain::dist::nccl {

/// Makes the communicator of `size` ranks: rank 0 makes the unique id and `bcast_from_root`
/// (an MPI broadcast) hands it to the others. Waits at most `timeout` seconds (then aborts the
/// communicator and throws CommError). Every rank calls it once, alike.
void init(int rank, int size, const std::function<void(void*, int64_t)>& bcast_from_root,
          double timeout);
bool ready();

/// comm.h's alltoallv and allgatherv_inplace on device buffers, queued as grouped sends and
/// receives; `r` names the request test() and wait() take.
void ialltoallv(Request r, const void* send, const int64_t* send_bytes, const int64_t* send_off,
                void* recv, const int64_t* recv_bytes, const int64_t* recv_off, double timeout);
void iallgatherv_inplace(Request r, void* buf, const int64_t* bytes, const int64_t* off,
                         double timeout);
/// Sums n floats of device memory in place over the ranks (blocking, bounded by `timeout`).
void allreduce_sum_f32(float* device_data, int64_t n, double timeout);

/// Whether `r` is one of this path's requests.
bool owns(Request r);
/// Whether its work on the stream has completed (it must still be wait()ed).
bool test(Request r);
/// Waits for it at most `timeout` seconds; then aborts the communicator and throws CommError
/// naming `what`.
void wait(Request r, const char* what, double timeout);

}  // namespace mixtrain::dist::nccl
