// The process group of a data-parallel run: rank, size and the few collectives the trainer
// needs. Backed by MPI when built with MIXTRAIN_MPI and launched under mpirun; otherwise (or
// when started without mpirun) a single rank. The data collectives (alltoallv, allgatherv) take
// buffers of comm_device(): host memory for MPI, or GPU memory through NCCL when the run is on
// cuda and the build has both MIXTRAIN_CUDA and MIXTRAIN_MPI (the NCCL communicator is
// bootstrapped over MPI). The scalar ones (allreduce_*, broadcast, barrier, gatherv) always take
// host memory and go through MPI. No MPI, CUDA or NCCL types here.
//
//   if (dist::size() > 1) dist::allreduce_sum(&loss, 1);
//
// Every collective waits at most timeout() seconds: a peer that died or hangs makes it throw
// CommError naming the collective, never a hang; the process exiting with the run in flight
// then ends every rank (MPI_Abort).
#pragma once

#include <cstdint>
#include <string>

#include "mixtrain/tensor.h"

namespace mixtrain::dist {

/// The device the run computes on; the trainer says it before making the data-parallel engine.
/// On cuda with several ranks and a build with NCCL, every rank must call it alike: it makes
/// the NCCL communicator (rank 0's unique id broadcast over MPI), and comm_device() becomes cuda.
void set_device(Device device);
/// The device whose memory the data collectives (alltoallv, allgatherv and their non-blocking
/// forms) read and write: cuda when the NCCL path is on (set_device above), else the host
/// (data parallelism stages device tensors through it).
Device comm_device();
/// Whether the data collectives go through NCCL (comm_device() is cuda).
bool nccl_active();

/// Whether this build has an MPI backend (CMake option MIXTRAIN_MPI).
bool mpi_built();
/// This process's rank and the number of ranks (1 when not launched under mpirun). The first
/// call initialises MPI when the environment says mpirun started us.
int rank();
int size();
/// "OpenMPI 4.1.4, 2 ranks" / "no MPI (built without MIXTRAIN_MPI)" / "single process".
std::string backend_description();

/// Seconds a collective may wait for its peers (default 120).
double timeout();
void set_timeout(double seconds);

/// Collectives (every rank must call them in the same order).
void allreduce_sum(double* data, int64_t n);
void allreduce_max(int64_t* data, int64_t n);
void broadcast(void* data, int64_t bytes, int root);
/// Sums n floats of comm_device() memory in place over the ranks (NCCL's allreduce on the GPU;
/// MPI's on the host).
void allreduce_sum_buffer(float* data, int64_t n);
void barrier();
/// Each rank sends send_bytes[j] bytes at send + send_off[j] to rank j and receives
/// recv_bytes[i] bytes from rank i at recv + recv_off[i] (arrays of size()).
void alltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
               const int64_t* recv_bytes, const int64_t* recv_off);
/// Rank i's block (bytes[i] bytes) lands at buf + off[i] on every rank; this rank's block must
/// already be in place.
void allgatherv_inplace(void* buf, const int64_t* bytes, const int64_t* off);

/// Rank i's block (bytes[i] bytes, read from `send` on rank i) lands at recv + off[i] on
/// `root` only; recv, bytes and off are read on the root alone.
void gatherv(const void* send, int64_t send_bytes, void* recv, const int64_t* bytes,
             const int64_t* off, int root);

/// Non-blocking forms (data parallel overlaps them with the backward pass): start, go on
/// computing, wait() before touching the buffers. The handle is opaque (no MPI types here).
using Request = int64_t;
Request ialltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
                   const int64_t* recv_bytes, const int64_t* recv_off);
Request iallgatherv_inplace(void* buf, const int64_t* bytes, const int64_t* off);
/// Gives in-flight collectives a chance to progress (MPI moves data only inside MPI calls);
/// true when `r` has completed (it must still be wait()ed).
bool test(Request r);
/// Waits for `r` at most timeout() seconds (then throws CommError naming `what`).
void wait(Request r, const char* what);

/// Payload bytes this rank has sent to other ranks so far (collectives above, all kinds).
int64_t bytes_sent();
/// The collectives, for accounting: alltoallv is data parallelism's reduce-scatter, allgatherv
/// its all-gathers (of reduced gradients, or of ZeRO's updated weights).
enum class Collective : int { allreduce, broadcast, alltoallv, allgatherv, gatherv };
inline constexpr int kCollectives = 5;
/// "allreduce", "broadcast", "alltoallv", "allgatherv", "gatherv".
inline const char* collective_name(Collective c) {
  constexpr const char* names[kCollectives] = {"allreduce", "broadcast", "alltoallv", "allgatherv",
                                               "gatherv"};
  return names[static_cast<int>(c)];
}
/// Of bytes_sent(), the bytes of one kind of collective.
int64_t bytes_sent(Collective c);

/// Throws CommError "rank R of N: why" (a collective failed or timed out).
[[noreturn]] void fail(const std::string& why);
/// While a run is in flight, a process that exits without finishing it (a CommError or any
/// other exception reached main, say) ends the whole job (MPI_Abort, at exit) instead of
/// leaving its peers waiting in a collective.
void set_run_in_flight(bool on);

}  // namespace mixtrain::dist
