// NCCL collectives on device buffers for data-parallel runs on GPUs (comm_nccl.h). The
// communicator is non-blocking (ncclConfig_t::blocking = 0), so that no NCCL call can hang the
// host: each one returns at once or "in progress", and the host polls its state, and then the
// CUDA event recorded after it on cuda::stream(), against the --comm-timeout deadline. A
// collective that does not complete in time aborts the communicator (ncclCommAbort) and throws
// CommError naming it, as the MPI path does; the process then ends the job (MPI_Abort at exit).
//
// Everything runs on the backend's one stream: a collective starts after the kernels that wrote
// its buffers and the kernels queued after it wait for it, with no extra synchronisation (and
// no overlap of communication with computation on the GPU: a non-blocking request frees the
// host, not the stream).
//
// Compiled and linked here, never run: this machine has no GPU, and the data-parallel tests
// run the host MPI path (comm_device() is cpu unless the run is on cuda).
#include "dist/nccl/comm_nccl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <unordered_map>

#include "cuda/runtime.h"
#include "mixtrain/error.h"

namespace mixtrain::dist::nccl {

namespace {

using Clock = std::chrono::steady_clock;

struct State {
  ncclComm_t comm = nullptr;
  int rank = 0, size = 1;
  std::unordered_map<Request, cudaEvent_t> events;  // in flight, by request
};

State& st() {
  static State s;
  return s;
}

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The communicator cannot be trusted after a failure or a timeout: abort it (its kernels stop)
// and report. Later collectives then fail at once ("no NCCL communicator").
[[noreturn]] void abort_and_fail(const std::string& why) {
  State& s = st();
  if (s.comm) {
    ncclCommAbort(s.comm);
    s.comm = nullptr;
  }
  fail(why);
}

void backoff(Clock::time_point t0, int64_t& sleep_us) {
  if (since(t0) < 0.1) {
    std::this_thread::yield();
    return;
  }
  sleep_us = sleep_us == 0 ? 20 : std::min<int64_t>(1000, sleep_us * 2);
  std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
}

// A non-blocking communicator's call returned; wait until NCCL has finished issuing it (the
// state leaves ncclInProgress) or the deadline passes.
void settle(ncclResult_t rc, const char* what, double timeout) {
  State& s = st();
  const auto t0 = Clock::now();
  int64_t sleep_us = 0;
  while (rc == ncclInProgress) {
    if (since(t0) > timeout)
      abort_and_fail(fmt::format(
          "{}: NCCL did not finish issuing it within {:g} s (--comm-timeout): a peer rank died "
          "or hangs",
          what, timeout));
    backoff(t0, sleep_us);
    if (ncclCommGetAsyncError(s.comm, &rc) != ncclSuccess) break;
  }
  if (rc != ncclSuccess)
    abort_and_fail(fmt::format("{} failed in NCCL: {} ({})", what, ncclGetErrorString(rc),
                               ncclGetLastError(s.comm)));
}

ncclComm_t comm(const char* what) {
  State& s = st();
  if (!s.comm)
    fail(fmt::format("{}: no NCCL communicator (it was never made, or aborted after an error)",
                     what));
  return s.comm;
}

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    abort_and_fail(fmt::format("{}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

// Records the request's completion event after what was just queued.
void record(Request r, const char* what) {
  cudaEvent_t ev = nullptr;
  cuda_ok(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), what);
  cuda_ok(cudaEventRecord(ev, cuda::stream()), what);
  st().events[r] = ev;
}

const char* at(const void* p, int64_t off) { return static_cast<const char*>(p) + off; }
char* at(void* p, int64_t off) { return static_cast<char*>(p) + off; }

}  // namespace

void init(int rank, int size, const std::function<void(void*, int64_t)>& bcast_from_root,
          double timeout) {
  State& s = st();
  if (s.comm) return;
  s.rank = rank;
  s.size = size;
  ncclUniqueId id{};
  if (rank == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) fail(fmt::format("ncclGetUniqueId failed: {}", ncclGetErrorString(rc)));
  }
  bcast_from_root(&id, static_cast<int64_t>(sizeof id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t c = nullptr;
  const ncclResult_t rc = ncclCommInitRankConfig(&c, size, id, rank, &config);
  s.comm = c;
  if (rc != ncclSuccess && rc != ncclInProgress) {
    s.comm = nullptr;
    fail(fmt::format("ncclCommInitRankConfig failed: {}", ncclGetErrorString(rc)));
  }
  settle(rc, "making the NCCL communicator", timeout);
}

bool ready() { return st().comm != nullptr; }

void ialltoallv(Request r, const void* send, const int64_t* send_bytes, const int64_t* send_off,
                void* recv, const int64_t* recv_bytes, const int64_t* recv_off, double timeout) {
  const char* what = "gradient reduce-scatter (alltoallv over NCCL)";
  State& s = st();
  ncclComm_t c = comm(what);
  cudaStream_t stream = cuda::stream();
  // This rank's own block is a device copy; NCCL moves the others, all in one group.
  if (send_bytes[s.rank] > 0)
    cuda_ok(
        cudaMemcpyAsync(at(recv, recv_off[s.rank]), at(send, send_off[s.rank]),
                        static_cast<size_t>(send_bytes[s.rank]), cudaMemcpyDeviceToDevice, stream),
        what);
  ncclResult_t rc = ncclGroupStart();
  for (int j = 0; j < s.size && rc == ncclSuccess; ++j) {
    if (j == s.rank) continue;
    if (send_bytes[j] > 0)
      rc = ncclSend(at(send, send_off[j]), static_cast<size_t>(send_bytes[j]), ncclUint8, j, c,
                    stream);
    if ((rc == ncclSuccess || rc == ncclInProgress) && recv_bytes[j] > 0)
      rc = ncclRecv(at(recv, recv_off[j]), static_cast<size_t>(recv_bytes[j]), ncclUint8, j, c,
                    stream);
    if (rc == ncclInProgress) rc = ncclSuccess;
  }
  const ncclResult_t end = ncclGroupEnd();
  settle(rc != ncclSuccess ? rc : end, what, timeout);
  record(r, what);
}

void iallgatherv_inplace(Request r, void* buf, const int64_t* bytes, const int64_t* off,
                         double timeout) {
  const char* what = "all-gather (allgatherv over NCCL)";
  State& s = st();
  ncclComm_t c = comm(what);
  cudaStream_t stream = cuda::stream();
  // Every rank sends its block (already in place) to each other rank and receives theirs into
  // their places: disjoint ranges of one buffer.
  ncclResult_t rc = ncclGroupStart();
  for (int j = 0; j < s.size && rc == ncclSuccess; ++j) {
    if (j == s.rank) continue;
    if (bytes[s.rank] > 0)
      rc = ncclSend(at(buf, off[s.rank]), static_cast<size_t>(bytes[s.rank]), ncclUint8, j, c,
                    stream);
    if ((rc == ncclSuccess || rc == ncclInProgress) && bytes[j] > 0)
      rc = ncclRecv(at(buf, off[j]), static_cast<size_t>(bytes[j]), ncclUint8, j, c, stream);
    if (rc == ncclInProgress) rc = ncclSuccess;
  }
  const ncclResult_t end = ncclGroupEnd();
  settle(rc != ncclSuccess ? rc : end, what, timeout);
  record(r, what);
}

void allreduce_sum_f32(float* device_data, int64_t n, double timeout) {
  const char* what = "allreduce (sum over NCCL)";
  ncclComm_t c = comm(what);
  const ncclResult_t rc = ncclAllReduce(device_data, device_data, static_cast<size_t>(n),
                                        ncclFloat32, ncclSum, c, cuda::stream());
  settle(rc, what, timeout);
  constexpr Request kBlocking = -1;
  record(kBlocking, what);
  wait(kBlocking, what, timeout);
}

bool owns(Request r) { return st().events.count(r) > 0; }

bool test(Request r) {
  auto it = st().events.find(r);
  if (it == st().events.end()) return true;
  const cudaError_t e = cudaEventQuery(it->second);
  if (e == cudaErrorNotReady) return false;
  cuda_ok(e, "NCCL request");
  return true;
}

void wait(Request r, const char* what, double timeout) {
  State& s = st();
  auto it = s.events.find(r);
  if (it == s.events.end()) return;
  cudaEvent_t ev = it->second;
  s.events.erase(it);
  const auto t0 = Clock::now();
  int64_t sleep_us = 0;
  for (;;) {
    const cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) {
      cudaEventDestroy(ev);
      cuda_ok(e, what);
    }
    // A peer's failure shows as the communicator's asynchronous error, not in the event.
    ncclResult_t async = ncclSuccess;
    if (s.comm && ncclCommGetAsyncError(s.comm, &async) == ncclSuccess && async != ncclSuccess &&
        async != ncclInProgress) {
      cudaEventDestroy(ev);
      abort_and_fail(fmt::format("{} failed in NCCL: {}", what, ncclGetErrorString(async)));
    }
    if (since(t0) > timeout) {
      cudaEventDestroy(ev);
      abort_and_fail(fmt::format(
          "{} did not complete within {:g} s (--comm-timeout): a peer rank died or hangs; the "
          "NCCL communicator was aborted",
          what, timeout));
    }
    backoff(t0, sleep_us);
  }
  cudaEventDestroy(ev);
}

}  // namespace mixtrain::dist::nccl
