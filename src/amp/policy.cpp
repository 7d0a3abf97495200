// Policy presets, parsing, the thread-local scope stack and op dtype resolution.
#include "mixtrain/amp/policy.h"

#include <fmt/format.h>

#include "mixtrain/cpu.h"
#include "mixtrain/error.h"

namespace mixtrain::amp {

namespace {
thread_local const Policy* g_current = nullptr;

int rank(DType d) {
  switch (d) {
    case DType::f64:
      return 4;
    case DType::f32:
      return 3;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::e4m3:
    case DType::e5m2:
      return 1;
    default:
      return 0;
  }
}
}  // namespace

Policy Policy::fp32() {
  Policy p;
  p.name = "fp32";
  return p;
}

Policy Policy::bf16() {
  Policy p;
  p.compute = DType::bf16;
  p.name = "bf16";
  return p;
}

Policy Policy::fp16() {
  Policy p;
  p.compute = DType::f16;
  p.scaling = LossScaling::dynamic;
  p.name = "fp16";
  return p;
}

Policy Policy::fp8(const Fp8Options& recipe) {
  Policy p = bf16();
  p.fp8_gemms = recipe;
  p.name = "fp8";
  return p;
}

Policy auto_policy(const AutoTarget& t, std::string* why) {
  if (t.cuda) {
    const int cc = t.compute_capability;
    const std::string gpu =
        fmt::format("{} (compute capability {}.{})", t.gpu_name.empty() ? "this GPU" : t.gpu_name,
                    cc / 10, cc % 10);
    if (cc >= 80) {
      if (why)
        *why = fmt::format(
            "auto chose bf16: {} multiplies bf16 on its tensor cores, and bf16 keeps fp32's "
            "exponent range (no loss scaling)",
            gpu);
      return Policy::bf16();
    }
    if (cc >= 70) {
      if (why)
        *why = fmt::format(
            "auto chose fp16 with dynamic loss scaling: {} has fp16 tensor cores but none for "
            "bf16 (from 8.0)",
            gpu);
      return Policy::fp16();
    }
    if (why)
      *why = fmt::format("auto chose fp32: {} has no tensor cores (from 7.0) to gain from 16 bits",
                         gpu);
    return Policy::fp32();
  }
  if (t.cpu_native_bf16) {
    if (why) *why = "auto chose bf16: this CPU computes bf16 natively (avx512_bf16/amx)";
    return Policy::bf16();
  }
  if (why)
    *why =
        "auto chose fp16 with dynamic loss scaling: this CPU has no native bf16 arithmetic, "
        "and fp16 storage halves activation memory";
  return Policy::fp16();
}

Policy Policy::automatic(std::string* why) { return automatic(Device::cpu, why); }

Policy Policy::automatic(Device device, std::string* why) {
  AutoTarget t;
  if (device == Device::cuda) {
    t.cuda = true;
    t.compute_capability = cuda_compute_capability(&t.gpu_name);
  } else {
    t.cpu_native_bf16 = cpu_features().native_bf16();
  }
  return auto_policy(t, why);
}

Policy Policy::parse(std::string_view spec, Device device, std::string* why) {
  if (spec == "auto") return automatic(device, why);
  return parse(spec, why);
}

Policy Policy::parse(std::string_view spec, std::string* why) {
  if (spec == "fp32" || spec == "f32") return fp32();
  if (spec == "bf16") return bf16();
  if (spec == "fp16" || spec == "f16") return fp16();
  if (spec == "fp8") return fp8();
  if (spec == "auto") return automatic(why);
  // jmp style: "p=f32,c=bf16,o=f32"
  Policy p;
  p.name = "custom";
  bool any = false;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string_view::npos) end = spec.size();
    std::string_view item = spec.substr(pos, end - pos);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      throw ConfigError(fmt::format(
          "unknown precision '{}' (expected fp32, bf16, fp16, fp8, auto or p=..,c=..,o=..)", spec));
    const std::string_view key = item.substr(0, eq), val = item.substr(eq + 1);
    DType dt;
    try {
      dt = parse_dtype(val);
    } catch (const Error& e) {
      throw ConfigError(fmt::format("precision '{}': {}", spec, e.what()));
    }
    if (key == "p" || key == "params")
      p.param = dt;
    else if (key == "c" || key == "compute")
      p.compute = dt;
    else if (key == "o" || key == "output")
      p.output = dt;
    else
      throw ConfigError(fmt::format("precision '{}': unknown key '{}' (p, c or o)", spec, key));
    any = true;
    pos = end + 1;
  }
  if (!any) throw ConfigError(fmt::format("unknown precision '{}'", spec));
  if (p.compute == DType::f16) p.scaling = LossScaling::dynamic;
  return p;
}

std::string Policy::str() const {
  const char* s = scaling == LossScaling::dynamic ? "dynamic loss scaling"
                  : scaling == LossScaling::fixed ? "static loss scaling"
                                                  : "no loss scaling";
  return fmt::format("{} (p={},c={},o={}, {}{})", name.empty() ? "custom" : name, dtype_name(param),
                     dtype_name(compute), dtype_name(output),
                     fp8_gemms ? "fp8 GEMM inputs, " + fp8_gemms->str() + ", " : std::string(), s);
}

const Policy* current_policy() { return g_current; }

PolicyScope::PolicyScope(const Policy& policy) : prev_(g_current), policy_(policy) {
  g_current = &policy_;
}
PolicyScope::PolicyScope(const Policy* policy) : prev_(g_current) {
  if (policy) policy_ = *policy;
  g_current = policy ? &policy_ : nullptr;
}
PolicyScope::~PolicyScope() { g_current = prev_; }

DType promote_types(std::initializer_list<DType> inputs) {
  DType best = DType::f32;
  int best_rank = -1;
  bool mixed16 = false;
  for (DType d : inputs) {
    const int r = rank(d);
    if (r > best_rank) {
      best = d;
      best_rank = r;
      mixed16 = false;
    } else if (r == best_rank && d != best) {
      mixed16 = true;  // bf16 with f16 (or e4m3 with e5m2): neither holds the other
    }
  }
  if (mixed16) return DType::f32;
  return best;
}

DType op_dtype(std::string_view op, OpCategory cat, std::initializer_list<DType> inputs) {
  const Policy* p = g_current;
  if (p) {
    auto it = p->op_overrides.find(op);
    if (it != p->op_overrides.end()) return it->second;
  }
  switch (cat) {
    case OpCategory::lower:
      return p ? p->compute : promote_types(inputs);
    case OpCategory::fp32:
      return DType::f32;
    case OpCategory::stats32:
    case OpCategory::same:
      return inputs.size() ? *inputs.begin() : DType::f32;
    case OpCategory::promote:
      return promote_types(inputs);
  }
  return DType::f32;
}

}  // namespace mixtrain::amp
