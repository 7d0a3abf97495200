// A per-op wall-clock profile of the training step, off unless asked for (`bench step
// --profile`, or profile::enable). Forward time of an op is the time since the previous op
// finished (ops run one after another on the calling thread, so that is the op's own work plus
// any glue before it); backward time is the op's backward closure; GEMMs are also listed by
// shape and dtype, so a slow shape stands out.
//
//   profile::enable(true);  ... steps ...;  std::fputs(profile::report().c_str(), stderr);
#pragma once

#include <string>

namespace mixtrain::profile {

bool enabled();
void enable(bool on);
/// Forgets what was recorded and starts the forward clock now.
void reset();
/// Starts the forward clock now (call before a forward pass).
void mark();
/// Records the forward of `op` as the time since the last mark, and marks.
void op_done(const char* op);
/// Adds `seconds` to the entry `key` (e.g. "bwd linear", "gemm bf16 2048x1152x384").
void add(const std::string& key, double seconds);
/// The entries by total time: key, calls, total ms, share of the recorded total.
std::string report(int steps = 1);

}  // namespace mixtrain::profile
