// MPI backend of include/mixtrain/dist/comm.h (built when CMake finds MPI and MIXTRAIN_MPI is
// on). Collectives are MPI-3 non-blocking calls polled against a deadline, so a dead or hung
// peer ends the job with a message instead of a hang. A build with CUDA too (MIXTRAIN_NCCL)
// sends the data collectives of a run on cuda through NCCL on device buffers
// (dist/nccl/comm_nccl.cpp), the communicator bootstrapped here; the scalar ones stay on MPI.
#include <mpi.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/sanitizers.h"
#include "mixtrain/dist/comm.h"
#include "mixtrain/error.h"
#if defined(MIXTRAIN_NCCL)
#include "dist/nccl/comm_nccl.h"
#endif
#if defined(MIXTRAIN_ASAN)
#include <sanitizer/lsan_interface.h>
#endif

namespace mixtrain::dist {

namespace {

// OpenMPI never frees some of what MPI_Init and its first collectives allocate, and the plugins
// that allocated it are unloaded at MPI_Finalize, so a LeakSanitizer report of it names no
// library to suppress (matching one took the slow unwinder's full stacks, which doubled the Dist
// tests' time under ASan). So MPI's own calls run with leak tracking off: `mpi(...)` around
// each. What this file allocates itself stays tracked (scripts/sanitize.sh).
template <class F>
int mpi(F&& call) {
#if defined(MIXTRAIN_ASAN)
  struct Untracked {
    Untracked() { __lsan_disable(); }
    ~Untracked() { __lsan_enable(); }  // also when an argument's check throws
  } untracked;
#endif
  return call();
}

struct World {
  bool inited = false;  ///< we called MPI_Init (launched under mpirun)
  int rank = 0, size = 1;
  double timeout = 120.0;
  int64_t sent = 0;
  int64_t sent_by[kCollectives] = {};  ///< the same bytes, by collective
  bool in_flight = false;
  bool nccl = false;  ///< the data collectives take device buffers, through NCCL
};

void add_sent(World& s, Collective c, int64_t bytes) {
  s.sent += bytes;
  s.sent_by[static_cast<int>(c)] += bytes;
}

World& w() {
  static World world;
  return world;
}

// mpirun (OpenMPI's ORTE/PRRTE, or a PMI launcher) tells its children through the environment;
// a plain `./mixtrain train` stays a single process and never touches MPI.
bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

void at_exit() {
  World& s = w();
  int finalized = 0;
  mpi([&] { return MPI_Finalized(&finalized); });
  if (!s.inited || finalized) return;
  // An error left the run unfinished on this rank (the process is exiting anyway): its peers
  // would wait in a collective, so the job ends (MPI_Abort says which rank and why).
  if (s.in_flight && s.size > 1) mpi([] { return MPI_Abort(MPI_COMM_WORLD, 1); });
  mpi([] { return MPI_Finalize(); });
}

World& world() {
  World& s = w();
  static bool once = [&] {
    if (!launched_by_mpirun()) return true;
    int provided = 0;
    if (mpi([&] { return MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided); }) !=
        MPI_SUCCESS)
      throw Error("dist: MPI_Init_thread failed");
    s.inited = true;
    // Errors come back as codes, so they are reported with the collective's name.
    mpi([&] {
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
      MPI_Comm_rank(MPI_COMM_WORLD, &s.rank);
      return MPI_Comm_size(MPI_COMM_WORLD, &s.size);
    });
    std::atexit(at_exit);
    return true;
  }();
  (void)once;
  return s;
}

std::string mpi_error(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  mpi([&] { return MPI_Error_string(rc, buf, &len); });
  return std::string(buf, static_cast<size_t>(len));
}

void check(int rc, const char* op) {
  if (rc != MPI_SUCCESS)
    fail(fmt::format("{} failed: {} (a peer rank probably died)", op, mpi_error(rc)));
}

// Polls the request until it completes or the deadline passes. MPI moves a large message's
// fragments only inside MPI calls (shared memory without single-copy support needs both sides
// to progress), so the first 100 ms poll back to back, yielding the core between polls (a peer
// rank that needs it gets it: on a 2-core machine a blocking spin would steal its compute);
// sleeping there throttled a 1.3 MB exchange to ~8 ms a step. A longer wait (a peer evaluating
// or writing a checkpoint, or dead) backs off to 1 ms sleeps.
void wait_bounded(MPI_Request& req, const char* op) {
  World& s = world();
  const auto t0 = std::chrono::steady_clock::now();
  int done = 0;
  int64_t sleep_us = 0;
  for (;;) {
    check(mpi([&] { return MPI_Test(&req, &done, MPI_STATUS_IGNORE); }), op);
    if (done) return;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > s.timeout)
      fail(fmt::format(
          "{} did not complete within {:g} s (--comm-timeout): a peer rank died or hangs", op,
          s.timeout));
    if (waited < 0.1) {
      std::this_thread::yield();
      continue;
    }
    sleep_us = sleep_us == 0 ? 20 : std::min<int64_t>(1000, sleep_us * 2);
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  }
}

int to_int(int64_t v, const char* op) {
  if (v < 0 || v > INT_MAX)
    throw ShapeError(fmt::format("{}: {} bytes in one block (MPI counts are int)", op, v));
  return static_cast<int>(v);
}

// A non-blocking collective in flight. MPI reads the count and displacement arrays until the
// request completes, so they live here beside it.
struct Pending {
  MPI_Request req = MPI_REQUEST_NULL;
  std::vector<int> c0, o0, c1, o1;
  bool done = false;
};
std::unordered_map<int64_t, Pending>& pending() {
  static std::unordered_map<int64_t, Pending> p;
  return p;
}
int64_t g_next_request = 1;

Pending& pending_at(Request r, const char* op) {
  auto it = pending().find(r);
  if (it == pending().end()) throw Error(fmt::format("dist::{}: unknown request {}", op, r));
  return it->second;
}

}  // namespace

void set_device(Device device) {
  World& s = world();
  s.nccl = false;
#if defined(MIXTRAIN_NCCL)
  // One rank has nothing to send: the host path's copies serve it (comm_device() stays cpu).
  if (device == Device::cuda && s.size > 1) {
    nccl::init(
        s.rank, s.size, [](void* p, int64_t n) { broadcast(p, n, 0); }, s.timeout);
    s.nccl = true;
  }
#else
  (void)device;
#endif
}

Device comm_device() { return world().nccl ? Device::cuda : Device::cpu; }
bool nccl_active() { return world().nccl; }

bool mpi_built() { return true; }
int rank() { return world().rank; }
int size() { return world().size; }

std::string backend_description() {
  const World& s = world();
  if (!s.inited) return "single process (not launched by mpirun)";
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  mpi([&] { return MPI_Get_library_version(lib, &len); });
  std::string v(lib, static_cast<size_t>(len));
  if (auto nl = v.find(','); nl != std::string::npos) v.resize(nl);
  return fmt::format("{}, {} ranks", v, s.size);
}

double timeout() { return world().timeout; }
void set_timeout(double seconds) {
  if (!(seconds > 0)) throw ConfigError(fmt::format("--comm-timeout: {} (must be > 0)", seconds));
  world().timeout = seconds;
}

void allreduce_sum(double* data, int64_t n) {
  World& s = world();
  if (s.size == 1) return;
  MPI_Request req;
  check(mpi([&] {
          return MPI_Iallreduce(MPI_IN_PLACE, data, to_int(n, "allreduce"), MPI_DOUBLE, MPI_SUM,
                                MPI_COMM_WORLD, &req);
        }),
        "MPI_Iallreduce");
  wait_bounded(req, "allreduce (sum)");
  add_sent(s, Collective::allreduce, 2 * n * 8 * (s.size - 1) / s.size);
}

void allreduce_max(int64_t* data, int64_t n) {
  World& s = world();
  if (s.size == 1) return;
  MPI_Request req;
  check(mpi([&] {
          return MPI_Iallreduce(MPI_IN_PLACE, data, to_int(n, "allreduce"), MPI_INT64_T, MPI_MAX,
                                MPI_COMM_WORLD, &req);
        }),
        "MPI_Iallreduce");
  wait_bounded(req, "allreduce (max)");
  add_sent(s, Collective::allreduce, 2 * n * 8 * (s.size - 1) / s.size);
}

void allreduce_sum_buffer(float* data, int64_t n) {
  World& s = world();
  if (s.size == 1) return;
  add_sent(s, Collective::allreduce, 2 * n * 4 * (s.size - 1) / s.size);
#if defined(MIXTRAIN_NCCL)
  if (s.nccl) return nccl::allreduce_sum_f32(data, n, s.timeout);
#endif
  MPI_Request req;
  check(mpi([&] {
          return MPI_Iallreduce(MPI_IN_PLACE, data, to_int(n, "allreduce"), MPI_FLOAT, MPI_SUM,
                                MPI_COMM_WORLD, &req);
        }),
        "MPI_Iallreduce");
  wait_bounded(req, "allreduce (sum of a buffer)");
}

void broadcast(void* data, int64_t bytes, int root) {
  World& s = world();
  if (s.size == 1) return;
  MPI_Request req;
  check(mpi([&] {
          return MPI_Ibcast(data, to_int(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD, &req);
        }),
        "MPI_Ibcast");
  wait_bounded(req, "broadcast");
  if (s.rank == root) add_sent(s, Collective::broadcast, bytes * (s.size - 1));
}

void barrier() {
  World& s = world();
  if (s.size == 1) return;
  MPI_Request req;
  check(mpi([&] { return MPI_Ibarrier(MPI_COMM_WORLD, &req); }), "MPI_Ibarrier");
  wait_bounded(req, "barrier");
}

Request ialltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
                   const int64_t* recv_bytes, const int64_t* recv_off) {
  World& s = world();
  const Request r = g_next_request++;
#if defined(MIXTRAIN_NCCL)
  if (s.nccl) {
    for (int j = 0; j < s.size; ++j)
      if (j != s.rank) add_sent(s, Collective::alltoallv, send_bytes[j]);
    nccl::ialltoallv(r, send, send_bytes, send_off, recv, recv_bytes, recv_off, s.timeout);
    return r;
  }
#endif
  Pending& p = pending()[r];
  p.c0.resize(s.size);
  p.o0.resize(s.size);
  p.c1.resize(s.size);
  p.o1.resize(s.size);
  for (int j = 0; j < s.size; ++j) {
    p.c0[j] = to_int(send_bytes[j], "alltoallv");
    p.o0[j] = to_int(send_off[j], "alltoallv");
    p.c1[j] = to_int(recv_bytes[j], "alltoallv");
    p.o1[j] = to_int(recv_off[j], "alltoallv");
    if (j != s.rank) add_sent(s, Collective::alltoallv, send_bytes[j]);
  }
  if (s.size == 1) {
    std::copy_n(static_cast<const char*>(send) + p.o0[0], p.c0[0],
                static_cast<char*>(recv) + p.o1[0]);
    p.done = true;
    return r;
  }
  check(mpi([&] {
          return MPI_Ialltoallv(send, p.c0.data(), p.o0.data(), MPI_BYTE, recv, p.c1.data(),
                                p.o1.data(), MPI_BYTE, MPI_COMM_WORLD, &p.req);
        }),
        "MPI_Ialltoallv");
  return r;
}

Request iallgatherv_inplace(void* buf, const int64_t* bytes, const int64_t* off) {
  World& s = world();
  const Request r = g_next_request++;
#if defined(MIXTRAIN_NCCL)
  if (s.nccl) {
    add_sent(s, Collective::allgatherv, bytes[s.rank] * (s.size - 1));
    nccl::iallgatherv_inplace(r, buf, bytes, off, s.timeout);
    return r;
  }
#endif
  Pending& p = pending()[r];
  if (s.size == 1) {
    p.done = true;
    return r;
  }
  p.c0.resize(s.size);
  p.o0.resize(s.size);
  for (int j = 0; j < s.size; ++j) {
    p.c0[j] = to_int(bytes[j], "allgatherv");
    p.o0[j] = to_int(off[j], "allgatherv");
  }
  add_sent(s, Collective::allgatherv, bytes[s.rank] * (s.size - 1));
  check(mpi([&] {
          return MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_BYTE, buf, p.c0.data(), p.o0.data(), MPI_BYTE,
                                 MPI_COMM_WORLD, &p.req);
        }),
        "MPI_Iallgatherv");
  return r;
}

bool test(Request r) {
#if defined(MIXTRAIN_NCCL)
  if (nccl::owns(r)) return nccl::test(r);
#endif
  Pending& p = pending_at(r, "test");
  if (!p.done) {
    int flag = 0;
    check(mpi([&] { return MPI_Test(&p.req, &flag, MPI_STATUS_IGNORE); }), "MPI_Test");
    p.done = flag != 0;
  }
  return p.done;
}

void wait(Request r, const char* what) {
#if defined(MIXTRAIN_NCCL)
  if (nccl::owns(r)) return nccl::wait(r, what, world().timeout);
#endif
  Pending& p = pending_at(r, "wait");
  if (!p.done) wait_bounded(p.req, what);
  pending().erase(r);
}

void alltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
               const int64_t* recv_bytes, const int64_t* recv_off) {
  wait(ialltoallv(send, send_bytes, send_off, recv, recv_bytes, recv_off),
       "gradient reduce-scatter (alltoallv)");
}

void allgatherv_inplace(void* buf, const int64_t* bytes, const int64_t* off) {
  wait(iallgatherv_inplace(buf, bytes, off), "all-gather (allgatherv)");
}

void gatherv(const void* send, int64_t send_bytes, void* recv, const int64_t* bytes,
             const int64_t* off, int root) {
  World& s = world();
  if (s.size == 1) {
    std::copy_n(static_cast<const char*>(send), send_bytes, static_cast<char*>(recv) + off[0]);
    return;
  }
  std::vector<int> c, o;
  if (s.rank == root) {
    c.resize(s.size);
    o.resize(s.size);
    for (int j = 0; j < s.size; ++j) {
      c[j] = to_int(bytes[j], "gatherv");
      o[j] = to_int(off[j], "gatherv");
    }
  } else {
    add_sent(s, Collective::gatherv, send_bytes);
  }
  MPI_Request req;
  check(mpi([&] {
          return MPI_Igatherv(send, to_int(send_bytes, "gatherv"), MPI_BYTE, recv, c.data(),
                              o.data(), MPI_BYTE, root, MPI_COMM_WORLD, &req);
        }),
        "MPI_Igatherv");
  wait_bounded(req, "gather to rank 0 (gatherv)");
}

int64_t bytes_sent() { return world().sent; }
int64_t bytes_sent(Collective c) { return world().sent_by[static_cast<int>(c)]; }

void fail(const std::string& why) {
  World& s = world();
  throw CommError(fmt::format("rank {} of {}: {}", s.rank, s.size, why));
}

void set_run_in_flight(bool on) { world().in_flight = on; }

}  // namespace mixtrain::dist
