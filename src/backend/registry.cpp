// Which backend serves a device, and the helpers every backend's callers share.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "backend/backend.h"
#include "cpu/backend.h"

namespace mixtrain {

// Defined by src/cuda (a build with MIXTRAIN_CUDA=ON) or by src/no_cuda: the CUDA backend, or
// null with the reason in `why`.
Backend* cuda_backend(std::string* why);
// Also theirs: make GPU `index` (>= 0) the process's device, returning it, or -1 with the
// reason in `why`; the current GPU's compute capability (major * 10 + minor; 0: none).
int cuda_select_device(int index, std::string* why);
int cuda_capability(std::string* name);
void cuda_synchronize();

namespace {

// The local rank a launcher gives each process (OpenMPI, MPICH/Hydra, Slurm), or -1.
int launcher_local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* s = std::getenv(v)) {
      char* end = nullptr;
      const long r = std::strtol(s, &end, 10);
      if (end != s && *end == '\0' && r >= 0 && r < 1 << 16) return static_cast<int>(r);
    }
  return -1;
}

}  // namespace

int select_device(Device device, int index) {
  if (device == Device::cpu) return -1;
  if (index < 0) index = std::max(0, launcher_local_rank());
  std::string why;
  const int chosen = cuda_select_device(index, &why);
  if (chosen < 0) throw BackendError(why);
  return chosen;
}

int cuda_compute_capability(std::string* name) { return cuda_capability(name); }

void synchronize(Device device) {
  if (device == Device::cuda) cuda_synchronize();
}

bool backend_available(Device d, std::string* why) {
  if (d == Device::cpu) return true;
  std::string reason;
  Backend* b = cuda_backend(&reason);
  if (!b && why) *why = reason;
  return b != nullptr;
}

Backend& backend_for(Device d) {
  if (d == Device::cpu) return cpu::cpu_backend();
  std::string why;
  if (Backend* b = cuda_backend(&why)) return *b;
  throw BackendError(why);
}

bool device_available(Device d, std::string* why) { return backend_available(d, why); }

std::string device_description(Device d) { return backend_for(d).describe(); }

Device common_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t || !t->defined()) continue;
    if (!first) {
      first = t;
    } else if (t->device() != first->device()) {
      throw BackendError(fmt::format("{}: {} is on {} but {} is on {} (move one with .to(Device))",
                                     op, first->str(), device_name(first->device()), t->str(),
                                     device_name(t->device())));
    }
  }
  return first ? first->device() : Device::cpu;
}

int map_arity(MapOp op) {
  switch (op) {
    case MapOp::add:
    case MapOp::sub:
    case MapOp::mul:
    case MapOp::div:
    case MapOp::relu_grad:
    case MapOp::tanh_grad:
    case MapOp::abs_grad:
    case MapOp::exp_grad:
    case MapOp::log_grad:
    case MapOp::gelu_grad:
      return 2;
    case MapOp::div_grad_b:
      return 3;
    default:
      return 1;
  }
}

const char* map_op_name(MapOp op) {
  switch (op) {
    case MapOp::add:
      return "add";
    case MapOp::sub:
      return "sub";
    case MapOp::mul:
      return "mul";
    case MapOp::div:
      return "div";
    case MapOp::neg:
      return "neg";
    case MapOp::add_scalar:
      return "add_scalar";
    case MapOp::mul_scalar:
      return "mul_scalar";
    case MapOp::relu:
      return "relu";
    case MapOp::tanh:
      return "tanh";
    case MapOp::abs:
      return "abs";
    case MapOp::exp:
      return "exp";
    case MapOp::log:
      return "log";
    case MapOp::gelu:
      return "gelu";
    case MapOp::relu_grad:
      return "relu_grad";
    case MapOp::tanh_grad:
      return "tanh_grad";
    case MapOp::abs_grad:
      return "abs_grad";
    case MapOp::exp_grad:
      return "exp_grad";
    case MapOp::log_grad:
      return "log_grad";
    case MapOp::gelu_grad:
      return "gelu_grad";
    case MapOp::div_grad_b:
      return "div_grad_b";
  }
  return "?";
}

}  // namespace mixtrain
