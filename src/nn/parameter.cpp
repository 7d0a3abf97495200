// Parameter: master + compute copy.
#include "mixtrain/nn/parameter.h"

namespace mixtrain::nn {

Parameter::Parameter(std::string n, const Tensor& init, DType compute_dtype, DType master_dtype)
    : name(std::move(n)), master(init.to(master_dtype).contiguous()) {
  if (master.storage() == init.storage()) master = master.clone();  // own the master
  set_compute_dtype(compute_dtype);
}

void Parameter::set_compute_dtype(DType dt) {
  Tensor copy = dt == master.dtype() ? master : master.to(dt);
  Tensor old_grad = weight.defined() ? weight.grad() : Tensor();
  weight = Variable(copy, true, name);
  weight.set_grad_dtype(grad_dtype);
  if (old_grad.defined())
    weight.grad() = old_grad.dtype() == grad_dtype ? old_grad : old_grad.to(grad_dtype);
}

void Parameter::set_grad_dtype(DType dt) {
  grad_dtype = dt;
  weight.set_grad_dtype(dt);
  weight.zero_grad();
}

void Parameter::to(Device device) {
  const bool shared = master.defined() && weight.defined() && shares_master();
  if (master.defined()) master = master.to(device);
  if (!weight.defined()) return;
  Tensor grad = weight.grad();
  // The working copy keeps sharing the master's storage when it did, else moves its own bytes
  // (a copy made from the master would round again where a master-free mode keeps low bits).
  Tensor copy = shared ? master : weight.data().to(device);
  weight = Variable(copy, true, name);
  weight.set_grad_dtype(grad_dtype);
  if (grad.defined()) weight.grad() = grad.to(device);
}

void Parameter::refresh() {
  if (master.defined() && !shares_master()) weight.data().copy_from(master);
}

}  // namespace mixtrain::nn
