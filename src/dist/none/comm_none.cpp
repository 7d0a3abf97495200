// The no-MPI backend of include/mixtrain/dist/comm.h (CMake selects this folder when MPI is
// absent or MIXTRAIN_MPI is off): always one rank; collectives are identities. A run launched
// by mpirun anyway is refused with a clear error rather than training N independent copies.
#include <fmt/format.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "mixtrain/dist/comm.h"
#include "mixtrain/error.h"

namespace mixtrain::dist {

namespace {
double g_timeout = 120.0;

void refuse_mpirun() {
  static const bool checked = [] {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
      const char* n = std::getenv(v);
      if (n && std::atoi(n) > 1)
        throw ConfigError(
            fmt::format("launched by mpirun with {} ranks, but this mixtrain was built without MPI "
                        "(rebuild with -DMIXTRAIN_MPI=ON and libopenmpi-dev installed)",
                        n));
    }
    return true;
  }();
  (void)checked;
}
}  // namespace

// One rank: there is nothing to communicate, so the host buffers of the identity collectives
// serve every device (data parallelism stages device tensors through them).
void set_device(Device) {}
Device comm_device() { return Device::cpu; }
bool nccl_active() { return false; }

bool mpi_built() { return false; }
int rank() {
  refuse_mpirun();
  return 0;
}
int size() {
  refuse_mpirun();
  return 1;
}
std::string backend_description() { return "no MPI (built without MIXTRAIN_MPI)"; }
double timeout() { return g_timeout; }
void set_timeout(double seconds) {
  if (!(seconds > 0)) throw ConfigError(fmt::format("--comm-timeout: {} (must be > 0)", seconds));
  g_timeout = seconds;
}
void allreduce_sum(double*, int64_t) {}
void allreduce_sum_buffer(float*, int64_t) {}
void allreduce_max(int64_t*, int64_t) {}
void broadcast(void*, int64_t, int) {}
void barrier() {}
void alltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
               const int64_t*, const int64_t* recv_off) {
  const char* s = static_cast<const char*>(send) + send_off[0];
  std::copy(s, s + send_bytes[0], static_cast<char*>(recv) + recv_off[0]);
}
void allgatherv_inplace(void*, const int64_t*, const int64_t*) {}
void gatherv(const void* send, int64_t send_bytes, void* recv, const int64_t*, const int64_t* off,
             int) {
  const char* s = static_cast<const char*>(send);
  std::copy(s, s + send_bytes, static_cast<char*>(recv) + off[0]);
}
Request ialltoallv(const void* send, const int64_t* send_bytes, const int64_t* send_off, void* recv,
                   const int64_t* recv_bytes, const int64_t* recv_off) {
  alltoallv(send, send_bytes, send_off, recv, recv_bytes, recv_off);
  return 0;
}
Request iallgatherv_inplace(void*, const int64_t*, const int64_t*) { return 0; }
bool test(Request) { return true; }
void wait(Request, const char*) {}
int64_t bytes_sent() { return 0; }
int64_t bytes_sent(Collective) { return 0; }
void fail(const std::string& why) { throw CommError(why); }
void set_run_in_flight(bool) {}

}  // namespace mixtrain::dist
