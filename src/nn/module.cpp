// Module bookkeeping: parameter registry, recursion, precision overrides, state files.
#include "mixtrain/nn/module.h"

#include <fmt/format.h>

#include "mixtrain/io/safetensors.h"

namespace mixtrain::nn {

Parameter& Module::register_parameter(const std::string& name, const Tensor& init) {
  params_.emplace_back(name, std::make_unique<Parameter>(name, init));
  return *params_.back().second;
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Parameter*>>& out) {
  for (auto& [n, p] : params_) out.emplace_back(prefix + n, p.get());
  for (auto& [n, c] : children_) c->collect(prefix + n + ".", out);
}

std::vector<std::pair<std::string, Parameter*>> Module::named_parameters() {
  std::vector<std::pair<std::string, Parameter*>> out;
  collect("", out);
  for (auto& [n, p] : out) p->name = n;  // full dotted names for messages and checkpoints
  return out;
}

std::vector<Parameter*> Module::parameters() {
  std::vector<Parameter*> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

std::vector<Variable> Module::parameter_variables() const {
  std::vector<Variable> out;
  for (const auto& [n, p] : params_) out.push_back(p->weight);
  for (const auto& [n, c] : children_) {
    std::vector<Variable> sub = c->parameter_variables();
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto* p : parameters()) n += p->numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::to(Device device) {
  for (Parameter* p : parameters()) p->to(device);
}

void Module::set_compute_dtype(DType dt) {
  const DType mine = override_.value_or(dt);
  for (auto& [n, p] : params_) p->set_compute_dtype(mine);
  for (auto& [n, c] : children_) c->set_compute_dtype(c->override_.value_or(mine));
}

void Module::set_compute_override(std::optional<DType> dt) {
  override_ = dt;
  if (dt) set_compute_dtype(*dt);
}

Module* Module::find(const std::string& path) {
  // Child names may hold dots themselves ("blocks.0"): match whole names as prefixes.
  for (auto& [name, child] : children_) {
    if (path == name) return child.get();
    if (path.size() > name.size() && path.compare(0, name.size(), name) == 0 &&
        path[name.size()] == '.')
      if (Module* m = child->find(path.substr(name.size() + 1))) return m;
  }
  return nullptr;
}

std::vector<std::string> Module::module_names() const {
  std::vector<std::string> out;
  for (const auto& [name, child] : children_) {
    out.push_back(name);
    for (const auto& sub : child->module_names()) out.push_back(name + "." + sub);
  }
  return out;
}

Module::ForwardScope::ForwardScope(const Module& m) : m_(m) {
  if (m.forward_depth_++ == 0) {
    if (m.hooks_.pre_forward) m.hooks_.pre_forward();
    if (m.hooks_.pre_backward) backward_.emplace(m.hooks_.pre_backward);
  }
  if (m.override_) {
    amp::Policy p = amp::current_policy() ? *amp::current_policy() : amp::Policy::fp32();
    p.compute = *m.override_;
    p.op_overrides.clear();
    p.fp8_gemms.reset();
    scope_.emplace(p);
  } else if (m.fp8_off_ && amp::current_policy() && amp::current_policy()->fp8_gemms) {
    amp::Policy p = *amp::current_policy();
    p.fp8_gemms.reset();
    scope_.emplace(p);
  }
}

Module::ForwardScope::~ForwardScope() {
  if (--m_.forward_depth_ == 0 && m_.hooks_.post_forward) m_.hooks_.post_forward();
}

std::vector<Parameter*> Module::own_parameters() const {
  std::vector<Parameter*> out;
  for (const auto& [n, p] : params_) out.push_back(p.get());
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::children() const {
  std::vector<std::pair<std::string, Module*>> out;
  for (const auto& [n, c] : children_) out.emplace_back(n, c.get());
  return out;
}

namespace {
void collect_fp8(Module& m, const std::string& prefix, int64_t history,
                 std::vector<std::pair<std::string, amp::Fp8LinearState*>>& out) {
  if (!m.fp8_enabled()) return;
  if (amp::Fp8LinearState* st = m.fp8_state(history)) out.emplace_back(prefix, st);
  for (auto& [name, child] : m.children())
    collect_fp8(*child, prefix.empty() ? name : prefix + "." + name, history, out);
}
}  // namespace

std::vector<std::pair<std::string, amp::Fp8LinearState*>> fp8_states(Module& m, int64_t history) {
  std::vector<std::pair<std::string, amp::Fp8LinearState*>> out;
  collect_fp8(m, "", history, out);
  return out;
}

void save_module(Module& m, const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, p] : m.named_parameters()) {
    const Tensor& v = p->master.defined() ? p->master : p->weight.data();
    tensors.emplace_back(name, v.to(Device::cpu).to(DType::f32));
  }
  save_safetensors(path, tensors, {{"mixtrain.module", m.type()}});
}

void load_module(Module& m, const std::string& path) {
  const SafetensorsFile f = load_safetensors(path);
  const auto params = m.named_parameters();
  std::vector<const Tensor*> values;
  for (const auto& [name, p] : params) {
    if (!f.contains(name))
      throw IOError(fmt::format("load_module: {} has no tensor '{}' (a {} parameter)", f.path(),
                                name, m.type()));
    const Tensor& t = f.get(name);
    const Shape& want = p->weight.shape();
    if (t.shape() != want)
      throw ShapeError(fmt::format("load_module: {}: tensor '{}' is {}, the parameter is {}",
                                   f.path(), name, t.str(), shape_str(want)));
    values.push_back(&t);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    Parameter& p = *params[i].second;
    if (p.master.defined()) {
      p.master.copy_from(*values[i]);
      p.refresh();
    } else {
      p.weight.data().copy_from(*values[i]);
    }
  }
}

}  // namespace mixtrain::nn
