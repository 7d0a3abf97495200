// Typed exceptions. Every message names what went wrong: the op, the shapes and dtypes, the
// file, the flag. Nothing in the library aborts the process.
#pragma once

#include <stdexcept>
#include <string>

namespace mixtrain {

/// Base of every mixtrain exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/// Shapes that do not fit the op ("matmul: A [2, 3] bf16 and B [4, 5] bf16: inner dims 3 != 4").
class ShapeError : public Error {
 public:
  using Error::Error;
};
/// A dtype the op does not take, or two dtypes that do not go together.
class DTypeError : public Error {
 public:
  using Error::Error;
};
/// A file that cannot be read or written, or whose contents are malformed.
class IOError : public Error {
 public:
  using Error::Error;
};
/// A bad option or configuration value (CLI flags, policy strings, hyper-parameters).
class ConfigError : public Error {
 public:
  using Error::Error;
};
/// Training can not go on: non-finite loss, loss scale stuck at its floor.
class NumericalError : public Error {
 public:
  using Error::Error;
};
/// A data-parallel job's process group failed: a collective errored (a peer rank died) or did
/// not complete within its deadline (a peer hangs). The job cannot go on: a process that exits
/// with its run in flight ends every rank (dist/comm.h).
class CommError : public Error {
 public:
  using Error::Error;
};
/// A backend that this build or machine lacks (for example CUDA in a CPU-only build).
class BackendError : public Error {
 public:
  using Error::Error;
};

}  // namespace mixtrain
