// Tensor: an n-dimensional view (shape, strides, offset) over 64-byte-aligned storage with a
// runtime dtype and a device. Plain data, no autograd (that is Variable, in autograd.h).
// Dimension letters used across the project: B batch, T time (sequence), C channels (width),
// V vocabulary, H heads, D head size, N rows of a GEMM output, K its inner dimension.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mixtrain/dtype.h"
#include "mixtrain/error.h"

namespace mixtrain {

/// Where a tensor's storage lives. The core never #ifdefs on it: a backend the build lacks
/// throws BackendError (naming the CMake option that builds it) when asked for.
enum class Device : uint8_t { cpu, cuda };
/// "cpu", "cuda".
const char* device_name(Device d);
/// Parses "cpu" or "cuda"; throws ConfigError naming the bad string.
Device parse_device(std::string_view name);
/// Whether tensors can live on `d` in this build on this machine; `why` (may be null) gets the
/// reason when not (the backend is not built, and the CMake option that builds it; no device).
bool device_available(Device d, std::string* why = nullptr);
/// One line on what runs `d`'s kernels ("avx512bf16, oneDNN 2.6.3 avx512_core_amx, 2 threads").
/// Throws BackendError when the device is not available.
std::string device_description(Device d);
/// A device and, for cuda, which GPU: "cpu", "cuda" or "cuda:N" (the CLI's --device).
struct DeviceSpec {
  Device device = Device::cpu;
  int index = -1;  ///< cuda:N's N; -1: the default (the local rank under mpirun, else 0)
};
/// Parses "cpu", "cuda" or "cuda:N"; throws ConfigError naming the bad string.
DeviceSpec parse_device_spec(std::string_view spec);
/// "cpu", "cuda", "cuda:1".
std::string device_spec_str(const DeviceSpec& spec);
/// Makes GPU `index` this process's CUDA device (cudaSetDevice) and returns the index chosen.
/// index -1 picks the local rank when launched by mpirun (OMPI_COMM_WORLD_LOCAL_RANK,
/// MPI_LOCALRANKID or SLURM_LOCALID: one process per GPU), else 0. Call it before any CUDA work:
/// once the backend has work on one GPU, selecting another throws. Device::cpu selects nothing
/// and returns -1. Throws BackendError saying why when the device is not available (a build
/// without CUDA, no GPU, an index past the GPUs there are).
int select_device(Device device, int index = -1);
/// Waits until the work queued on `device` has finished (a GPU runs kernels asynchronously: a
/// timer reads the clock after this). Nothing to wait for on the CPU.
void synchronize(Device device);
/// This process's CUDA device's compute capability as major * 10 + minor (70 for a V100, 80
/// for an A100, 90 for an H100) and, when `name` is given, its name; 0 when there is none.
int cuda_compute_capability(std::string* name = nullptr);

using Shape = std::vector<int64_t>;
/// "[2, 3, 4]".
std::string shape_str(const Shape& s);
/// Product of the extents (1 for a scalar shape []).
int64_t shape_numel(const Shape& s);

/// Contiguous, 64-byte-aligned bytes of one device; counted by that device's memory tracker
/// while alive.
class Storage {
 public:
  Storage(size_t nbytes, DType dtype, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  /// Frees the bytes while tensors that view them live on, and materialize() allocates them
  /// again (contents undefined): a sharded parameter's gathered weights between uses, which
  /// the ops that saved them for backward still name. A released storage's tensors throw on
  /// any access to their data.
  void release();
  void materialize();
  bool resident() const { return !released_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  bool released_ = false;
  DType dtype_;
  Device device_;
};

class Tensor {
 public:
  /// An undefined tensor (defined() is false).
  Tensor() = default;

  /// Uninitialised contiguous tensor.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu);
  /// Every element set to `value` rounded to dtype.
  static Tensor full(const Shape& shape, float value, DType dtype, Device device = Device::cpu);
  /// From fp32 values, rounded to dtype (RNE).
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape,
                            DType dtype = DType::f32, Device device = Device::cpu);
  /// Wraps caller-owned memory of `device` (not copied, not owned; the caller keeps it alive).
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device = Device::cpu);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  ///< in elements
  int64_t offset() const { return offset_; }         ///< in elements
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  /// Extent of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t element_size() const { return dtype_size(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  /// "Tensor[2, 3] bf16".
  std::string str() const;

  /// Typed pointer to the first element of the view (in the device's memory: dereference it
  /// only for cpu tensors); throws DTypeError if T does not match.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data<T>");
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Views share storage. reshape() of a non-contiguous tensor copies.
  Tensor view(const Shape& shape) const;  ///< contiguous only; one extent may be -1
  Tensor reshape(const Shape& shape) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  /// Rows [start, end) along dim (negative indices count from the end).
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  /// A view of the same storage with the given shape, element strides and element offset
  /// (relative to this view's offset); throws ShapeError if it reaches outside the storage.
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset = 0) const;
  /// A contiguous `dtype` view of `shape` over this contiguous tensor's bytes from
  /// `byte_offset` on (a multiple of dtype's size): parameters of several dtypes side by side
  /// in one flat buffer of bytes. Shares storage; throws ShapeError past its end.
  Tensor view_bytes(int64_t byte_offset, const Shape& shape, DType dtype) const;
  /// Same data, contiguous (returns *this when already contiguous).
  Tensor contiguous() const;
  /// A contiguous copy.
  Tensor clone() const;
  /// Converted to dtype (returns *this when the dtype already matches).
  Tensor to(DType dtype) const;
  /// A contiguous copy on `device` (returns *this when already there).
  Tensor to(Device device) const;
  /// Copies src's values into this tensor (same shape; converts dtype; src may live on another
  /// device).
  void copy_from(const Tensor& src);
  void fill(float value);

  /// Values as fp32 (any layout, any float dtype, any device).
  std::vector<float> to_vector() const;
  /// The single value of a one-element tensor, as float.
  float item() const;

  void check_dtype(DType expected, const char* op) const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  void* borrowed_ = nullptr;  // set by wrap(): caller-owned bytes
};

/// Row-major strides for a shape.
Shape contiguous_strides(const Shape& shape);

/// Bytes held by live tensor storage, per dtype and in total: now and at peak.
struct MemoryStats {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t current_by_dtype[9] = {};
  int64_t peak_by_dtype[9] = {};
  /// Freed buffers of 64 KiB or more kept for reuse (not tensors; part of the process's RSS).
  int64_t cached_bytes = 0;
  /// Mapped for step plans (StepMemoryScope); the part no tensor uses is not in the RSS until
  /// touched, and after one step it has been.
  int64_t arena_bytes = 0;
  /// Bytes the last planned step asked for that its plan did not serve.
  int64_t step_missed_bytes = 0;
};
/// One device's (each device has its own tracker, plan and cache).
MemoryStats memory_stats(Device device = Device::cpu);
/// Returns the kept buffers (MemoryStats::cached_bytes) to the system and drops the step plan
/// (the next StepMemoryScope records again; its arena goes when no tensor uses it), on every
/// device.
void release_cached_memory();
/// Between steps: gives the idle step arena's pages back to the system (the mapping and the
/// plan stay; the next step faults its pages in again, zeroed) and drops the kept buffers. For
/// work between steps that allocates outside the plan, such as an evaluation, so that its
/// buffers and the idle arena are not resident at once. No effect while a step is running.
void trim_idle_memory();
/// The scope of one training step (forward, backward, update) on the calling thread. A
/// training loop allocates the same buffers in the same order every step, so the first scoped
/// step records its buffers of 64 KiB or more with their lifetimes, and later steps take them
/// from one arena laid out for that sequence: as large as the step's peak of live buffers,
/// where reusing freed buffers by size holds the sum of each size's own peak. A buffer the
/// plan cannot serve (another shape, one still held from an earlier step) comes from the
/// ordinary cache, so a step that differs is only less frugal; if it misses much, the next
/// step records again. Nested scopes count as one; one opened on another thread while a scope
/// is open does nothing (one loop per process plans). Each device plans its own buffers.
class StepMemoryScope {
 public:
  StepMemoryScope();
  ~StepMemoryScope();
  StepMemoryScope(const StepMemoryScope&) = delete;
  StepMemoryScope& operator=(const StepMemoryScope&) = delete;

 private:
  bool active_[2] = {};  // per Device
};

/// Sets every device's peaks to the current values (to measure the peak of one phase).
void reset_peak_memory();

/// Live bytes now minus live bytes at `before`, per dtype, as {dtype_name: bytes} (dtypes that
/// did not grow are left out). Taken at the end of a forward pass, with `before` taken at its
/// start, it is what the tape keeps for backward: the activation bytes (plus the batch).
/// `before` is memory_stats(device)'s.
std::map<std::string, int64_t> memory_growth_by_dtype(const MemoryStats& before,
                                                      Device device = Device::cpu);

}  // namespace mixtrain
