// The per-op profile (profile.h): a map from key to (calls, seconds), written only when
// enabled, so the off state costs one relaxed load per op.
#include "mixtrain/profile.h"

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <vector>

namespace mixtrain::profile {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_on{false};
std::mutex g_mu;
std::map<std::string, std::pair<int64_t, double>> g_entries;
Clock::time_point g_mark = Clock::now();

}  // namespace

bool enabled() { return g_on.load(std::memory_order_relaxed); }
void enable(bool on) { g_on.store(on); }

void reset() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_entries.clear();
  g_mark = Clock::now();
}

void mark() {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  g_mark = Clock::now();
}

void op_done(const char* op) {
  if (!enabled()) return;
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(g_mu);
  auto& e = g_entries[std::string("fwd ") + op];
  e.first += 1;
  e.second += std::chrono::duration<double>(now - g_mark).count();
  g_mark = now;
}

void add(const std::string& key, double seconds) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  auto& e = g_entries[key];
  e.first += 1;
  e.second += seconds;
}

std::string report(int steps) {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<std::pair<std::string, std::pair<int64_t, double>>> rows(g_entries.begin(),
                                                                       g_entries.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  // GEMM rows overlap the op rows that call them: shares are of the op rows only.
  double total = 0;
  for (const auto& r : rows)
    if (r.first.rfind("gemm ", 0) != 0) total += r.second.second;
  const double per = steps > 0 ? 1.0 / steps : 1.0;
  std::string out = fmt::format("{:<44} {:>8} {:>10} {:>7}\n", "per step", "calls", "ms", "share");
  for (const auto& [key, v] : rows)
    out += fmt::format("{:<44} {:>8.0f} {:>10.2f} {:>6.1f}%\n", key, v.first * per,
                       v.second * 1e3 * per, total > 0 ? 100.0 * v.second / total : 0.0);
  out += fmt::format("{:<44} {:>8} {:>10.2f}\n", "total (op rows)", "", total * 1e3 * per);
  return out;
}

}  // namespace mixtrain::profile
