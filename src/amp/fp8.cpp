// FP8 recipes' scaling state: names, the scale rule, the amax history and the per-thread scope.
#include "mixtrain/amp/fp8.h"

#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <map>

#include "mixtrain/dist/comm.h"
#include "mixtrain/error.h"

namespace mixtrain::amp {

const char* fp8_recipe_name(Fp8Recipe r) {
  switch (r) {
    case Fp8Recipe::delayed:
      return "delayed";
    case Fp8Recipe::current:
      return "current";
    case Fp8Recipe::mxfp8:
      return "mxfp8";
  }
  return "?";
}

Fp8Recipe parse_fp8_recipe(std::string_view name) {
  for (Fp8Recipe r : {Fp8Recipe::delayed, Fp8Recipe::current, Fp8Recipe::mxfp8})
    if (name == fp8_recipe_name(r)) return r;
  throw ConfigError(
      fmt::format("--fp8-recipe: unknown recipe '{}' (choose delayed, current or mxfp8)", name));
}

const char* amax_reduce_name(AmaxReduce r) { return r == AmaxReduce::max ? "max" : "most_recent"; }

AmaxReduce parse_amax_reduce(std::string_view name) {
  if (name == "max") return AmaxReduce::max;
  if (name == "most_recent" || name == "most-recent") return AmaxReduce::most_recent;
  throw ConfigError(
      fmt::format("--fp8-amax-reduce: unknown reduction '{}' (choose max or most_recent)", name));
}

std::string Fp8Options::str() const {
  switch (recipe) {
    case Fp8Recipe::delayed:
      return fmt::format("delayed (amax history {}, {}, margin {})", amax_history,
                         amax_reduce_name(reduce), margin);
    case Fp8Recipe::current:
      return fmt::format("current (per-tensor amax, margin {})", margin);
    case Fp8Recipe::mxfp8:
      return "mxfp8 (E8M0 scales per 32 values, rounded up)";
  }
  return "?";
}

const char* fp8_role_name(Fp8Role r) {
  return r == Fp8Role::input ? "input" : r == Fp8Role::weight ? "weight" : "grad";
}

DType fp8_format(Fp8Role r) { return r == Fp8Role::grad ? DType::e5m2 : DType::e4m3; }

float fp8_max(DType fmt) {
  if (fmt == DType::e4m3) return 448.0f;
  if (fmt == DType::e5m2) return 57344.0f;
  throw DTypeError(fmt::format("fp8_max: {} is not an fp8 format", dtype_name(fmt)));
}

float fp8_scale(float amax, float fmt_max, int margin, float previous) {
  if (!std::isfinite(amax)) return previous;
  if (amax == 0.0f) return 1.0f;
  float s = (fmt_max / amax) / std::ldexp(1.0f, margin);
  if (!std::isfinite(s)) s = FLT_MAX;
  return s;
}

AmaxHistory::AmaxHistory(int64_t length) {
  if (length < 1)
    throw ConfigError(fmt::format("--fp8-amax-history: {} (must be at least 1)", length));
  ring_.assign(static_cast<size_t>(length), 0.0f);
}

void AmaxHistory::push(float amax) {
  ring_[static_cast<size_t>(next_)] = amax;
  next_ = (next_ + 1) % length();
  filled_ = std::min(filled_ + 1, length());
}

float AmaxHistory::reduced(AmaxReduce how) const {
  if (filled_ == 0) return 0.0f;
  if (how == AmaxReduce::most_recent)
    return ring_[static_cast<size_t>((next_ + length() - 1) % length())];
  float m = 0.0f;
  for (int64_t i = 0; i < filled_; ++i) {
    const float v = ring_[static_cast<size_t>(i)];
    if (std::isnan(v)) return v;
    m = std::max(m, v);
  }
  return m;
}

std::vector<float> AmaxHistory::values() const {
  std::vector<float> out;
  const int64_t start = filled_ < length() ? 0 : next_;
  for (int64_t i = 0; i < filled_; ++i)
    out.push_back(ring_[static_cast<size_t>((start + i) % length())]);
  return out;
}

void AmaxHistory::assign(const std::vector<float>& oldest_first) {
  if (static_cast<int64_t>(oldest_first.size()) > length())
    throw ConfigError(fmt::format("fp8 amax history: {} values for a history of {}",
                                  oldest_first.size(), length()));
  std::fill(ring_.begin(), ring_.end(), 0.0f);
  next_ = filled_ = 0;
  for (float v : oldest_first) push(v);
}

void Fp8TensorMeta::observe(float amax) {
  if (!seen || (!std::isnan(step_amax) && (std::isnan(amax) || amax > step_amax))) step_amax = amax;
  seen = true;
}

bool Fp8TensorMeta::end_step(const Fp8Options& o, DType fmt) {
  const float a = step_amax;
  seen = false;
  step_amax = 0.0f;
  last_amax = a;
  if (!std::isfinite(a)) {  // kept out of the history: one bad step must not stall the scale
    ++nonfinite;
    return false;
  }
  history.push(a);
  scale = fp8_scale(history.reduced(o.reduce), fp8_max(fmt), o.margin, scale);
  return true;
}

namespace {

// "fp8.<module>.<role>" ("fp8.<role>" for a model that is itself a Linear).
std::string state_name(const std::string& module, Fp8Role r) {
  return module.empty() ? fmt::format("fp8.{}", fp8_role_name(r))
                        : fmt::format("fp8.{}.{}", module, fp8_role_name(r));
}

constexpr Fp8Role kRoles[] = {Fp8Role::input, Fp8Role::weight, Fp8Role::grad};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

Fp8StepReport fp8_end_step(const Fp8States& states, const Fp8Options& o) {
  Fp8StepReport rep;
  // Every rank ran the same graph, so the same metas were used: their amaxes travel in one
  // max-reduction (non-negative floats, NaN above Inf, order as their bits; unused ones send 0).
  std::vector<int64_t> bits;
  for (const auto& [name, st] : states)
    for (Fp8Role r : kRoles) {
      const Fp8TensorMeta& m = (*st)[r];
      bits.push_back(m.seen ? static_cast<int64_t>(bits_of(m.step_amax) & 0x7fffffffu) : 0);
    }
  if (dist::size() > 1 && !bits.empty())
    dist::allreduce_max(bits.data(), static_cast<int64_t>(bits.size()));
  size_t k = 0;
  for (const auto& [name, st] : states)
    for (Fp8Role r : kRoles) {
      Fp8TensorMeta& m = (*st)[r];
      const float amax = float_of(static_cast<uint32_t>(bits[k++]));
      if (!m.seen) continue;
      ++rep.tensors;
      m.step_amax = amax;
      bool finite = std::isfinite(amax);
      if (o.recipe == Fp8Recipe::delayed) {
        finite = m.end_step(o, fp8_format(r));
      } else {
        m.last_amax = amax;
        m.seen = false;
        m.step_amax = 0.0f;
        if (!finite) ++m.nonfinite;
      }
      if (!finite && rep.nonfinite++ == 0)
        rep.first_nonfinite = fmt::format("{}.{}", name, fp8_role_name(r));
    }
  return rep;
}

std::vector<std::pair<std::string, Tensor>> fp8_state_tensors(const Fp8States& states) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, st] : states)
    for (Fp8Role r : kRoles) {
      const Fp8TensorMeta& m = (*st)[r];
      std::vector<float> v{m.scale, static_cast<float>(m.nonfinite)};
      for (float a : m.history.values()) v.push_back(a);
      const int64_t n = static_cast<int64_t>(v.size());
      out.emplace_back(state_name(name, r), Tensor::from_vector(v, {n}));
    }
  return out;
}

void load_fp8_state(const Fp8States& states,
                    const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = &t;
  // Checked whole before anything changes.
  std::vector<std::pair<Fp8TensorMeta*, std::vector<float>>> staged;
  for (const auto& [name, st] : states)
    for (Fp8Role r : kRoles) {
      const std::string n = state_name(name, r);
      auto it = by_name.find(n);
      if (it == by_name.end())
        throw IOError(
            fmt::format("checkpoint: no fp8 scaling state '{}' (was it written by an "
                        "fp8 run of this model?)",
                        n));
      std::vector<float> v = it->second->to(DType::f32).to_vector();
      Fp8TensorMeta& m = (*st)[r];
      if (v.size() < 2 || static_cast<int64_t>(v.size()) - 2 > m.history.length())
        throw IOError(fmt::format("checkpoint: fp8 state '{}' holds {} values (2 + at most {})", n,
                                  v.size(), m.history.length()));
      staged.emplace_back(&m, std::move(v));
    }
  for (auto& [m, v] : staged) {
    m->scale = v[0];
    m->nonfinite = static_cast<int64_t>(v[1]);
    m->history.assign(std::vector<float>(v.begin() + 2, v.end()));
    m->seen = false;
    m->step_amax = 0.0f;
    m->last_amax = m->history.filled() ? m->history.reduced(AmaxReduce::most_recent) : 0.0f;
  }
}

namespace {
thread_local Fp8LinearState* g_state = nullptr;
thread_local bool g_record = false;
}  // namespace

Fp8StateScope::Fp8StateScope(Fp8LinearState* state, bool record)
    : prev_(g_state), prev_record_(g_record) {
  g_state = state;
  g_record = record;
}

Fp8StateScope::~Fp8StateScope() {
  g_state = prev_;
  g_record = prev_record_;
}

Fp8LinearState* current_fp8_state() { return g_state; }

namespace {
thread_local const Fp8Probe* g_probe = nullptr;
}  // namespace

Fp8ProbeScope::Fp8ProbeScope(Fp8Probe probe) : probe_(std::move(probe)), prev_(g_probe) {
  g_probe = &probe_;
}
Fp8ProbeScope::~Fp8ProbeScope() { g_probe = prev_; }
const Fp8Probe* fp8_probe() { return g_probe; }
bool fp8_recording() { return g_record; }

}  // namespace mixtrain::amp
