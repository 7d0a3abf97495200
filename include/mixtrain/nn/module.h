// Module base: named parameters and sub-modules, train/eval mode, parameter count, and a
// per-module precision override (say, keep the output head in fp32).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/autograd.h"
#include "mixtrain/nn/parameter.h"

namespace mixtrain::nn {

/// What runs around a module's forward and before the backward of what it recorded: the seam
/// sharded data parallelism (dist/) uses to gather a unit's parameters just before they are
/// read and release them after. Each may be empty.
struct ModuleHooks {
  std::function<void()> pre_forward;   ///< at the start of forward
  std::function<void()> post_forward;  ///< at its end (also when it throws)
  /// Before the backward of every op the module's forward recorded (Node::before_backward).
  std::shared_ptr<const std::function<void()>> pre_backward;
};

class Module {
 public:
  virtual ~Module() = default;
  /// "Linear", "GPT", ...
  virtual std::string type() const = 0;

  /// Every parameter, depth first, with dotted names ("blocks.0.attn.qkv.weight").
  std::vector<std::pair<std::string, Parameter*>> named_parameters();
  std::vector<Parameter*> parameters();
  int64_t num_parameters();

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  /// Makes every parameter's working copy `dt` (from its fp32 master). Sub-modules with a
  /// compute override keep theirs.
  void set_compute_dtype(DType dt);
  /// Moves every parameter (master, working copy, gradient) to `device`.
  void to(Device device);
  /// Runs this module (and its children) in `dt` whatever the global policy says: its
  /// weights are kept in `dt` and its ops compute in `dt`. std::nullopt clears it.
  void set_compute_override(std::optional<DType> dt);
  std::optional<DType> compute_override() const { return override_; }
  /// Under an fp8 policy, whether this module's linears (and its children's) take fp8 GEMM
  /// inputs (on by default; off keeps them in the policy's bf16, as Transformer Engine keeps a
  /// classifier head). A compute override also turns fp8 off.
  void set_fp8(bool on) { fp8_off_ = !on; }
  bool fp8_enabled() const { return !fp8_off_ && !override_; }
  /// The FP8 scaling state of this module's own GEMMs (a Linear's), made with an amax
  /// history of `history` steps when there is none and history > 0; nullptr for a module
  /// without GEMMs of its own.
  virtual amp::Fp8LinearState* fp8_state(int64_t history = 0) const {
    (void)history;
    return nullptr;
  }
  /// The sub-module at a dotted path ("fc2", "blocks.0.attn"); nullptr when there is none.
  Module* find(const std::string& path);
  /// The dotted names of every sub-module, depth first (for error messages).
  std::vector<std::string> module_names() const;

  /// Activation checkpointing for this module (off by default): its forward keeps only its
  /// input, and the backward pass re-runs it (same policy, same RNG state) before its
  /// backward. Honoured by modules whose forward goes through nn::checkpoint (nn/checkpoint.h):
  /// the GPT's Block. Gradients are bit-identical either way.
  void set_checkpoint(bool on) { checkpoint_ = on; }
  bool checkpointed() const { return checkpoint_; }
  /// The working copies (Parameter::weight) of every parameter, depth first.
  std::vector<Variable> parameter_variables() const;
  /// This module's own parameters (not its children's) and its children, in registration
  /// order: named_parameters() lists the own ones first, then each child's, depth first.
  std::vector<Parameter*> own_parameters() const;
  std::vector<std::pair<std::string, Module*>> children() const;

  /// Replaces the hooks its forward runs (ForwardScope); an empty ModuleHooks clears them.
  void set_hooks(ModuleHooks h) { hooks_ = std::move(h); }

 protected:
  Parameter& register_parameter(const std::string& name, const Tensor& init);
  template <class M>
  M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }
  /// Put `ForwardScope scope(*this);` at the top of forward(): applies the precision override
  /// and runs the module's hooks (the outermost scope of a module does, when forwards of one
  /// module nest).
  class ForwardScope {
   public:
    explicit ForwardScope(const Module& m);
    ~ForwardScope();
    ForwardScope(const ForwardScope&) = delete;
    ForwardScope& operator=(const ForwardScope&) = delete;

   private:
    const Module& m_;
    std::optional<amp::PolicyScope> scope_;
    std::optional<BeforeBackwardScope> backward_;
  };

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Parameter*>>& out);
  std::vector<std::pair<std::string, std::unique_ptr<Parameter>>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
  bool training_ = true;
  bool checkpoint_ = false;
  std::optional<DType> override_;
  bool fp8_off_ = false;
  ModuleHooks hooks_;
  mutable int forward_depth_ = 0;
};

/// Writes every parameter's value as fp32 (the master; a module trained master-free holds its
/// bf16 weights) into a safetensors file under its dotted name, atomically: the module's state,
/// loadable by load_module and by Python's safetensors and torch.
void save_module(Module& m, const std::string& path);

/// The FP8 scaling state of every module of m that computes in fp8 (fp8_enabled() on it and
/// on each module above it), made where missing with a history of `history` steps, by dotted
/// module name, depth first: what the trainer updates after each step and checkpoints.
std::vector<std::pair<std::string, amp::Fp8LinearState*>> fp8_states(Module& m, int64_t history);
/// Loads what save_module wrote into a module of the same structure: every parameter by name,
/// shape checked (IOError naming the file and a missing tensor, ShapeError naming a tensor of
/// another shape), then the compute copies refreshed. Changes nothing unless every tensor fits.
void load_module(Module& m, const std::string& path);

}  // namespace mixtrain::nn
